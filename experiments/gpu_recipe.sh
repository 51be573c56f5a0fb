#!/usr/bin/env bash
# The crossover on one GPU, offline: AR and masked diffusion trained on the same U unique BPE tokens of CPython's
# standard-library source (prepare_data.py --dataset python: no download, no network), each kind at two model
# sizes and several epoch counts (separate runs: each run's schedule spans it), then compare.py's table and
# the verdict of each kind at its best setting. The settings are a starting point to calibrate, not a measured
# result: see the README's GPU section.
#
#   bash experiments/gpu_recipe.sh        # run it again until it prints the verdict: each call stops after
#                                         # BUDGET seconds (every run checkpointed) and the next one continues
#
# Every setting below can be overridden from the environment, e.g. U=500000 BUDGET=3000 bash experiments/gpu_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data}
VOCAB=${VOCAB:-8192}                   # BPE trained on the train split
U=${U:-1000000}                        # unique training tokens
OUT=${OUT:-out/gpu_recipe}
AR_MODELS=${AR_MODELS:-6x384,8x512}    # layers x width; heads = width / 64
DIFFUSION_MODELS=${DIFFUSION_MODELS:-6x384,8x512}
AR_EPOCHS=${AR_EPOCHS:-4,8,16,32}
DIFFUSION_EPOCHS=${DIFFUSION_EPOCHS:-150,400}
AR_LR=${AR_LR:-1e-3}
DIFFUSION_LR=${DIFFUSION_LR:-1.5e-3}   # paper 1: diffusion gains slightly from a higher learning rate
BUDGET=${BUDGET:-540}                  # seconds per call, so each piece fits a 10-minute job
ASSUMED_TFLOPS=${ASSUMED_TFLOPS:-150}  # for the printed time estimates (~15% of an H100's bf16 peak)
TRAIN=${TRAIN:---block_size=512 --batch_size=128 --dropout=0.1 --warmup_fraction=0.05 --eval_windows=64 --compile}

python3 prepare_data.py --dataset=python --tokenizer=bpe --vocab_size="$VOCAB" --data_dir="$DATA_DIR" \
    --name="python_bpe$VOCAB"
# shellcheck disable=SC2086  # TRAIN is a list of options
python3 experiments/sweep.py --unique_tokens="$U" --out="$OUT" --evals=20 --time_budget_s="$BUDGET" \
    --assumed_tflops="$ASSUMED_TFLOPS" --ar_models="$AR_MODELS" --diffusion_models="$DIFFUSION_MODELS" \
    --ar_epochs="$AR_EPOCHS" --diffusion_epochs="$DIFFUSION_EPOCHS" \
    --ar_options="--lr=$AR_LR" --diffusion_options="--lr=$DIFFUSION_LR" \
    -- --data_dir="$DATA_DIR" --dataset="python_bpe$VOCAB" $TRAIN

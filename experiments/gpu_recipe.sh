#!/usr/bin/env bash
# The crossover on one GPU in one command, offline: AR and masked diffusion trained on the same U unique BPE tokens
# of CPython's standard-library source (prepare_data.py --dataset python: no download), then compare.py's table,
# plot and verdict, each kind at its best setting. Within BUDGET seconds, data, planning and evaluation included.
#
#   bash experiments/gpu_recipe.sh                    # one H100: 7 minutes, measured (docs/RESULTS.md)
#   BUDGET=3300 bash experiments/gpu_recipe.sh        # a longer budget (colab.ipynb's T4 setting: 55 minutes,
#                                                     # the same steps in micro-steps of 32 windows)
#
# The grid (docs/RESULTS.md says why these): AR at two sizes, three epoch counts and two regularisations (the
# papers' dropout 0.1 + weight decay 0.1, and a strong weight decay 1.0, the tuned-AR baseline that closes much of
# the gap in the literature); diffusion at two sizes, the larger about 3x AR's larger in non-embedding parameters.
# Once the grid is done, each kind's best setting runs again with two more seeds, and the verdict averages them.
# The runs share the one GPU (as many processes at once as its memory holds, measured; on an H100 that was no faster
# than one after another at these sizes, and no slower). Before training, the
# plan times a few steps of each model on this GPU and prints every run's tokens/s, MFU and minutes; a plan over
# BUDGET is refused in one line that names a U that would fit. Checkpoints are written at the end of each run only
# (its best weights wait in memory): each run leaves ckpt.pt and best.pt, nothing in between.
#
# Every setting below can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter to run (the tests pass their own)
t0=$(date +%s)
DATA_DIR=${DATA_DIR:-data}
VOCAB=${VOCAB:-8192}                          # BPE trained on the train split; reused when already prepared
U=${U:-300000}                                # unique training tokens (what fit 8 minutes on an H100, measured)
OUT=${OUT:-out/gpu_recipe}
BUDGET=${BUDGET:-480}                         # seconds for the whole call
AR_MODELS=${AR_MODELS:-3x192,4x256}           # layers x width; heads = width / 64
DIFFUSION_MODELS=${DIFFUSION_MODELS:-4x256,6x384}
AR_EPOCHS=${AR_EPOCHS:-4,10,25}
DIFFUSION_EPOCHS=${DIFFUSION_EPOCHS:-250}
AR_VARIANTS=${AR_VARIANTS:-papers:--weight_decay=0.1|strong:--weight_decay=1.0}
AR_LR=${AR_LR:-1e-3}
DIFFUSION_LR=${DIFFUSION_LR:-1.5e-3}          # paper 1: diffusion gains slightly from a higher learning rate
REPEAT_SEEDS=${REPEAT_SEEDS:-2,3}             # each kind's best setting again with these seeds ('' for none)
MIN_ITERS=${MIN_ITERS:-100}                   # every run takes at least this many optimizer steps
JOBS=${JOBS:-0}                               # runs at once (0: as many as the GPU's memory holds)
# 128 windows of 513 tokens per step (65K tokens); MIN_ITERS halves it for short runs. Large micro-batches keep
# these small models from waiting on Python (at 32 windows a 6 x 384 model reached 6% MFU on an H100). Dropout 0.1 for both kinds, as in both papers' code; the papers' loader's
# epoch order (a fresh document order every epoch).
DROPOUT=${DROPOUT:-0.1}
TRAIN=${TRAIN:---block_size=512 --batch_size=128 --warmup_fraction=0.05 --eval_windows=64 --epoch_order=documents --ckpt_interval=1000000000}

"$PYTHON" prepare_data.py --dataset=python --tokenizer=bpe --vocab_size="$VOCAB" --data_dir="$DATA_DIR" \
    --name="python_bpe$VOCAB"
left=$((BUDGET - ($(date +%s) - t0)))
# shellcheck disable=SC2086  # TRAIN is a list of options
"$PYTHON" experiments/sweep.py --unique_tokens="$U" --out="$OUT" --evals=20 --jobs="$JOBS" --measure_steps=10 \
    --budget_s="$left" --min_iters="$MIN_ITERS" --repeat_seeds="$REPEAT_SEEDS" \
    --status_every_s=30 --ar_models="$AR_MODELS" --diffusion_models="$DIFFUSION_MODELS" \
    --ar_epochs="$AR_EPOCHS" --diffusion_epochs="$DIFFUSION_EPOCHS" --ar_variants="$AR_VARIANTS" \
    --ar_options="--lr=$AR_LR" --diffusion_options="--lr=$DIFFUSION_LR" \
    -- --data_dir="$DATA_DIR" --dataset="python_bpe$VOCAB" --dropout="$DROPOUT" $TRAIN
echo "recipe: $(( $(date +%s) - t0 ))s in all (BUDGET ${BUDGET}s)"

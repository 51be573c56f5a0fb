#!/usr/bin/env bash
# Paper 1's comparison on one GPU, one unique-token budget U a call, offline: AR and masked diffusion trained on
# the same U unique BPE tokens of CPython's standard-library source (prepare_data.py --dataset python: no
# download) by experiments/protocol.py: model sizes set by non-embedding parameters per unique token (AR about
# 0.5 to 35, diffusion 1 to 10), three epoch counts for each kind, every (kind, size, epoch count) its own run
# with its own cosine, the same learning rate, weight decay and tokens per step for both kinds; then every run's
# best.pt scored at K = 128 on 256 validation windows, each kind at its best setting (flagged where that is an edge
# of its grid), and the downstream test on 2,500 held-out items, paired. Within BUDGET seconds, data, planning and
# scoring included: the plan times each model on this GPU first and refuses, in one line naming a U that would
# fit, a plan over BUDGET.
#
#   U=300000 bash experiments/gpu_recipe.sh       # the three U of the protocol, one call each, smallest first
#   U=800000 bash experiments/gpu_recipe.sh
#   U=2400000 bash experiments/gpu_recipe.sh      # about the whole train split (2.82M tokens)
#   python experiments/gap_vs_u.py out/gpu_recipe  # the gap against U and against compute / C_crit(U)
#
# A grid larger than one call (U = 2.4M's, at these sizes) runs in pieces with IN_PIECES=1: each call trains until
# BUDGET, every run checkpointed, and the same command continues it. Every setting below can be overridden from the
# environment; ar and diffusion options apart with AR_OPTIONS / DIFFUSION_OPTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter to run (the tests pass their own)
t0=$(date +%s)
DATA_DIR=${DATA_DIR:-data}
VOCAB=${VOCAB:-8192}                          # BPE trained on the train split; reused when already prepared
U=${U:-300000}                                # unique training tokens
OUT=${OUT:-out/gpu_recipe}                    # runs in OUT/u<U>
BUDGET=${BUDGET:-540}                         # seconds for the whole call
AR_PER_TOKEN=${AR_PER_TOKEN:-0.5,4,35}        # model sizes, as non-embedding parameters per unique token
DIFFUSION_PER_TOKEN=${DIFFUSION_PER_TOKEN:-1,3,10}
AR_EPOCHS=${AR_EPOCHS:-4,10,25}
DIFFUSION_EPOCHS=${DIFFUSION_EPOCHS:-50,150,400}
AR_VARIANTS=${AR_VARIANTS:-papers:--weight_decay=0.1|strong:--weight_decay=1.0}  # the tuned-AR baseline too
AR_OPTIONS=${AR_OPTIONS:-}
DIFFUSION_OPTIONS=${DIFFUSION_OPTIONS:-}
LR=${LR:-1e-3}                                # one learning rate for both kinds, as in paper 1
REPEAT_SEEDS=${REPEAT_SEEDS:-}                # each kind's best setting again with these seeds, e.g. 2,3
CHECKS=${CHECKS:-}                            # checks at each kind's best, e.g. --check_lr_factors=0.5,2
MIN_ITERS=${MIN_ITERS:-100}                   # the one step is lowered until the shortest run takes this many
JOBS=${JOBS:-0}                               # runs at once (0: as many as the GPU's memory holds)
IN_PIECES=${IN_PIECES:-0}                     # 1: no refusal; stop at BUDGET, checkpointed, and continue next call
SCORES=${SCORES:---rescore_samples=128 --rescore_windows=256 --test_items=2500 --test_samples=32}
# 128 windows of 513 tokens per step (65K tokens), for every run of both kinds; the papers' dropout 0.1 on both;
# the papers' loader's epoch order; 1,000 selection items scored at each of 20 evaluations.
DROPOUT=${DROPOUT:-0.1}
TRAIN=${TRAIN:---block_size=512 --batch_size=128 --warmup_fraction=0.05 --eval_windows=64 --epoch_order=documents --unique_from=pieces --mc_items=1000 --ckpt_interval=1000000000}

"$PYTHON" prepare_data.py --dataset=python --tokenizer=bpe --vocab_size="$VOCAB" --data_dir="$DATA_DIR" \
    --name="python_bpe$VOCAB"
left=$((BUDGET - ($(date +%s) - t0)))
budget="--budget_s=$left"                      # a plan over the budget is refused, naming a U that fits
[ "$IN_PIECES" = 1 ] && budget="--time_budget_s=$((left - 60))"  # a minute kept for the last saves
# shellcheck disable=SC2086  # CHECKS, TRAIN and SCORES are lists of options
"$PYTHON" experiments/protocol.py --unique_tokens="$U" --out="$OUT" --evals=20 --jobs="$JOBS" --measure_steps=10 \
    "$budget" --min_iters="$MIN_ITERS" --repeat_seeds="$REPEAT_SEEDS" --status_every_s=30 \
    --ar_per_token="$AR_PER_TOKEN" --diffusion_per_token="$DIFFUSION_PER_TOKEN" --ar_epochs="$AR_EPOCHS" \
    --diffusion_epochs="$DIFFUSION_EPOCHS" --ar_variants="$AR_VARIANTS" --ar_options="$AR_OPTIONS" \
    --diffusion_options="$DIFFUSION_OPTIONS" $CHECKS $SCORES \
    -- --data_dir="$DATA_DIR" --dataset="python_bpe$VOCAB" --lr="$LR" --dropout="$DROPOUT" $TRAIN
echo "recipe: $(( $(date +%s) - t0 ))s in all (BUDGET ${BUDGET}s)"

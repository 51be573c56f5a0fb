#!/usr/bin/env bash
# The GPU protocol's twin on a 2-core CPU: experiments/protocol.py at U = 37.5K, 75K and 150K unique BPE tokens
# of CPython's source (BPE 1024, context 128, the papers' dropout 0.1 on both kinds, one batch of 16 windows for
# every run), U cut as pieces of up to 512 tokens from randomly chosen train files (81 at 37.5K), then the gap
# against U (experiments/gap_vs_u.py).
# The grid is the one that brackets both kinds at U = 37.5K: AR at about 3, 11 and 35 non-embedding parameters per
# unique token for 4, 8 and 16 epochs, diffusion at 0.7, 3 and 11 for 150, 400 and 1000 epochs; then up to three
# bracketing rounds within the CPU's caps (the most epochs, 1000; diffusion no wider than 128, AR than 256); then
# at each kind's best its batch at 4 windows, its lr at x0.5 and x2, AR's weight decay at 1.0, each its own run;
# then each kind's final best with seeds 2 and 3. 10 evaluations a run on 32 windows; the downstream test (every
# non-overlapping held-out item) is fixed at the first start. Each U is its own command: stop it any time, and the
# same command continues (docs/RESULTS.md has what it measured).
#
#   bash experiments/cpu_twin.sh                  # all three U, then the table and out/cpu_twin/gap_vs_u.png
#   US="37500" bash experiments/cpu_twin.sh       # one U
#   CHECKS= bash experiments/cpu_twin.sh          # the grid and its bracketing only (CAPS= : no bracketing)
#   US=150000 GRID="--ar_models=3x192x3,4x256x4 --diffusion_models=2x64x2,2x128x2 --ar_epochs=4,8,16 \
#       --diffusion_epochs=250,600" bash experiments/cpu_twin.sh   # the targeted 150K grid (add CAPS= CHECKS=: grid only)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter to run (the tests pass their own)
DATA_DIR=${DATA_DIR:-data}
VOCAB=${VOCAB:-1024}
OUT=${OUT:-out/cpu_twin}
US=${US:-37500 75000 150000}
JOBS=${JOBS:-2}                                   # two single-thread runs at once: more tokens/s than one of two
GRID=${GRID:---ar_per_token=3,11,35 --diffusion_per_token=0.7,3,11 --ar_epochs=4,8,16 --diffusion_epochs=150,400,1000}
CAPS=${CAPS---bracket_rounds=3 --bracket_max_epochs=1000 --ar_max_width=256 --diffusion_max_width=128}
CHECKS=${CHECKS---check_batch_sizes=4 --check_lr_factors=0.5,2 --ar_check_weight_decays=1.0 --repeat_seeds=2,3}
SCORES=${SCORES:---rescore_samples=128 --rescore_windows=256 --test_items=0 --test_samples=32}
TRAIN=${TRAIN:---block_size=128 --batch_size=16 --dropout=0.1 --warmup_fraction=0.05 --epoch_order=documents --unique_from=pieces --eval_windows=32 --mc_items=1000 --mc_samples=2}

"$PYTHON" prepare_data.py --dataset=python --tokenizer=bpe --vocab_size="$VOCAB" --data_dir="$DATA_DIR" \
    --name="python_bpe$VOCAB"
for U in $US; do
    # shellcheck disable=SC2086  # GRID, CAPS, CHECKS, SCORES and TRAIN are lists of options
    "$PYTHON" experiments/protocol.py --unique_tokens="$U" --out="$OUT" --jobs="$JOBS" --threads=1 --evals=10 \
        --min_iters=50 --measure_steps=3 --status_every_s=120 $GRID $CAPS $CHECKS $SCORES \
        -- --data_dir="$DATA_DIR" --dataset="python_bpe$VOCAB" $TRAIN
done
"$PYTHON" experiments/gap_vs_u.py "$OUT"

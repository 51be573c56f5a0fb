#!/usr/bin/env bash
# The GPU protocol's twin on a 2-core CPU: experiments/protocol.py at U = 37.5K, 75K and 150K unique BPE tokens
# of CPython's source (BPE 1024, context 128, the papers' dropout 0.1 on both kinds, one batch of 16 windows for
# every run), then the gap against U (experiments/gap_vs_u.py). Cut from the GPU grid to fit about 90 minutes on
# 2 cores: two diffusion sizes (1 and 3 non-embedding parameters per unique token, not 1 to 10), diffusion epochs
# 25 to 225 (not 50 to 400), AR 3 to 20 epochs at 0.5, 3 and 12 per unique token, 10 evaluations a run on 32
# windows. Each U is its own command: stop it any time, and the same command continues (docs/RESULTS.md has
# what it measured).
#
#   bash experiments/cpu_twin.sh                  # all three U, then the table and out/cpu_twin/gap_vs_u.png
#   US="37500" bash experiments/cpu_twin.sh       # one U
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter to run (the tests pass their own)
DATA_DIR=${DATA_DIR:-data}
VOCAB=${VOCAB:-1024}
OUT=${OUT:-out/cpu_twin}
US=${US:-37500 75000 150000}
JOBS=${JOBS:-2}                                   # two single-thread runs at once: more tokens/s than one of two
GRID=${GRID:---ar_per_token=0.5,3,12 --diffusion_per_token=1,3 --ar_epochs=3,8,20 --diffusion_epochs=25,75,225 --bracket_rounds=3}
SCORES=${SCORES:---rescore_samples=128 --rescore_windows=256 --test_items=2500 --test_samples=32}
TRAIN=${TRAIN:---block_size=128 --batch_size=16 --dropout=0.1 --warmup_fraction=0.05 --epoch_order=documents --unique_from=pieces --eval_windows=32 --mc_items=1000 --mc_samples=2}

"$PYTHON" prepare_data.py --dataset=python --tokenizer=bpe --vocab_size="$VOCAB" --data_dir="$DATA_DIR" \
    --name="python_bpe$VOCAB"
for U in $US; do
    # shellcheck disable=SC2086  # GRID, SCORES and TRAIN are lists of options
    "$PYTHON" experiments/protocol.py --unique_tokens="$U" --out="$OUT" --jobs="$JOBS" --threads=1 --evals=10 \
        --min_iters=50 --measure_steps=3 --status_every_s=120 $GRID $SCORES \
        -- --data_dir="$DATA_DIR" --dataset="python_bpe$VOCAB" $TRAIN
done
"$PYTHON" experiments/gap_vs_u.py "$OUT"

#!/usr/bin/env bash
# The data-constrained experiment on a 2-core CPU: AR and diffusion, same 0.84M-parameter model, same 25K unique
# bytes of the default corpus, exact epochs. AR at 10 and 40 epochs (each its own cosine schedule), diffusion at
# 300 epochs; then compare.py's table and plot (out/cpu_recipe/compare.png).
# Usage: bash experiments/cpu_recipe.sh [extra training options]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/default/meta.json ] || python3 prepare_data.py
python3 experiments/sweep.py --unique_tokens=25000 --ar_epochs=10,40 --diffusion_epochs=300 --evals=30 \
    --out=out/cpu_recipe --jobs=1 -- --eval_windows=128 "$@"

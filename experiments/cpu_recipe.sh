#!/usr/bin/env bash
# The data-constrained experiment on a 2-core CPU: AR and diffusion with the same small model (2 layers x 64,
# 0.13M parameters), the same 50K unique bytes of the default corpus, exact epochs. AR at 16, 32 and 64 epochs,
# diffusion at 200 and 400 (each run its own cosine schedule); then compare.py's table and plot
# (out/cpu_recipe/compare.png). About 17 minutes on 2 cores.
# Usage: bash experiments/cpu_recipe.sh [extra training options]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter to run (the tests pass their own)
[ -f data/default/meta.json ] || "$PYTHON" prepare_data.py
"$PYTHON" experiments/sweep.py --unique_tokens=50000 --ar_epochs=16,32,64 --diffusion_epochs=200,400 --evals=40 \
    --out=out/cpu_recipe --jobs=1 -- --n_layer=2 --n_embd=64 --n_head=2 "$@"

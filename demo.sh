#!/usr/bin/env bash
# The main job on the embedded default corpus, offline on a CPU in minutes: prepare the data, train the AR and
# the diffusion model on the same tokens, and report both validation losses side by side.
set -euo pipefail
cd "$(dirname "$0")"
python3 prepare_data.py
python3 train_ar.py --overwrite "$@"
python3 train_diffusion.py --overwrite "$@"
python3 compare.py out/ar out/diffusion --plot=out/compare.png

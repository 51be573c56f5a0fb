#!/usr/bin/env bash
# Every CUDA path of the project in about a minute, before a long GPU run: bf16 autocast, float16 with the grad
# scaler, --compile, fused AdamW, pinned batches, a checkpoint and --resume, the MFU line, sample.py for both kinds,
# evaluate.py, and torchrun with NCCL when there are two GPUs. One line per check; it stops at the first failure,
# naming it and showing its last lines. On a machine without a GPU the GPU-only checks are skipped, and it says so.
#
#   bash experiments/gpu_smoke.sh                     # OUT=out/gpu_smoke by default; DATA_DIR=data
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}  # the interpreter to run (the tests pass their own)
OUT=${OUT:-out/gpu_smoke}
DATA_DIR=${DATA_DIR:-data}
mkdir -p "$OUT"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
TINY=(--data_dir="$DATA_DIR" --dataset=default --n_layer=2 --n_head=2 --n_embd=64 --block_size=64 --batch_size=16
      --eval_windows=8 --mc_items=20 --elbo_samples=4 --log_interval=10 --warmup_iters=5)

check() {  # check NAME COMMAND...: run it, log to OUT/NAME.txt, one line; stop at the first failure
    local name=$1; shift
    local t0=$SECONDS
    if "$@" >"$OUT/$name.txt" 2>&1; then
        printf 'ok    %-28s %3ds\n' "$name" $((SECONDS - t0))
    else
        printf 'FAIL  %-28s (exit %s), last lines of %s:\n' "$name" "$?" "$OUT/$name.txt"
        tail -n 8 "$OUT/$name.txt"
        exit 1
    fi
}
expect() {  # expect NAME PATTERN: the check NAME's output holds PATTERN (grep -E), else stop
    if ! grep -Eq "$2" "$OUT/$1.txt"; then
        echo "FAIL  $1: its output lacks /$2/ (see $OUT/$1.txt)"
        exit 1
    fi
}

"$PYTHON" -c "import sys, torch; print('torch', torch.__version__, '| python', sys.version.split()[0], '|',
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
check data "$PYTHON" prepare_data.py --data_dir="$DATA_DIR"

if [ "$GPUS" -gt 0 ]; then
    # bf16 autocast; on CUDA every step also goes through fused AdamW and pinned, non-blocking batches
    check bf16_fused_pinned_mfu "$PYTHON" train_ar.py "${TINY[@]}" --dtype=bfloat16 --max_iters=40 \
        --out_dir="$OUT/ar" --overwrite
    expect bf16_fused_pinned_mfu "\(bfloat16\)"
    expect bf16_fused_pinned_mfu "mfu ([0-9.]+%|unknown)"
    # float16 with the grad scaler, then a checkpoint at iteration 0 (--stop_after_s) and --resume to the end;
    # a third, uninterrupted run tells how far CUDA's own non-determinism moves the numbers
    check fp16_scaler_stop "$PYTHON" train_diffusion.py "${TINY[@]}" --dtype=float16 --max_iters=40 \
        --eval_interval=20 --out_dir="$OUT/diffusion" --overwrite --stop_after_s=0.01
    expect fp16_scaler_stop "\(float16\)"
    expect fp16_scaler_stop "stopped after"
    check fp16_resume "$PYTHON" train_diffusion.py --out_dir="$OUT/diffusion" --resume --stop_after_s=0
    expect fp16_resume "done: best val"
    check fp16_uninterrupted "$PYTHON" train_diffusion.py "${TINY[@]}" --dtype=float16 --max_iters=40 \
        --eval_interval=20 --out_dir="$OUT/diffusion_straight" --overwrite
    "$PYTHON" - "$OUT" <<'PY'
import json, sys
logs = [[json.loads(l) for l in open(f"{sys.argv[1]}/{run}/log.jsonl")] for run in ("diffusion", "diffusion_straight")]
gap = max(abs(a["val_loss"] - b["val_loss"]) for a, b in zip(*logs))
print(f"      resumed vs uninterrupted on this GPU: largest val difference {gap:.2e} nats/token "
      f"({'exact' if gap == 0 else 'not bit-exact: CUDA kernels are not deterministic'})")
PY
    # a resumed run keeps its saved options: the compiled run resumes compiled without being told
    check compile "$PYTHON" train_ar.py "${TINY[@]}" --max_iters=30 --compile --out_dir="$OUT/compiled" \
        --overwrite --stop_after_s=0.01
    check compile_resume "$PYTHON" train_ar.py --out_dir="$OUT/compiled" --resume --stop_after_s=0
    "$PYTHON" -c "import torch; c = torch.load('$OUT/compiled/ckpt.pt', weights_only=True);
assert c['config']['compile'] and c['iter'] == 30, (c['config']['compile'], c['iter'])" \
        || { echo "FAIL  compile_resume: the resumed run lost --compile or did not finish"; exit 1; }
    check sample_ar "$PYTHON" sample.py --ckpt="$OUT/ar" --num_samples=1 --max_new_tokens=32
    check sample_diffusion "$PYTHON" sample.py --ckpt="$OUT/diffusion" --num_samples=1 --gen_length=32 --steps=8
    check evaluate "$PYTHON" evaluate.py --ckpt="$OUT/diffusion" --mc_items=20
    expect evaluate "val"
    if [ "$GPUS" -gt 1 ]; then
        check torchrun_nccl "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 train_ar.py \
            "${TINY[@]}" --max_iters=20 --out_dir="$OUT/ddp" --overwrite
    else
        echo "skip  torchrun_nccl                (one GPU: NCCL needs two)"
    fi
else
    echo "skip  bf16, fp16 and grad scaler, compile, fused AdamW, pinned batches, MFU, NCCL (no GPU here)"
    check cpu_train_stop "$PYTHON" train_diffusion.py "${TINY[@]}" --max_iters=20 --eval_interval=10 \
        --out_dir="$OUT/diffusion" --overwrite --stop_after_s=0.01
    check cpu_resume "$PYTHON" train_diffusion.py --out_dir="$OUT/diffusion" --resume --stop_after_s=0
    expect cpu_resume "done: best val"
    check sample_diffusion "$PYTHON" sample.py --ckpt="$OUT/diffusion" --num_samples=1 --gen_length=32 --steps=8
    check evaluate "$PYTHON" evaluate.py --ckpt="$OUT/diffusion" --mc_items=20
fi
echo "smoke: every check passed"

"""
Training throughput of both scripts' steps (forward, loss, backward, AdamW) at a fixed config on this device.

    python bench/throughput.py                                   # the training scripts' default model
    python bench/throughput.py --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --n_vocab=50257 \
        --batch_size=16 --compile                                # GPT-2 small on a GPU

Prints tokens/s per kind (and MFU on GPUs of known peak) and the seconds of the `warmup` steps, which are not timed
(compilation, with --compile).
"""
import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import train_ar  # noqa: E402
import train_diffusion  # noqa: E402
from shape import ModelShape, random_model  # noqa: E402
from lab.errors import run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import parse_checked as parse_args  # noqa: E402
from runtime import mixed_precision, pick_dtype, peak_flops  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402
from config import TrainConfig  # noqa: E402
from trainer import Noise, make_optimizer, step_generator  # noqa: E402


@dataclass
class BenchConfig(ModelShape):
    block_size: int = option(128, low=1)
    batch_size: int = option(16, low=1)
    # timed steps per round; the figure is the median round's, so that a busy moment of the machine does not count
    steps: int = option(20, low=1)
    rounds: int = option(1, low=1)
    warmup: int = option(3, low=0)
    device: str = "auto"
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16", "float16"))
    compile: bool = False
    # torch.compile's mode with --compile: "reduce-overhead" records CUDA graphs (small models: fewer launches)
    compile_mode: str = option("default", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"))
    kinds: str = option("ar,diffusion", choices=("ar,diffusion", "ar", "diffusion", "diffusion,ar"))


def training_step(script, config, device, dtype, windows, compile=False, compile_mode="default"):
    """(model, step): a random model of config's shape and one training step of the kind's loss on `windows`, as the
    trainer runs it (autocast, backward, clip, AdamW); step(i) returns the loss."""
    torch.manual_seed(0)
    model = random_model(config, script.CAUSAL, device)
    optimizer = make_optimizer(model, TrainConfig(), device.type)
    step_model = torch.compile(model, mode=compile_mode) if compile else model
    autocast, _ = mixed_precision(device, dtype)  # as training runs it

    def step(i):
        with autocast:
            loss = script.training_loss(step_model, windows, Noise(step_generator(0, i, 0), model.config.mask_id))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return model, step


@dataclass
class Measured:
    params: int
    tokens_per_s: float
    mfu: str  # "-" where the device's peak is unknown
    peak_bytes: int  # on a GPU; None on a CPU
    warmup_s: float  # the untimed first steps: compiling, with --compile (a second process reads the compiler's cache)


def bench(kind, script, config, device, dtype):
    """Measured figures of the median of config.rounds rounds of config.steps training steps, after config.warmup;
    experiments/sweep.py's measured plan uses it too."""
    windows = torch.randint(0, config.n_vocab, (config.batch_size, config.block_size + 1), device=device)
    model, step = training_step(script, config, device, dtype, windows, config.compile, config.compile_mode)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(config.warmup):
        step(i).item()
    warmup_s = time.perf_counter() - t0
    seconds = []
    for r in range(config.rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(config.steps):
            loss = step(config.warmup + r * config.steps + i)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    tokens_per_s = config.steps * config.batch_size * config.block_size / statistics.median(seconds)
    peak = peak_flops(device)
    mfu = f"{100 * model.flops_per_token() * tokens_per_s / peak:.1f}%" if peak else "-"
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Measured(model.num_params(), tokens_per_s, mfu, memory, warmup_s)


def main():
    config = BenchConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    device = pick_device(config.device)
    dtype = pick_dtype(device, config.dtype)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    compiled = f"{config.compile} ({config.compile_mode})" if config.compile else "False"
    print(f"device: {name} | dtype {str(dtype).replace('torch.', '')} | compile {compiled} | "
          f"{config.n_layer} layers x {config.n_embd} wide, {config.n_head} heads, context {config.block_size}, "
          f"vocab {config.n_vocab}, batch {config.batch_size}, "
          f"median of {config.rounds} round(s) of {config.steps} steps")
    print(f"{'kind':<10} {'params':>10} {'tokens/s':>12} {'MFU':>7} {'warmup s':>9}")
    for kind in config.kinds.split(","):
        script = {"ar": train_ar, "diffusion": train_diffusion}[kind]
        m = bench(kind, script, config, device, dtype)
        print(f"{kind:<10} {m.params / 1e6:>9.2f}M {m.tokens_per_s:>12,.0f} {m.mfu:>7} {m.warmup_s:>9.1f}")


if __name__ == "__main__":
    run_cli(main)

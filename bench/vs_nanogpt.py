"""
Training speed at equal size against nanoGPT's model, in one process, the steps interleaved.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT    # once, anywhere
    python bench/vs_nanogpt.py --nanogpt=../nanoGPT/model.py     # 4 x 128, context 128, batch 16, byte vocabulary

Each round times a few training steps (forward, loss, backward, clip, AdamW, on the same random batch) of nanoGPT's
GPT, then of this project's AR and diffusion models, so a busy moment of the machine slows all three alike; the
figures are the medians over the rounds. nanoGPT's model is imported from the file given, as its own train.py builds
it (no bias, no dropout, its configure_optimizers); this project's as bench/throughput.py builds it. All three run
under the allocator setting this project's CPU runs use (lab.launch.keep_freed_cpu_memory), so the comparison is of the
steps alone; nanoGPT's own train.py runs under glibc's defaults (bench/vs_nanogpt_train.py compares the programs).
"""
import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import train_ar  # noqa: E402
import train_diffusion  # noqa: E402
from shape import ModelShape  # noqa: E402
from throughput import training_step  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import parse_checked as parse_args  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402


@dataclass
class VersusConfig(ModelShape):
    nanogpt: str = ""  # path to nanoGPT's model.py
    block_size: int = option(128, low=1)
    batch_size: int = option(16, low=1)
    steps: int = option(5, low=1)  # timed steps of each model per round
    rounds: int = option(20, low=1)
    profile: bool = False  # also print torch.profiler's top ops of 10 steps of each model


def nanogpt_step(path, config, windows):
    """One training step of nanoGPT's GPT at config's shape, as its train.py runs it on a CPU."""
    if not os.path.isfile(path):
        raise UserError(f"--nanogpt {path or '(empty)'}: give the path of nanoGPT's model.py (git clone "
                        f"https://github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(block_size=config.block_size, vocab_size=config.n_vocab,
                                        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                                        dropout=0.0, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def step(i):
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    config = VersusConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    windows = torch.randint(0, config.n_vocab, (config.batch_size, config.block_size + 1),
                            generator=torch.Generator().manual_seed(0))
    cpu = pick_device("cpu")  # which also keeps freed memory (lab.launch.keep_freed_cpu_memory), for all three models
    steps = {"nanoGPT": nanogpt_step(config.nanogpt, config, windows),
             "ar": training_step(train_ar, config, cpu, torch.float32, windows)[1],
             "diffusion": training_step(train_diffusion, config, cpu, torch.float32, windows)[1]}
    seconds = {name: [] for name in steps}
    for r in range(config.rounds):
        for name, step in steps.items():
            step(0)  # one untimed step: the allocator and caches warm for this model
            t0 = time.perf_counter()
            for i in range(config.steps):
                step(i)
            seconds[name].append((time.perf_counter() - t0) / config.steps)
    tokens = config.batch_size * config.block_size
    print(f"cpu, {torch.get_num_threads()} threads | float32 | {config.n_layer} layers x {config.n_embd}, "
          f"{config.n_head} heads, context {config.block_size}, vocab {config.n_vocab}, batch {config.batch_size} | "
          f"median of {config.rounds} rounds of {config.steps} steps each")
    base = statistics.median(seconds["nanoGPT"])
    for name, values in seconds.items():
        step_s = statistics.median(values)
        print(f"{name:<10} {1e3 * step_s:7.1f} ms/step {tokens / step_s:>10,.0f} tokens/s "
              f"{base / step_s:6.2f}x nanoGPT")
    if config.profile:
        for name, step in steps.items():
            print_top_ops(name, step)


def print_top_ops(name, step, steps=10, rows=12):
    """torch.profiler's self CPU time per step of the ops that take most of it."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) / steps / 1e3
    print(f"\n{name}: {total:.1f} ms of ops per step")
    for e in ops[:rows]:
        print(f"  {e.key[:58]:<58} {e.self_cpu_time_total / steps / 1e3:7.2f} ms {e.count // steps:5d} calls")


if __name__ == "__main__":
    run_cli(main)

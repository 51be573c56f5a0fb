"""
Training speed at equal size against nanoGPT's own program: its train.py and this project's bench/throughput.py,
each a fresh process, in interleaved rounds.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT    # once, anywhere
    python bench/vs_nanogpt_train.py --nanogpt=../nanoGPT         # 4 x 128, context 128, batch 16, bytes, 8 rounds

Each round runs nanoGPT's train.py as it ships (CPU, float32, no compile, no bias, no dropout; the median of its
logged times per iteration after the first `skip`), then train.py again under this project's allocator setting
(lab.launch.keep_freed_cpu_memory, given to it as glibc's environment variables), then bench/throughput.py for both
kinds (the median of `iters` single steps each). A slow minute of the machine slows one round's programs alike, so
the figures are the medians of the per-round ratios. train.py runs on a copy of its files in a temporary folder, on
the default corpus as bytes: nothing is written beside nanoGPT. bench/vs_nanogpt.py compares the steps in one process.
"""
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
from shape import ModelShape  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import parse_checked as parse_args  # noqa: E402
from prepare_data import default_corpus_text  # noqa: E402
from lab.launch import kept_memory_environment  # noqa: E402

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput.py")
NANOGPT_FILES = ("train.py", "model.py", "configurator.py")


@dataclass
class ProgramsConfig(ModelShape):
    nanogpt: str = ""  # a checkout of nanoGPT (the folder holding its train.py)
    block_size: int = option(128, low=1)
    batch_size: int = option(16, low=1)
    iters: int = option(40, low=2)  # train.py's iterations, and bench/throughput.py's single steps per kind
    skip: int = option(3, low=0)  # train.py's first logged iterations left out (its first includes an evaluation)
    rounds: int = option(8, low=1)


def check(config):
    """A one-line UserError unless --nanogpt holds nanoGPT's files, the vocabulary holds every byte and some logged
    iterations are left after --skip."""
    missing = [name for name in NANOGPT_FILES if not os.path.isfile(os.path.join(config.nanogpt, name))]
    if not config.nanogpt or missing:
        raise UserError(f"--nanogpt {config.nanogpt or '(empty)'}: give a checkout of nanoGPT, the folder with "
                        f"{', '.join(NANOGPT_FILES)} (git clone https://github.com/karpathy/nanoGPT)")
    if config.n_vocab < 256:
        raise UserError(f"--n_vocab {config.n_vocab}: the bytes dataset needs at least 256")
    if config.skip >= config.iters:
        raise UserError(f"--skip {config.skip}: must be below --iters ({config.iters}), or nothing is left to time")


def nanogpt_copy(config, folder):
    """nanoGPT's files and a bytes dataset of the default corpus (vocab_size n_vocab in its meta.pkl) in `folder`."""
    for name in NANOGPT_FILES:
        shutil.copy(os.path.join(config.nanogpt, name), folder)
    data = os.path.join(folder, "data", "bytes")
    os.makedirs(data)
    tokens = np.frombuffer(default_corpus_text().encode(), dtype=np.uint8).astype(np.uint16)
    n_train = int(0.9 * len(tokens))
    tokens[:n_train].tofile(os.path.join(data, "train.bin"))
    tokens[n_train:].tofile(os.path.join(data, "val.bin"))
    with open(os.path.join(data, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": config.n_vocab}, f)


def run(command, cwd, env=None):
    """The program's standard output, or a one-line UserError with its last line of errors."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"{' '.join(command[:2])} failed (exit {done.returncode}): {last}")
    return done.stdout


def nanogpt_tokens_per_s(config, folder, env):
    """train.py's tokens/s: batch x context over the median of its logged times per iteration after `skip`."""
    output = run([sys.executable, "train.py", "--dataset=bytes", "--device=cpu", "--compile=False",
                  "--dtype=float32", f"--n_layer={config.n_layer}", f"--n_head={config.n_head}",
                  f"--n_embd={config.n_embd}", f"--block_size={config.block_size}",
                  f"--batch_size={config.batch_size}", "--gradient_accumulation_steps=1",
                  f"--max_iters={config.iters}", "--eval_interval=100000000", "--eval_iters=1", "--log_interval=1",
                  "--always_save_checkpoint=False", "--dropout=0.0", "--bias=False", "--out_dir=out"], folder, env)
    ms = [float(t) for t in re.findall(r"^iter \d+: .*time ([0-9.]+)ms", output, re.MULTILINE)][config.skip:]
    if not ms:
        raise UserError(f"train.py logged no 'iter N: ... time X ms' line after its first {config.skip}: raise --iters "
                        f"above --skip, or give nanoGPT's own checkout")
    return config.batch_size * config.block_size * 1000 / statistics.median(ms)


def ours_tokens_per_s(config):
    """bench/throughput.py's tokens/s per kind, in a fresh process, on the CPU in float32 as train.py runs."""
    output = run([sys.executable, BENCH, "--device=cpu", "--dtype=float32", "--steps=1", f"--rounds={config.iters}",
                  f"--n_layer={config.n_layer}", f"--n_head={config.n_head}", f"--n_embd={config.n_embd}",
                  f"--n_vocab={config.n_vocab}", f"--block_size={config.block_size}",
                  f"--batch_size={config.batch_size}"], None)
    found = dict(re.findall(r"^(ar|diffusion) +\S+ +([0-9,.]+) ", output, re.MULTILINE))
    return float(found["ar"].replace(",", "")), float(found["diffusion"].replace(",", ""))


def main():
    config = ProgramsConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    check(config)
    with tempfile.TemporaryDirectory() as folder:
        nanogpt_copy(config, folder)
        kept_memory = {**os.environ, **kept_memory_environment()}
        print(f"cpu | float32 | {config.n_layer} layers x {config.n_embd}, {config.n_head} heads, context "
              f"{config.block_size}, vocab {config.n_vocab}, batch {config.batch_size} | tokens/s, "
              f"{config.rounds} interleaved rounds")
        print(f"{'round':>5} {'train.py':>10} {'+ memory':>10} {'ours ar':>10} {'diffusion':>10}")
        rows = []
        for r in range(config.rounds):
            row = (nanogpt_tokens_per_s(config, folder, None), nanogpt_tokens_per_s(config, folder, kept_memory),
                   *ours_tokens_per_s(config))
            rows.append(row)
            print(f"{r + 1:>5} " + " ".join(f"{value:>10,.0f}" for value in row), flush=True)
    for column, name in ((2, "ar"), (3, "diffusion")):
        shipped = statistics.median(row[column] / row[0] for row in rows)
        same_memory = statistics.median(row[column] / row[1] for row in rows)
        print(f"{name:<10} {shipped:.2f}x train.py as it ships, {same_memory:.2f}x train.py with freed memory kept "
              f"(medians of the rounds' ratios)")


if __name__ == "__main__":
    run_cli(main)

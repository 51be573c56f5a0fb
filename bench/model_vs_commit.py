"""
Training speed of model.py against its own version at an earlier commit, in one process, the steps interleaved.

    python bench/model_vs_commit.py --commit=HEAD~1          # did the last change to model.py cost speed?
    python bench/model_vs_commit.py --commit=1ee8499 --threads=1 --rounds=25

Each round times `steps` training steps (forward, loss, backward, clip, AdamW, on one random batch) of the model
built from model.py as it was at --commit, then of today's, for AR and diffusion, so a busy moment of the machine
slows both alike. Prints the milliseconds a step (medians) and the median over rounds of the ratio then / now
(below 1: today's model is slower).
"""
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import model as today  # noqa: E402
import train_ar  # noqa: E402
import train_diffusion  # noqa: E402
from config import TrainConfig, option  # noqa: E402
from lab.checks import parse_checked  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from lab.launch import keep_freed_cpu_memory  # noqa: E402
from shape import ModelShape  # noqa: E402
from trainer import Noise, make_optimizer, step_generator  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class VersusCommitConfig(ModelShape):
    commit: str = "HEAD~1"  # the git revision whose model.py is timed against today's
    block_size: int = option(128, low=1)
    batch_size: int = option(16, low=1)
    steps: int = option(5, low=1)  # timed steps of each model per round
    rounds: int = option(15, low=2)  # the first round warms up and is not counted
    threads: int = option(2, low=1)


def model_at(commit):
    """The model module as model.py was at `commit` (a one-line error if git cannot show it)."""
    try:
        source = subprocess.run(["git", "show", f"{commit}:model.py"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise UserError(f"--commit {commit}: git cannot show model.py at that revision here") from None
    path = os.path.join(tempfile.mkdtemp(), "model_then.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("model_then", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    config = VersusCommitConfig()
    parse_checked(sys.argv[1:], config, doc=__doc__)
    then = model_at(config.commit)
    keep_freed_cpu_memory()  # as the command line's CPU runs
    torch.set_num_threads(config.threads)
    batch = torch.randint(0, config.n_vocab, (config.batch_size, config.block_size + 1),
                          generator=torch.Generator().manual_seed(0))
    scripts = {"ar": train_ar, "diffusion": train_diffusion}
    models = {}
    for version, module in (("then", then), ("now", today)):
        for kind, script in scripts.items():
            torch.manual_seed(0)
            m = module.Transformer(module.ModelConfig(n_vocab=config.n_vocab, block_size=config.block_size,
                                                      n_layer=config.n_layer, n_head=config.n_head,
                                                      n_embd=config.n_embd, causal=script.CAUSAL))
            models[version, kind] = (m, make_optimizer(m, TrainConfig(), "cpu"))
    seconds = {key: [] for key in models}
    for r in range(config.rounds):
        for (version, kind), (m, optimizer) in models.items():
            t0 = time.perf_counter()
            for i in range(config.steps):
                loss = scripts[kind].training_loss(m, batch, Noise(step_generator(0, i, 0), config.n_vocab))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if r:
                seconds[version, kind].append((time.perf_counter() - t0) / config.steps)
    print(f"model.py at {config.commit} (then) against today's (now): {config.n_layer} x {config.n_embd}, context "
          f"{config.block_size}, batch {config.batch_size}, vocab {config.n_vocab}, {config.threads} thread(s), "
          f"{config.rounds - 1} rounds of {config.steps} steps")
    for kind in scripts:
        ratios = [a / b for a, b in zip(seconds["then", kind], seconds["now", kind])]
        print(f"{kind:9s}: then {1000 * statistics.median(seconds['then', kind]):.1f} ms/step, now "
              f"{1000 * statistics.median(seconds['now', kind]):.1f} ms/step, then/now {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    run_cli(main)

"""
The papers' protocol: separate runs per epoch count (the schedule spans each run) on one fixed unique-token
budget, AR and diffusion with the same model and data, then compare.py on all of them.

    python experiments/sweep.py --unique_tokens=25000 --ar_epochs=4,8,16 --diffusion_epochs=100,300 \
        --out=out/sweep -- --eval_interval=100

Options before `--` belong to the sweep; everything after `--` goes to every training run (model size, lr, ...).
Runs go to OUT/<kind>_e<epochs>; a finished run is skipped, an interrupted one resumed. `--jobs=2` runs two at
a time, each with cores / jobs threads.
"""
import os
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import compare  # noqa: E402
from cli import UserError, parse_args, run_cli  # noqa: E402


@dataclass
class SweepConfig:
    unique_tokens: int = 25000
    ar_epochs: str = "4,8,16"
    diffusion_epochs: str = "100"
    out: str = "out/sweep"
    jobs: int = 1
    threads: int = 0  # torch threads per run (0: cores / jobs)
    evals: int = 20  # evaluations per run, evenly spaced in epochs
    plot: str = ""  # default: OUT/compare.png


def run_is_finished(folder):
    try:
        records = compare.read_log(folder)
    except UserError:
        return False
    return os.path.exists(os.path.join(folder, "ckpt.pt")) and records[-1].get("done", False)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    config = SweepConfig()
    parse_args(argv[:split], config, doc=__doc__)
    extra = argv[split + 1:]
    grid = [("ar", e) for e in config.ar_epochs.split(",") if e] + \
           [("diffusion", e) for e in config.diffusion_epochs.split(",") if e]
    threads = str(config.threads or max((os.cpu_count() or 1) // config.jobs, 1))
    pending, folders = [], []
    for kind, epochs in grid:
        folder = os.path.join(config.out, f"{kind}_e{epochs}")
        folders.append(folder)
        if run_is_finished(folder):
            print(f"{folder}: finished, skipped")
            continue
        resume = ["--resume"] if os.path.exists(os.path.join(folder, "ckpt.pt")) else ["--overwrite"]
        cmd = [sys.executable, os.path.join(ROOT, f"train_{kind}.py"), f"--out_dir={folder}", *resume]
        if resume != ["--resume"]:  # a resumed run keeps its saved config
            cmd += [f"--unique_tokens={config.unique_tokens}", f"--epochs={epochs}",
                    f"--eval_epochs={float(epochs) / config.evals:g}", *extra]
        pending.append((folder, cmd))
    running = []
    while pending or running:
        while pending and len(running) < config.jobs:
            folder, cmd = pending.pop(0)
            os.makedirs(folder, exist_ok=True)
            print("running:", " ".join(cmd[1:]), flush=True)
            log = open(os.path.join(folder, "stdout.txt"), "a")
            running.append((folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                     env=dict(os.environ, OMP_NUM_THREADS=threads))))
        folder, proc = running.pop(0)
        if proc.wait() != 0:
            raise UserError(f"the run in {folder} failed: see {folder}/stdout.txt")
    rows = compare.main(folders + [f"--plot={config.plot or os.path.join(config.out, 'compare.png')}", "--logx"])
    best = {kind: min((r for r in rows if r["kind"] == kind), key=lambda r: r["best_val"], default=None)
            for kind in ("ar", "diffusion")}
    if best["ar"] and best["diffusion"]:
        margin = best["ar"]["best_val"] - best["diffusion"]["best_val"]
        winner = "diffusion" if margin > 0 else "AR"
        print(f"best AR {best['ar']['best_val']:.4f} (epoch {best['ar']['best_epoch']:.1f} of {best['ar']['run']}) | "
              f"best diffusion {best['diffusion']['best_val']:.4f} (epoch {best['diffusion']['best_epoch']:.1f} of "
              f"{best['diffusion']['run']}) | {winner} lower by {abs(margin):.4f} nats/token")
    return rows


if __name__ == "__main__":
    run_cli(main)

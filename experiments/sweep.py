"""
The papers' protocol: separate runs per epoch count (the schedule spans each run) on one fixed unique-token
budget, AR and diffusion with the same model and data, then compare.py on all of them.

    python experiments/sweep.py --unique_tokens=25000 --ar_epochs=4,8,16 --diffusion_epochs=100,300 \
        --out=out/sweep -- --eval_interval=100

Options before `--` belong to the sweep; everything after `--` goes to every training run (model size, lr, ...).
Runs go to OUT/<kind>_e<epochs>; a finished run is skipped, an interrupted one resumed. `--jobs=2` runs two at
a time, each with cores / jobs threads. `--seeds=1337,2,3` repeats every run with each training seed (folders
OUT/<kind>_e<epochs>_s<seed>) and reports each setting's mean and spread over seeds: at these sizes one run's best
validation loss can move by 0.1-0.3 with the seed alone, more than the ELBO estimate's own spread.
"""
import math
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
    seeds: str = ""  # training seeds, comma-separated (empty: the training default, one run per setting)
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
    try:
        seeds = [int(s) for s in config.seeds.split(",") if s.strip()] or [None]
    except ValueError:
        raise UserError(f"--seeds takes whole numbers separated by commas (e.g. --seeds=1337,2,3), "
                        f"not {config.seeds!r}") from None
    threads = str(config.threads or max((os.cpu_count() or 1) // config.jobs, 1))
    pending, folders, setting_of = [], [], {}
    for (kind, epochs), seed in [(g, s) for g in grid for s in seeds]:
        folder = os.path.join(config.out, f"{kind}_e{epochs}" + (f"_s{seed}" if seed is not None else ""))
        folders.append(folder)
        setting_of[os.path.basename(folder)] = (kind, epochs)
        if run_is_finished(folder):
            print(f"{folder}: finished, skipped")
            continue
        resume = ["--resume"] if os.path.exists(os.path.join(folder, "ckpt.pt")) else ["--overwrite"]
        cmd = [sys.executable, os.path.join(ROOT, f"train_{kind}.py"), f"--out_dir={folder}", *resume]
        if resume != ["--resume"]:  # a resumed run keeps its saved config
            cmd += [f"--unique_tokens={config.unique_tokens}", f"--epochs={epochs}",
                    f"--eval_epochs={float(epochs) / config.evals:g}", *extra]
            cmd += [f"--seed={seed}"] if seed is not None else []
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
    print(verdict(rows, setting_of))
    return rows


def verdict(rows, setting_of):
    """Each kind's best setting (lowest mean best-val over seeds) and the margin between the two kinds."""
    groups = {}
    for r in rows:
        groups.setdefault(setting_of[r["run"]], []).append(r)
    best = {}
    for (kind, epochs), runs in groups.items():
        vals = [r["best_val"] for r in runs]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        epoch = sum(r["best_epoch"] for r in runs) / len(runs)
        if kind not in best or mean < best[kind]["mean"]:
            best[kind] = {"mean": mean, "std": std, "n": len(vals), "epochs": epochs, "best_epoch": epoch}
    if "ar" not in best or "diffusion" not in best:
        return "one kind only: no verdict"

    def describe(name, b):
        spread = f" +- {b['std']:.4f} (std over {b['n']} seeds)" if b["n"] > 1 else ""
        return f"best {name} {b['mean']:.4f}{spread} at epoch {b['best_epoch']:.1f} of {b['epochs']}-epoch runs"
    margin = best["ar"]["mean"] - best["diffusion"]["mean"]
    winner = "diffusion" if margin > 0 else "AR"
    return (f"{describe('AR', best['ar'])} | {describe('diffusion', best['diffusion'])} | "
            f"{winner} lower by {abs(margin):.4f} nats/token")


if __name__ == "__main__":
    run_cli(main)

"""
The papers' protocol: separate runs per epoch count (the schedule spans each run) on one fixed unique-token
budget, AR and diffusion with the same model and data, then compare.py on all of them.

    python experiments/sweep.py --unique_tokens=25000 --ar_epochs=4,8,16 --diffusion_epochs=100,300 \
        --out=out/sweep -- --eval_interval=100

Options before `--` belong to the sweep; everything after `--` goes to every training run (model size, lr, ...).
Runs go to OUT/<kind>_e<epochs>; a finished run is skipped, an interrupted one resumed. `--jobs=2` runs two at
a time, each with cores / jobs threads. `--ar_models=6x384,8x512` (and `--diffusion_models`) add model sizes to the
grid, layers x width (x heads; default: width / 64 heads), in folders OUT/<kind>_<model>_e<epochs>: the papers
compare each kind at its best size. Before training, a plan prints each run's parameters and FLOPs (and its time
at `--assumed_tflops`). `--time_budget_s=540` stops the sweep (each run checkpointed) when the budget is spent:
the same command continues it, so a long sweep runs in pieces. `--seeds=1337,2,3` repeats every run with each training seed (folders
OUT/<kind>_e<epochs>_s<seed>) and reports each setting's mean and spread over seeds: at these sizes one run's best
validation loss can move by 0.1-0.3 with the seed alone, more than the ELBO estimate's own spread.
"""
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import compare  # noqa: E402
from cli import UserError, list_items, option, parse_args, run_cli  # noqa: E402


@dataclass
class SweepConfig:
    unique_tokens: int = option(25000, low=1)
    ar_epochs: str = option("4,8,16", items=float, above=0)
    diffusion_epochs: str = option("100", items=float, above=0)
    out: str = "out/sweep"
    jobs: int = option(1, low=1)
    threads: int = option(0, low=0)  # torch threads per run (0: cores / jobs)
    evals: int = option(20, low=1)  # evaluations per run, evenly spaced in epochs
    seeds: str = option("", items=int, low=0)  # training seeds, comma-separated (empty: the training default)
    plot: str = ""  # default: OUT/compare.png
    ar_models: str = ""  # model sizes for AR, e.g. 6x384,8x512 (empty: the training options' model)
    diffusion_models: str = ""  # the same for diffusion
    ar_options: str = ""  # training options for the AR runs only, e.g. "--lr=1e-3"
    diffusion_options: str = ""  # training options for the diffusion runs only
    assumed_tflops: float = option(0.0, low=0)  # achieved TFLOP/s for the plan's time estimates (0: no estimate)
    plan_only: bool = False  # print the plan and stop
    time_budget_s: float = option(0.0, low=0)  # stop (every run checkpointed) after this many seconds; rerun to
    # continue (0: no budget)


def run_is_finished(folder):
    try:
        records = compare.read_log(folder)
    except UserError:
        return False
    return os.path.exists(os.path.join(folder, "ckpt.pt")) and records[-1].get("done", False)


def model_options(spec):
    """'6x384' (layers x width, width / 64 heads) or '6x384x8' as training options; '' means none."""
    if not spec:
        return []
    try:
        sizes = [int(v) for v in spec.split("x")]
        layers, width = sizes[:2]
        heads = sizes[2] if len(sizes) == 3 else max(width // 64, 1)
        if len(sizes) not in (2, 3) or min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"model size '{spec}': write layers x width (x heads), e.g. 6x384 or 2x64x2") from None
    return [f"--n_layer={layers}", f"--n_embd={width}", f"--n_head={heads}"]


def kind_options(config, kind):
    return shlex.split(config.ar_options if kind == "ar" else config.diffusion_options)


def make_grid(config):
    """(folder name, kind, model spec, epochs, seed) of every run, AR's first."""
    seeds = list_items("seeds", config.seeds, int) or [None]
    grid = []
    for kind, epochs_text, models_text in (("ar", config.ar_epochs, config.ar_models),
                                           ("diffusion", config.diffusion_epochs, config.diffusion_models)):
        for model in [m for m in models_text.split(",") if m] or [""]:
            model_options(model)  # checked before anything runs
            for epochs in list_items(f"{kind}_epochs", epochs_text, float):
                for seed in seeds:
                    name = f"{kind}{'_' + model if model else ''}_e{epochs:g}{f'_s{seed}' if seed is not None else ''}"
                    grid.append((name, kind, model, epochs, seed))
    return grid


def print_plan(grid, config, extra):
    """Each run's size and training FLOPs (6 N + attention per token, times epochs x U) before anything runs;
    building it checks every run's training options."""
    from model import ModelConfig, Transformer
    from trainer import TrainConfig, load_meta
    rows = []
    for name, kind, model, epochs, _ in grid:
        train = TrainConfig()
        parse_args(extra + kind_options(config, kind) + model_options(model), train)
        meta = load_meta(os.path.join(train.data_dir, train.dataset))
        with torch.device("meta"):  # sizes only: no memory, no initialisation
            net = Transformer(ModelConfig(n_vocab=meta["n_vocab"], block_size=train.block_size, n_layer=train.n_layer,
                                          n_head=train.n_head, n_embd=train.n_embd, causal=kind == "ar"))
        tokens = epochs * config.unique_tokens
        rows.append((name, net.num_params(), net.flops_per_token(), tokens, net.flops_per_token() * tokens))
    rate = config.assumed_tflops * 1e12
    print(f"{'run':<28} {'params':>8} {'FLOPs/token':>12} {'train tokens':>13} {'FLOPs':>9}"
          + (f" {'est. time':>10}" if rate else ""))
    for name, params, per_token, tokens, flops in rows:
        print(f"{name:<28} {params / 1e6:>7.2f}M {per_token / 1e6:>11.1f}M {tokens:>13,.0f} {flops:>9.2e}"
              + (f" {flops / rate / 60:>9.1f}m" if rate else ""))
    total = sum(row[-1] for row in rows)
    estimate = (f", about {total / rate / 60:.0f} min at {config.assumed_tflops:g} TFLOP/s achieved (an assumption; "
                f"evaluation and compilation extra)" if rate else "")
    print(f"plan: {len(grid)} runs, {total:.2e} training FLOPs{estimate}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    config = SweepConfig()
    parse_args(argv[:split], config, doc=__doc__)
    extra = argv[split + 1:]
    grid = make_grid(config)
    print_plan(grid, config, extra)
    if config.plan_only:
        return None
    threads = str(config.threads or max((os.cpu_count() or 1) // config.jobs, 1))
    t_start = time.time()
    pending, folders, setting_of = [], [], {}
    for name, kind, model, epochs, seed in grid:
        folder = os.path.join(config.out, name)
        folders.append(folder)
        setting_of[name] = (kind, model, f"{epochs:g}")
        if run_is_finished(folder):
            print(f"{folder}: finished, skipped")
            continue
        resume = ["--resume"] if os.path.exists(os.path.join(folder, "ckpt.pt")) else ["--overwrite"]
        cmd = [sys.executable, os.path.join(ROOT, f"train_{kind}.py"), f"--out_dir={folder}", *resume]
        if resume != ["--resume"]:  # a resumed run keeps its saved config
            cmd += [f"--unique_tokens={config.unique_tokens}", f"--epochs={epochs:g}",
                    f"--eval_epochs={epochs / config.evals:g}", *extra, *kind_options(config, kind),
                    *model_options(model)]
            cmd += [f"--seed={seed}"] if seed is not None else []
        pending.append((folder, cmd))
    running = []
    while pending or running:
        left = config.time_budget_s - (time.time() - t_start)
        while pending and len(running) < config.jobs and (not config.time_budget_s or left > 0):
            folder, cmd = pending.pop(0)
            # always given: a resumed run keeps its saved value otherwise (0 means none, hence the 0.01)
            cmd += [f"--stop_after_s={max(left, 0.01):.2f}" if config.time_budget_s else "--stop_after_s=0"]
            os.makedirs(folder, exist_ok=True)
            print("running:", " ".join(cmd[1:]), flush=True)
            log = open(os.path.join(folder, "stdout.txt"), "a")
            running.append((folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                     env=dict(os.environ, OMP_NUM_THREADS=threads))))
        if not running:
            break
        folder, proc = running.pop(0)
        if proc.wait() != 0:
            raise UserError(f"the run in {folder} failed: see {folder}/stdout.txt")
    unfinished = [f for f in folders if not run_is_finished(f)]
    if unfinished:
        print(f"time budget spent ({config.time_budget_s:g}s): {len(unfinished)} run(s) not finished; run the same "
              f"command again to continue them")
        return None
    rows = compare.main(folders + [f"--plot={config.plot or os.path.join(config.out, 'compare.png')}", "--logx"])
    print(verdict(rows, setting_of))
    return rows


def verdict(rows, setting_of):
    """Each kind's best setting (lowest mean best-val over seeds) and the margin between the two kinds."""
    groups = {}
    for r in rows:
        groups.setdefault(setting_of[r["run"]], []).append(r)
    best = {}
    for (kind, *model, epochs), runs in groups.items():
        vals = [r["best_val"] for r in runs]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        epoch = sum(r["best_epoch"] for r in runs) / len(runs)
        if kind not in best or mean < best[kind]["mean"]:
            best[kind] = {"mean": mean, "std": std, "n": len(vals), "epochs": epochs, "best_epoch": epoch,
                          "model": model[0] if model else ""}
    if "ar" not in best or "diffusion" not in best:
        return "one kind only: no verdict"

    def describe(name, b):
        spread = f" +- {b['std']:.4f} (std over {b['n']} seeds)" if b["n"] > 1 else ""
        model = f" ({b['model']})" if b["model"] else ""
        return (f"best {name}{model} {b['mean']:.4f}{spread} at epoch {b['best_epoch']:.1f} of "
                f"{b['epochs']}-epoch runs")
    margin = best["ar"]["mean"] - best["diffusion"]["mean"]
    winner = "diffusion" if margin > 0 else "AR"
    return (f"{describe('AR', best['ar'])} | {describe('diffusion', best['diffusion'])} | "
            f"{winner} lower by {abs(margin):.4f} nats/token")


if __name__ == "__main__":
    run_cli(main)

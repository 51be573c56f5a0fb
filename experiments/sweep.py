"""
The papers' protocol: separate runs per epoch count (the schedule spans each run) on one fixed unique-token
budget, AR and diffusion with the same model and data, then compare.py on all of them.

    python experiments/sweep.py --unique_tokens=25000 --ar_epochs=4,8,16 --diffusion_epochs=100,300 \
        --out=out/sweep -- --eval_interval=100

Options before `--` belong to the sweep; everything after `--` goes to every training run (model size, lr, ...).
Runs go to OUT/<kind>_e<epochs>; a finished run is skipped, an interrupted one resumed.

The grid: `--ar_models=6x384,8x512` (and `--diffusion_models`) add model sizes, layers x width (x heads; default
width / 64 heads), in folders OUT/<kind>_<model>_e<epochs>: the papers compare each kind at its best size.
`--ar_variants="papers:--weight_decay=0.1|strong:--weight_decay=1.0"` (and `--diffusion_variants`) add named option
sets, each a run of its own (OUT/<kind>_<model>_<variant>_e<epochs>). `--seeds=1337,2,3` repeats every run with
each training seed (OUT/..._s<seed>); `--repeat_seeds=2,3` instead repeats only each kind's best setting, once
the grid is done. The verdict averages a setting over its seeds: one run's best loss can move with the seed alone.

Running: `--jobs=N` runs N at a time (0: as many as fit in the GPU's memory, measured; on a CPU one), each with
cores / jobs threads; a status line per run shows every `--status_every_s` seconds. One batch rule for every run
of both kinds (paper 1 gives both the same batch): `--min_iters=100` lowers the grid's one step (grad_accum first,
then the micro-batch) until its shortest run takes at least that many optimizer steps.

The plan: before training, each run's parameters, FLOPs, steps and tokens per step print. `--measure_steps=5`
times that many training steps of each model on this device first, and the plan gives each run's measured
tokens/s, MFU and minutes; `--budget_s` then refuses, before anything is written, a plan that does not fit and
names a unique-token budget that would; what planning leaves of it is also a stop, as below.
`--time_budget_s=540` stops the sweep (each run checkpointed) when the budget is spent: the same command continues
it, so a long sweep runs in pieces.
"""
import math
import ctypes
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402
import compare  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import check_plot_path, list_items, parse_checked as parse_args  # noqa: E402
from trainer import fmt_time  # noqa: E402
from lab.folders import LOCK_FILE, lock_holder  # noqa: E402
from runtime import pick_dtype, peak_flops  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402


@dataclass
class SweepConfig:
    unique_tokens: int = option(25000, low=1)
    ar_epochs: str = option("4,8,16", items=float, above=0)
    diffusion_epochs: str = option("100", items=float, above=0)
    out: str = "out/sweep"
    # runs at a time (0: as many as fit in the GPU's memory by the measured plan; one on a CPU)
    jobs: int = option(1, low=0)
    # torch threads per run (0: cores / jobs)
    threads: int = option(0, low=0)
    # evaluations per run, evenly spaced in epochs
    evals: int = option(20, low=1)
    # training seeds, comma-separated, every run repeated with each (empty: the training default)
    seeds: str = option("", items=int, low=0)
    # after the grid: each kind's best setting again with each of these seeds
    repeat_seeds: str = option("", items=int, low=0)
    # default: OUT/compare.png
    plot: str = ""
    # model sizes for AR, e.g. 6x384,8x512 (empty: the training options' model)
    ar_models: str = ""
    # the same for diffusion
    diffusion_models: str = ""
    # training options for the AR runs only, e.g. "--lr=1e-3"
    ar_options: str = ""
    # training options for the diffusion runs only
    diffusion_options: str = ""
    # named option sets for AR, each its own run: "name:options|name:options"
    ar_variants: str = ""
    # the same for diffusion
    diffusion_variants: str = ""
    # lower every run's step (one for all) until the shortest run takes this many optimizer steps (0: keep it)
    min_iters: int = option(0, low=0)
    # time this many training steps of each model on this device before training (0: no measurement)
    measure_steps: int = option(0, low=0)
    # achieved TFLOP/s for the plan's time estimates when nothing is measured (0: no estimate)
    assumed_tflops: float = option(0.0, low=0)
    # refuse before training unless the plan's estimate fits in this many seconds (0: no limit)
    budget_s: float = option(0.0, low=0)
    # print the plan and stop
    plan_only: bool = False
    # stop (every run checkpointed) after this many seconds; rerun to continue (0: no budget)
    time_budget_s: float = option(0.0, low=0)
    # seconds between the status lines of the running runs
    status_every_s: float = option(30.0, above=0)


# ----------------------------------------------------------------------------- the grid

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


def variants(text, kind):
    """[(name, options)] from 'name:options|name:options' ('' gives one unnamed variant)."""
    if not text.strip():
        return [("", [])]
    found = []
    for part in text.split("|"):
        name, colon, options = part.partition(":")
        if not colon or not name.strip().isidentifier():
            raise UserError(f"--{kind}_variants: write name:options|name:options (e.g. papers:--weight_decay=0.1), "
                            f"not {part!r}")
        found.append((name.strip(), shlex.split(options)))
    return found


def make_grid(config, extra):
    """One dict per run, AR's first: its folder name, kind, setting (what its seeds share) and training options."""
    seeds = list_items("seeds", config.seeds, int) or [None]
    grid = []
    for kind in ("ar", "diffusion"):
        epochs_list = list_items(f"{kind}_epochs", getattr(config, f"{kind}_epochs"), float)
        kind_options = shlex.split(getattr(config, f"{kind}_options"))
        for model in [m for m in getattr(config, f"{kind}_models").split(",") if m] or [""]:
            for variant, variant_options in variants(getattr(config, f"{kind}_variants"), kind):
                for epochs in epochs_list:
                    name = "_".join(p for p in (kind, model, variant, f"e{epochs:g}") if p)
                    options = [f"--unique_tokens={config.unique_tokens}", f"--epochs={epochs:g}",
                               f"--eval_epochs={epochs / config.evals:g}", *extra, *kind_options,
                               *variant_options, *model_options(model)]
                    for seed in seeds:
                        grid.append(with_seed({"name": name, "kind": kind, "setting": (kind, model, variant, epochs),
                                               "options": options}, seed))
    return grid


def with_seed(run, seed):
    if seed is None:
        return dict(run, seed=None)
    return dict(run, name=f"{run['name']}_s{seed}", seed=seed, options=run["options"] + [f"--seed={seed}"])


# ----------------------------------------------------------------------------- the plan

def training_config(options):
    from config import TrainConfig
    from data import load_meta
    train = TrainConfig()
    parse_args(options, train)
    return train, load_meta(os.path.join(train.data_dir, train.dataset))


def size_runs(grid, config):
    """Each run's training config, model size and step, every run's options checked before anything runs. One batch
    rule for every run: with --min_iters, the grid's one step (windows per optimizer step) is lowered, first in
    grad_accum, then in micro-batch (memory only goes down), until the shortest run takes at least min_iters steps."""
    from model import ModelConfig, Transformer
    for run in grid:
        run["train"], run["meta"] = training_config(run["options"])
        windows = (min(config.unique_tokens, run["meta"]["train_tokens"]) - 1) // run["train"].block_size
        run["windows_total"] = math.ceil(run["setting"][-1] * windows)  # the setting ends with the epochs
    ruled = [r for r in grid if not r.get("step")]  # a run with its own "step" (a batch check) keeps it
    step = min((r["train"].batch_size * r["train"].grad_accum for r in ruled), default=1)
    if config.min_iters and ruled:
        step = max(1, min(step, min(r["windows_total"] for r in ruled) // config.min_iters))
    for run in grid:
        train, windows = run["train"], run.get("step") or step
        if windows >= train.batch_size:
            train.grad_accum = windows // train.batch_size
        else:
            train.batch_size, train.grad_accum = windows, 1
        run["options"] = run["options"] + [f"--grad_accum={train.grad_accum}", f"--batch_size={train.batch_size}"]
        with torch.device("meta"):  # sizes only: no memory, no initialisation
            net = Transformer(ModelConfig(n_vocab=run["meta"]["n_vocab"], block_size=train.block_size,
                                          n_layer=train.n_layer, n_head=train.n_head, n_embd=train.n_embd,
                                          causal=run["kind"] == "ar"))
        windows_per_step = train.batch_size * train.grad_accum
        run.update(params=net.num_params(), flops_per_token=net.flops_per_token(),
                   per_unique_token=(net.num_params() - net.embed.weight.numel()) / config.unique_tokens,
                   tokens=run["windows_total"] * train.block_size,
                   iters=math.ceil(run["windows_total"] / windows_per_step),
                   tokens_per_step=windows_per_step * train.block_size)


def batch_rule(grid, config):
    """The plan's line on the one batch rule (each run's tokens per step, and the fewest steps a run takes)."""
    ruled = [run for run in grid if not run.get("step")] or grid  # a batch check keeps its own
    steps = sorted({run["tokens_per_step"] for run in ruled})
    checks = sorted({run["tokens_per_step"] for run in grid if run.get("step")})
    shortest = min(ruled, key=lambda r: r["iters"])
    same = f"{steps[0]:,} tokens per optimizer step for every run" if len(steps) == 1 else \
        f"tokens per optimizer step differ between runs ({', '.join(f'{s:,}' for s in steps)}): give both kinds one"
    return (f"batch rule: {same}" + (f" (lowered until each run takes at least {config.min_iters} steps)"
                                     if config.min_iters else "") + f"; the shortest run, {shortest['name']}, "
            f"takes {shortest['iters']:,} steps" + (f"; batch checks at {', '.join(f'{c:,}' for c in checks)} tokens "
                                                     f"per step" if checks else ""))


def measure(kind, train, meta, steps, warmup=3):
    """(tokens/s, peak bytes on a GPU or None) of `steps` training steps of one micro-batch of this run's model
    on its device and number format, after `warmup` steps: bench/throughput.py's step, random tokens."""
    import importlib
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import throughput
    config = throughput.BenchConfig(n_layer=train.n_layer, n_head=train.n_head, n_embd=train.n_embd,
                                    n_vocab=meta["n_vocab"], block_size=train.block_size, batch_size=train.batch_size,
                                    steps=steps, warmup=warmup, device=train.device, dtype=train.dtype)
    device = pick_device(train.device)
    measured = throughput.bench(kind, importlib.import_module(f"train_{kind}"), config, device,
                                pick_dtype(device, train.dtype))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the measured model is gone: leave its memory to the runs
    return measured.tokens_per_s, measured.peak_bytes


def eval_tokens(run):
    """Forward-pass tokens of one evaluation: the val windows (K times for diffusion) and the multiple-choice items."""
    train, meta = run["train"], run["meta"]
    windows = (meta["val_tokens"] - 1) // train.block_size
    windows = min(windows, train.eval_windows) if train.eval_windows else windows
    diffusion = run["kind"] == "diffusion"
    val = windows * train.block_size * (train.elbo_samples if diffusion else 1)
    choices = train.mc_items * 4 * 64 * (train.mc_samples if diffusion else 1)  # about 64 tokens an item's choice
    return val + choices


def estimate(grid, config, rates):
    """Each run's seconds (training at its measured rate, evaluations as forward passes at three times that rate) or
    None without a rate; with --assumed_tflops the rate comes from the FLOPs."""
    for run in grid:
        rate = rates.get(shape_key(run), (None, None))[0]
        if rate is None and config.assumed_tflops:
            rate = config.assumed_tflops * 1e12 / run["flops_per_token"]
        run["rate"] = rate
        run["seconds"] = None if rate is None else \
            (run["tokens"] + (config.evals + 1) * eval_tokens(run) / 3) / rate


def shape_key(run):
    t = run["train"]
    return run["kind"], t.n_layer, t.n_head, t.n_embd, t.block_size, t.batch_size, t.dropout, t.dtype, t.device


def repeats_seconds(grid, config):
    """The repeats' cost before the winners are known: each kind's costliest setting, once per repeat seed."""
    n = len(list_items("repeat_seeds", config.repeat_seeds, int))
    if not n or any(run["seconds"] is None for run in grid):
        return 0.0
    return n * sum(max([r["seconds"] for r in grid if r["kind"] == kind] or [0.0]) for kind in ("ar", "diffusion"))


def print_plan(grid, config, peak, startup_s):
    """The plan's table and its total; with a measured or assumed rate, each run's minutes."""
    timed = all(run["seconds"] is not None for run in grid)
    left = [run for run in grid if not run_is_finished(os.path.join(config.out, run["name"]))]
    print(f"{'run':<30} {'params':>8} {'per U':>6} {'FLOPs/tok':>10} {'tokens':>12} {'FLOPs':>9} {'steps':>6} "
          f"{'tok/step':>8}" + (f" {'tok/s':>10} {'MFU':>6} {'min':>6}" if timed else ""))
    for run in left:  # a finished run is not planned again
        line = (f"{run['name']:<30} {run['params'] / 1e6:>7.2f}M {run['per_unique_token']:>6.2f} "
                f"{run['flops_per_token'] / 1e6:>9.1f}M {run['tokens']:>12,} "
                f"{run['flops_per_token'] * run['tokens']:>9.2e} {run['iters']:>6,} {run['tokens_per_step']:>8,}")
        if timed:
            mfu = f"{100 * run['rate'] * run['flops_per_token'] / peak:.0f}%" if peak else "-"
            line += f" {run['rate']:>10,.0f} {mfu:>6} {run['seconds'] / 60:>6.2f}"
        print(line)
    print("per U: non-embedding parameters per unique token (paper 1's best pair at U = 100M: AR 1.06, diffusion "
          "3.5)")
    if grid:
        print(batch_rule(grid, config))
    total_flops = sum(run["flops_per_token"] * run["tokens"] for run in left)
    done = f" ({len(grid) - len(left)} finished; what follows counts the {len(left)} left)" if len(left) < len(grid) \
        else ""
    text = f"plan: {len(grid)} runs{done}, {total_flops:.2e} training FLOPs"
    if timed:
        repeats = repeats_seconds(grid, config)
        text += (f", about {plan_seconds(left, config, startup_s) / 60:.1f} min in all: the runs counted one after "
                 f"another, evaluations included" + (f", the repeats at most {repeats / 60:.1f} min" if repeats
                                                     else "") + f", {startup_s:.0f} s to plan and start")
    print(text, flush=True)


def plan_seconds(grid, config, startup_s):
    return startup_s + sum(run["seconds"] for run in grid) + repeats_seconds(grid, config)


def check_budget(grid, config, startup_s):
    """Refuse (one line) a plan that does not fit --budget_s; the suggestion scales U, which sets every run's
    training tokens (evaluation stays)."""
    if not config.budget_s or any(run["seconds"] is None for run in grid):
        return
    train_s = sum(run["tokens"] / run["rate"] for run in grid)
    total = plan_seconds(grid, config, startup_s)
    if total <= config.budget_s:
        return
    scale = 1 + repeats_seconds(grid, config) / max(sum(run["seconds"] for run in grid), 1e-9)
    room = config.budget_s - startup_s - (sum(run["seconds"] for run in grid) - train_s) * scale
    fit = int(float(f"{0.9 * config.unique_tokens * max(room, 0) / (train_s * scale):.2g}"))  # 10% to spare
    hint = f"--unique_tokens={fit} would" if fit > 0 else "no unique-token budget does: use fewer runs that"
    raise UserError(f"the plan needs about {total / 60:.1f} min but the budget is {config.budget_s / 60:.1f} min: "
                    f"{hint} fit (or drop sizes, variants or epoch counts)")


def auto_jobs(grid, peaks):
    """How many runs fit in the GPU's memory at once: the largest runs' measured peaks plus ~1 GB each for the
    process's CUDA context, within 90% of the card."""
    total = torch.cuda.get_device_properties(0).total_memory
    needs = sorted((peaks[shape_key(run)] + 1.0e9 for run in grid), reverse=True)
    jobs, used = 0, 0.0
    for need in needs:
        if used + need > 0.9 * total:
            break
        jobs, used = jobs + 1, used + need
    return max(jobs, 1)


def plan(grid, config):
    """Size, time and print the grid; with --measure_steps, measure each model on this device. Returns the jobs to
    run at once."""
    size_runs(grid, config)
    rates, peak_flops_s = {}, None
    t0 = time.time()
    if config.measure_steps:
        for run in grid:
            if shape_key(run) not in rates:
                rates[shape_key(run)] = measure(run["kind"], run["train"], run["meta"], config.measure_steps)
        device = pick_device(grid[0]["train"].device) if grid else torch.device("cpu")
        peak_flops_s = peak_flops(device)
        print(f"measured {len(rates)} model(s) on {device_name(device)} in {time.time() - t0:.0f}s "
              f"({config.measure_steps} steps each, eager)")
    estimate(grid, config, rates)
    startup_s = time.time() - t0 + 20  # measuring, and ~20 s for the runs' processes to start
    print_plan(grid, config, peak_flops_s, startup_s)
    check_budget(grid, config, startup_s)
    if config.jobs:
        return config.jobs
    peaks = {key: peak for key, (_, peak) in rates.items()}
    if grid and all(peaks.get(shape_key(run)) is not None for run in grid):  # every model measured on a GPU
        return auto_jobs(grid, peaks)
    return 1


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type}"


# ----------------------------------------------------------------------------- running

def run_is_finished(folder):
    try:
        records = compare.read_log(folder)
    except ValueError:
        return False
    return os.path.exists(os.path.join(folder, "ckpt.pt")) and records[-1].get("done", False)


def last_progress(folder):
    """The run's last progress or evaluation line (from its stdout.txt), for the status lines."""
    try:
        with open(os.path.join(folder, "stdout.txt"), "rb") as f:
            f.seek(max(os.path.getsize(f.name) - 4096, 0))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "starting"
    found = [line for line in lines if line.startswith(("iter ", "eval iter", "done"))]
    return found[-1] if found else "starting"


def status_line(folder, t_start):
    return f"[{fmt_time(time.time() - t_start)}] {os.path.basename(folder)}: {last_progress(folder)}"


def failure_tail(folder, n=5):
    try:
        with open(os.path.join(folder, "stdout.txt"), encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no output)"


def train_all(runs, config, jobs, t_start):
    """Run every unfinished run, `jobs` at a time, longest first; a status line per running run every
    status_every_s seconds; a failed run shows its last lines and the others go on. Returns the failed folders."""
    threads = str(config.threads or max((os.cpu_count() or 1) // jobs, 1))
    pending = []
    for run in sorted(runs, key=lambda r: -(r.get("seconds") or 0)):
        folder = os.path.join(config.out, run["name"])
        if run_is_finished(folder):
            print(f"{folder}: finished, skipped")
            continue
        resume = os.path.exists(os.path.join(folder, "ckpt.pt"))
        # a resumed run keeps its saved options; the stop is always given (it too would be kept)
        cmd = [sys.executable, os.path.join(ROOT, f"train_{run['kind']}.py"), f"--out_dir={folder}",
               *(["--resume"] if resume else ["--overwrite", *run["options"]])]
        pending.append((folder, cmd))
    running, failed, last_status = [], [], time.time()
    try:
        while pending or running:
            left = config.time_budget_s - (time.time() - t_start)
            while pending and len(running) < jobs and (not config.time_budget_s or left > 0):
                folder, cmd = pending.pop(0)
                cmd = cmd + [f"--stop_after_s={max(left, 0.01):.2f}" if config.time_budget_s else "--stop_after_s=0"]
                os.makedirs(folder, exist_ok=True)
                print("running:", " ".join(cmd[1:]), flush=True)
                holder = lock_holder(os.path.join(folder, LOCK_FILE))
                if holder is not None:  # a run left by a sweep killed before (or started by hand) is still at work
                    print(f"skipped {folder}: it is in use by process {holder['pid']} on {holder['host']}; run this "
                          f"command again once that process has ended", flush=True)
                    continue
                with open(os.path.join(folder, "stdout.txt"), "a") as log:
                    # its own session: a Ctrl-C at the terminal reaches the sweep only, which then stops every run
                    running.append((folder, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                             env=dict(os.environ, OMP_NUM_THREADS=threads),
                                                             start_new_session=True, preexec_fn=child_setup)))
            if not running:
                break
            time.sleep(0.2)
            for folder, proc in [r for r in running if r[1].poll() is not None]:
                running.remove((folder, proc))
                if proc.returncode != 0:
                    failed.append(folder)
                    print(f"FAILED {folder} (exit {proc.returncode}):\n{failure_tail(folder)}", flush=True)
                else:
                    print(status_line(folder, t_start), flush=True)
            if running and time.time() - last_status >= config.status_every_s:
                for folder, _ in running:
                    print(status_line(folder, t_start))
                sys.stdout.flush()
                last_status = time.time()
    finally:  # an interrupted or terminated sweep leaves no training process behind
        for _, proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return failed


def child_setup():
    """In a run's process, before it starts: Ctrl-C's default back (a sweep started with SIGINT ignored, as `nohup`
    or `cmd &` do, would pass that on, and the sweep stops its runs with SIGINT), and on Linux a SIGINT when the
    sweep dies, even by SIGKILL, so that no run trains on without it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same way out as Ctrl-C: every run is stopped first


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if __name__ == "__main__":
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    split = argv.index("--") if "--" in argv else len(argv)
    config = SweepConfig()
    parse_args(argv[:split], config, doc=__doc__)
    if config.plot:
        check_plot_path("plot", config.plot)
    t_start = time.time()
    trained = train_grid(config, argv[split + 1:])
    if trained is None:
        return None
    runs, winners = trained
    plot = config.plot or os.path.join(config.out, "compare.png")
    rows = compare.main(run_folders(config, runs) + [f"--plot={plot}", "--xscale=log"])
    print(verdict(rows, {r["name"]: r["setting"] for r in runs}, winners))
    print(f"sweep done in {fmt_time(time.time() - t_start)}")
    return rows


def run_folders(config, runs):
    return [os.path.join(config.out, r["name"]) for r in runs]


def train_grid(config, extra, more=()):
    """Plan the grid and the runs in `more` (run dicts as make_grid's), train every run (and with --repeat_seeds
    each kind's winner again); returns (runs, the repeated winners or None) once every run has finished, None after
    a plan only or a spent time budget."""
    list_items("repeat_seeds", config.repeat_seeds, int)
    t_plan = time.time()
    grid = make_grid(config, extra) + [dict(run) for run in more]
    jobs = plan(grid, config)
    if config.plan_only:
        return None
    t_start = time.time()  # --time_budget_s counts from here: training, not planning
    if config.budget_s:  # what the plan left of --budget_s is a stop too, less ~15 s for the last evaluations,
        # saves and the table
        left = max(config.budget_s - (t_start - t_plan) - 15, 0.01)
        config.time_budget_s = min(config.time_budget_s or left, left)
    print(f"training {len(grid)} runs, {jobs} at a time", flush=True)
    failed = train_all(grid, config, jobs, t_start)
    runs, winners = list(grid), None
    if not failed and all(map(run_is_finished, run_folders(config, runs))) and config.repeat_seeds:
        setting_of = {r["name"]: r["setting"] for r in runs}
        rows = [compare.summarize(f) for f in run_folders(config, runs)]
        winners = {k: b["setting"] for k, b in kind_bests(rows, setting_of).items()}
        repeats = [with_seed(r, seed) for r in grid if r["setting"] in winners.values()
                   for seed in list_items("repeat_seeds", config.repeat_seeds, int)]
        print(f"repeating each kind's best setting with seeds {config.repeat_seeds}: "
              + ", ".join(r["name"] for r in repeats), flush=True)
        runs += repeats
        failed = train_all(repeats, config, jobs, t_start)
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)} (their output is in stdout.txt there)")
    unfinished = [f for f in run_folders(config, runs) if not run_is_finished(f)]
    if unfinished:
        print(f"time budget spent ({config.time_budget_s:g}s): {len(unfinished)} run(s) not finished; run the same "
              f"command again to continue them")
        return None
    return runs, winners


def kind_bests(rows, setting_of, chosen=None):
    """Each kind's best setting: the lowest mean over its seeds of each run's own best score (row["score"], else
    its best validation loss). With `chosen` ({kind: setting}: the grid's winners that --repeat_seeds ran again),
    each kind is that setting, over all its seeds: a setting with one lucky seed does not beat the winner's honest
    mean. Returns {kind: {mean, std, n, setting, epochs, best_epoch, params, label, run, edges}}."""
    groups = {}
    for r in rows:
        groups.setdefault(setting_of[r["run"]], []).append(r)
    best = {}
    for setting, runs in groups.items():
        kind = setting[0]
        if chosen and setting != chosen.get(kind, setting):
            continue
        vals = [r.get("score", r["best_val"]) for r in runs]
        mean = sum(vals) / len(vals)
        if kind not in best or mean < best[kind]["mean"]:
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            best[kind] = {"mean": mean, "std": std, "n": len(vals), "setting": setting, "epochs": float(setting[-1]),
                          "best_epoch": sum(r["best_epoch"] for r in runs) / len(runs), "params": runs[0].get("params"),
                          "label": " ".join(str(p) for p in setting[1:-1] if p), "run": runs[0]["run"]}
    for kind, b in best.items():
        b["edges"] = grid_edges(b, [r for r in rows if r["kind"] == kind], setting_of)
    return best


def grid_edges(best, kind_rows, setting_of):
    """Where a kind's best setting sits at an edge of its grid: its smallest or largest model, its fewest or most
    epochs. Such a best is no frontier point (paper 1): a wider grid may hold a better one."""
    sizes = sorted({r.get("params") for r in kind_rows if r.get("params") is not None})
    epochs = sorted({float(setting_of[r["run"]][-1]) for r in kind_rows})
    edges = []
    if sizes and best["params"] is not None:
        edges += ["one size only"] if len(sizes) == 1 else ["smallest size"] if best["params"] == sizes[0] else \
            ["largest size"] if best["params"] == sizes[-1] else []
    edges += ["one epoch count only"] if len(epochs) == 1 else ["fewest epochs"] if best["epochs"] == epochs[0] else \
        ["most epochs"] if best["epochs"] == epochs[-1] else []
    return edges


def describe_best(name, b):
    """One kind's best setting in words: its number, its epoch and where that sat in its schedule, its edges."""
    spread = f" +- {b['std']:.4f} (std over {b['n']} seeds)" if b["n"] > 1 else ""
    label = f" ({b['label']})" if b["label"] else ""
    edges = f" [not bracketed: {', '.join(b['edges'])} of its grid; widen the grid]" if b["edges"] else ""
    return (f"best {name}{label} {b['mean']:.4f}{spread} at epoch {b['best_epoch']:.1f} of {b['epochs']:g}-epoch "
            f"runs ({100 * b['best_epoch'] / b['epochs']:.0f}% of its schedule){edges}")


def verdict(rows, setting_of, chosen=None):
    """Each kind's best setting (kind_bests), flagged where it is not bracketed, and the margin between the kinds."""
    best = kind_bests(rows, setting_of, chosen)
    if "ar" not in best or "diffusion" not in best:
        return "one kind only: no verdict"
    margin = best["ar"]["mean"] - best["diffusion"]["mean"]
    winner = "diffusion" if margin > 0 else "AR"
    return (f"{describe_best('AR', best['ar'])} | {describe_best('diffusion', best['diffusion'])} | "
            f"{winner} lower by {abs(margin):.4f} nats/token")


if __name__ == "__main__":
    run_cli(main)

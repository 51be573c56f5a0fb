"""
Paper 1's comparison at one unique-token budget U, in one command: both kinds at model sizes set by non-embedding
parameters per unique token, every (kind, size, epoch count) its own run with its own schedule, one batch rule for
all; then every run's best checkpoint scored again at a large K on many validation windows, each kind taken at its
best setting, and a downstream test on held-out items, scored paired.

    python experiments/protocol.py --unique_tokens=300000 --out=out/protocol -- \
        --data_dir=data --dataset=python_bpe8192 --block_size=512 --dropout=0.1
    python experiments/gap_vs_u.py out/protocol          # the gap at every U done so far, and its plot

Options before `--` are experiments/sweep.py's (jobs, budgets, variants, seeds, --min_iters, ...) and the ones
below; everything after `--` goes to every training run. The runs go to OUT/u<U>/, the verdict to
OUT/u<U>/verdict.json; the same command continues an interrupted U, and scores already computed are kept
(OUT/u<U>/scores.json).

The sizes: `--ar_per_token=0.5,4,35` asks for models of about 0.5, 4 and 35 non-embedding parameters per unique
token, each the nearest shape of a fixed ladder (layers about width / 64); the plan prints what each got.
`--ar_models=...` replaces them with the sizes given. Paper 1's best pair at U = 100M had AR at 1.06 and diffusion
at 3.5 per unique token.

The stages, each a set of runs of its own: the grid; with --bracket_rounds, the setting past each edge where a
kind's best sits, round by round, up to the caps; with --check_*, each kind's best again with its batch, lr or
weight decay changed; with --repeat_seeds, each kind's final best again with each seed.

The verdict: a setting's number is its own run's best checkpoint (best.pt) scored at K = --rescore_samples on
--rescore_windows validation windows (AR: its exact NLL on those windows), averaged over its seeds; each kind's best
setting is flagged where it sits at an edge of its grid. The downstream test: --test_items items (0: every
non-overlapping one) from the val files that no run's per-evaluation items came from (downstream.split_files),
scored once by each kind's checkpoint chosen by a rule fixed in advance: its best validation loss (best.pt of the
best setting) and, reported apart, its best accuracy on the selection items (best_choice.pt of the run that scored
highest); the paired difference, clustered by file. The rules, the items and the scoring are written to
OUT/u<U>/preregistered.json at the first start and cannot be changed after it. OUT/u<U>/frontier.png: loss against
training FLOPs, each kind's envelope (experiments/frontier.py).
"""
import dataclasses
import json
import math
import os
import signal
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import compare  # noqa: E402
import downstream  # noqa: E402
import evaluate  # noqa: E402
import frontier  # noqa: E402
import sweep  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import NUMBER, check_plot_path, list_items, shape_mismatch, parse_checked as parse_args  # noqa: E402
from lab.checks import checked_tokens, load_run_data  # noqa: E402
from lab.folders import replace_whole  # noqa: E402
from runtime import load_checkpoint  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402


@dataclass
class ProtocolConfig(sweep.SweepConfig):  # every sweep option, these defaults, and the protocol's own
    out: str = "out/protocol"
    ar_epochs: str = option("4,10,25", items=float, above=0)
    diffusion_epochs: str = option("50,150,400", items=float, above=0)
    # model sizes in non-embedding parameters per unique token ('' or --ar_models: the sizes given)
    ar_per_token: str = option("0.5,4,35", items=float, above=0)
    diffusion_per_token: str = option("1,3,10", items=float, above=0)
    # the final scores: K of diffusion's ELBO and the validation windows every run's best.pt is scored on
    rescore_samples: int = option(128, low=1)
    rescore_windows: int = option(256, low=1)
    # the downstream test: items from the held-out val files (0: every non-overlapping one), diffusion's K, and which
    # items; fixed in OUT/u<U>/preregistered.json at the first start, before any winner is known
    test_items: int = option(2500, low=0)
    test_samples: int = option(32, low=1)
    test_seed: int = option(0, low=0)
    # bracketing: after the grid, while a kind's best sits at an edge, add the setting past it (the next ladder shape,
    # 2.5x the epochs), at most this many rounds, up to these caps (the most epochs, each kind's widest model)
    bracket_rounds: int = option(0, low=0)
    bracket_max_epochs: float = option(2000.0, above=0)
    ar_max_width: int = option(1280, low=32)
    diffusion_max_width: int = option(1280, low=32)
    # checks at each kind's best once bracketed, each its own run: windows per optimizer step, lr (and min lr) times
    # each factor, and weight decays
    check_batch_sizes: str = option("", items=int, low=1)
    check_lr_factors: str = option("", items=float, above=0)
    ar_check_weight_decays: str = option("", items=float, low=0)
    diffusion_check_weight_decays: str = option("", items=float, low=0)


# ----------------------------------------------------------------------------- sizes by parameters per token

LADDER_WIDTHS = (32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1280)


def shape(width):
    """(layers, width, heads) of the ladder's model at this width: about width / 64 layers (at least 2), heads of
    64 channels (32 below width 128)."""
    return max(2, round(width / 64)), width, width // 64 if width >= 128 else width // 32


def non_embedding_params(layers, width):
    """Attention (4 d^2), SwiGLU (3 d h) and two gains a layer, and the final gain (model.py)."""
    hidden = (int(8 * width / 3) + 31) // 32 * 32
    return layers * (4 * width * width + 3 * width * hidden + 2 * width) + width


def model_for(per_token, unique_tokens):
    """The ladder's shape nearest (in log) to per_token x unique_tokens non-embedding parameters, as 'LxWxH'."""
    target = per_token * unique_tokens
    layers, width, heads = min((shape(w) for w in LADDER_WIDTHS),
                               key=lambda s: abs(math.log(non_embedding_params(*s[:2]) / target)))
    return f"{layers}x{width}x{heads}"


def sized_models(config):
    """Each kind's --<kind>_models from its per-token targets, unless sizes were given."""
    for kind in ("ar", "diffusion"):
        if not getattr(config, f"{kind}_models"):
            targets = list_items(f"{kind}_per_token", getattr(config, f"{kind}_per_token"), float)
            if not targets:
                raise UserError(f"give --{kind}_per_token or --{kind}_models: the {kind} grid has no size")
            models = list(dict.fromkeys(model_for(t, config.unique_tokens) for t in targets))
            setattr(config, f"{kind}_models", ",".join(models))


# ----------------------------------------------------------------------------- bracketing each kind's best

EPOCH_STEP = 2.5  # a setting past an epoch edge: 2.5x the most epochs, or the fewest / 2.5


def bracket_next(best, config):
    """({kind: {"models": [...], "epochs": [...]}} to add, {kind: "bracketed" or what stopped it}): for each edge a
    kind's best sits at, the next setting past it, unless a cap stops it. A shorter run under --min_iters would
    lower every run's batch (one batch rule), so that edge is left to the user."""
    additions, status = {}, {}
    for kind, b in best.items():
        add, stops = {"models": [], "epochs": []}, []
        models = [m for m in getattr(config, f"{kind}_models").split(",") if m]
        epochs = list_items(f"{kind}_epochs", getattr(config, f"{kind}_epochs"), float)
        widths = sorted(int(m.split("x")[1]) for m in models)
        for edge in b["edges"]:
            if edge in ("largest size", "one size only"):
                cap = getattr(config, f"{kind}_max_width")
                wider = [w for w in LADDER_WIDTHS if w > widths[-1] and w <= cap]
                add["models"] += [f"{'x'.join(map(str, shape(wider[0])))}"] if wider else []
                stops += [] if wider else [f"largest size (the cap, --{kind}_max_width={cap})"]
            if edge in ("smallest size", "one size only"):
                narrower = [w for w in LADDER_WIDTHS if w < widths[0]]
                add["models"] += [f"{'x'.join(map(str, shape(narrower[-1])))}"] if narrower else []
                stops += [] if narrower else ["smallest size (the ladder's smallest shape)"]
            if edge in ("most epochs", "one epoch count only"):
                longer = round(max(epochs) * EPOCH_STEP)
                add["epochs"] += [longer] if longer <= config.bracket_max_epochs else []
                stops += [] if longer <= config.bracket_max_epochs else \
                    [f"most epochs (the cap, {config.bracket_max_epochs:g})"]
            if edge == "fewest epochs":
                shorter = round(min(epochs) / EPOCH_STEP, 2)
                allowed = shorter >= 1 and not config.min_iters
                add["epochs"] += [shorter] if allowed else []
                stops += [] if allowed else ["fewest epochs (" + ("one epoch" if shorter < 1 else "a shorter run would "
                                             "lower every run's batch under --min_iters: extend it by hand") + ")"]
        if add["models"] or add["epochs"]:
            additions[kind] = add
        status[kind] = "bracketed" if not b["edges"] else "; ".join(stops) if stops and kind not in additions \
            else "at an edge: " + ", ".join(b["edges"])
    return additions, status


def widen(config, additions):
    """The grid with the additions: new shapes and epoch counts in each kind's lists (finished runs are kept)."""
    for kind, add in additions.items():
        for key, new in (("models", add["models"]), ("epochs", [f"{e:g}" for e in add["epochs"]])):
            old = [x for x in getattr(config, f"{kind}_{key}").split(",") if x]
            setattr(config, f"{kind}_{key}", ",".join(dict.fromkeys(old + new)))


# ----------------------------------------------------------------------------- checks and seeds at the bests

def check_runs(config, extra, best):
    """Each kind's best setting again with one thing changed, each its own run (OUT/<kind>_<model>_<check>_e<epochs>):
    its batch (windows per optimizer step, outside the grid's one batch rule), its lr x each factor, its weight
    decay. Returns run dicts as sweep.make_grid's; a run whose setting equals the best's is left out."""
    grid = {r["name"]: r for r in sweep.make_grid(config, extra)}
    runs = []
    for kind, b in best.items():
        base = grid[b["run"]]
        train, _ = sweep.training_config(base["options"])
        _, model, variant, epochs = base["setting"]
        checks = [(f"b{n}", [], n) for n in list_items("check_batch_sizes", config.check_batch_sizes, int)]
        checks += [(f"lr{f:g}x", [f"--lr={train.lr * f:g}"], None)
                   for f in list_items("check_lr_factors", config.check_lr_factors, float) if f != 1]
        checks += [(f"wd{wd:g}", [f"--weight_decay={wd:g}"], None) for wd in list_items(
            f"{kind}_check_weight_decays", getattr(config, f"{kind}_check_weight_decays"), float)
            if wd != train.weight_decay]
        for tag, options, step in checks:
            tag = "_".join(p for p in (variant, tag) if p)
            runs.append({"name": "_".join(p for p in (kind, model, tag, f"e{epochs:g}") if p), "kind": kind,
                         "setting": (kind, model, tag, epochs), "options": base["options"] + options, "seed": None,
                         **({"step": step} if step else {})})
    step = grid_step(config, extra)
    return [r for r in runs if r.get("step") != step]


def grid_step(config, extra):
    """The windows per optimizer step that the grid's one batch rule gives every grid run."""
    grid = sweep.make_grid(config, extra)
    sweep.size_runs(grid, config)
    return grid[0]["train"].batch_size * grid[0]["train"].grad_accum


def seed_runs(runs, best, seeds):
    """Each kind's best setting again with each seed: run dicts, OUT/<its run>_s<seed>."""
    settings = {b["setting"] for b in best.values()}
    return [sweep.with_seed(r, seed) for r in runs
            if r["setting"] in settings and r.get("seed") is None for seed in seeds]


# ----------------------------------------------------------------------------- the pre-registered test

PREREGISTERED = ("test_items", "test_samples", "test_seed", "rescore_samples", "rescore_windows")
RULES = ["best validation loss: best.pt of each kind's best setting (its first seed)",
         "best selection-item accuracy: best_choice.pt of each kind's run that peaked highest on the selection items"]


def preregister(config):
    """OUT/u<U>/preregistered.json: the downstream test's rules and items and the scoring, written at the first start,
    before any run has trained; a later start that asks for other values is refused, so that nothing is chosen after
    the winners are known."""
    path = os.path.join(config.out, "preregistered.json")
    wanted = {"rules": RULES, **{key: getattr(config, key) for key in PREREGISTERED}}
    if os.path.exists(path):
        try:
            with open(path) as f:
                recorded = json.load(f)
        except ValueError:
            raise UserError(f"{path} is damaged (not JSON): the pre-registered rules cannot be read; restore it or "
                            f"start a new --out") from None
        changed = [f"--{key}={recorded.get(key)} (asked: {wanted[key]})" for key in PREREGISTERED
                   if recorded.get(key) != wanted[key]]
        if changed or recorded.get("rules") != RULES:
            raise UserError(f"the downstream test was pre-registered in {path} with " + (", ".join(changed) or
                            "other rules") + ": it is fixed before the winners are known; run with the recorded "
                            "values, or start a new --out")
        return recorded
    known = [name for name in ("scores.json", "verdict.json") if os.path.exists(os.path.join(config.out, name))]
    if known:
        raise UserError(f"{config.out} already holds {known[0]} but no preregistered.json: its winners may be known, "
                        f"so its test can no longer be pre-registered; start a new --out")
    os.makedirs(config.out, exist_ok=True)
    write_json(wanted, path)
    return wanted


# ----------------------------------------------------------------------------- scores, kept once computed

class Scores:
    """OUT/u<U>/scores.json: every score computed, by what it is, written whole after each one."""

    def __init__(self, path):
        self.path, self.values = path, {}
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    self.values = json.load(f)
            except ValueError:
                raise UserError(f"{path} is damaged (not JSON): remove it, and the scores are computed again") \
                    from None
            problem = scores_problem(self.values)
            if problem:
                raise UserError(f"{path} is not this protocol's scores ({problem}): remove it, and the scores are "
                                f"computed again")

    def get(self, key, compute):
        if key not in self.values:
            self.values[key] = compute()
            write_json(self.values, self.path)
        return self.values[key]


def scores_problem(values):
    """What is wrong with scores.json's content, or None: {key: a loss score, or a test's answers as 0/1 text}."""
    if not isinstance(values, dict):
        return "not a JSON object"
    for key, value in values.items():
        if isinstance(value, str):
            if set(value) <= {"0", "1"}:
                continue
            return f"'{key}' is text that is not a test's 0/1 answers"
        problem = shape_mismatch(value, {"loss": NUMBER, "windows": int}, f"'{key}'")
        if problem:
            return problem
    return None


def write_json(obj, path):
    """Written whole (folders.replace_whole): a failed write (a full disk) leaves the previous file and no temporary."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    replace_whole(path, write)


def checkpoint_id(path):
    """A checkpoint file by its run, name and write time: a run trained again is scored again."""
    return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}@{os.stat(path).st_mtime_ns}"


def rescore(rows, folder, config, scores, device):
    """Each row's score: its best.pt at K = rescore_samples on rescore_windows validation windows."""
    for r in rows:
        path = os.path.join(folder, r["run"], "best.pt")
        key = f"{checkpoint_id(path)} val K={config.rescore_samples} windows={config.rescore_windows}"

        def compute():
            ckpt, train, _, val_tokens, model = evaluate.loaded(path, device)
            scoring = dataclasses.replace(train, eval_windows=config.rescore_windows,
                                          elbo_samples=config.rescore_samples)
            loss, n = evaluate.val_score(ckpt, model, val_tokens, scoring)
            print(f"  rescored {r['run']}: {loss:.4f} ({n} windows; logged best {r['best_val']:.4f})", flush=True)
            return {"loss": loss, "windows": n}
        found = scores.get(key, compute)
        r["score"], r["score_windows"] = found["loss"], found["windows"]


def test_items(folder, run, config):
    """The held-out test items (the same for every run of the U: its data and block size are the grid's)."""
    train, data_dir, meta = load_run_data(load_checkpoint(os.path.join(folder, run, "best.pt")))
    val_tokens = checked_tokens(data_dir, "val", meta)  # the data only: no model is built for it
    lengths = downstream.item_lengths(meta, train.block_size)
    items = downstream.build_items(val_tokens, config.test_items, *lengths, seed=config.test_seed,
                                   files=downstream.item_set(val_tokens, meta, "test"))
    return items, lengths


def test_correct(folder, run, file, items, config, scores, device):
    """A bool per test item for one checkpoint (diffusion at K = test_samples)."""
    key = (f"{checkpoint_id(os.path.join(folder, run, file))} test items={config.test_items} seed={config.test_seed} "
           f"K={config.test_samples}")

    def compute():
        ckpt, train, _, _, model = evaluate.loaded(os.path.join(folder, run, file), device)
        correct = evaluate.choice_correct(ckpt, model, items, config.test_samples, train.eval_batch_size,
                                          train.eval_seed)
        print(f"  test items, {run}/{file}: accuracy {correct.double().mean():.3f}", flush=True)
        return "".join("1" if c else "0" for c in correct.tolist())
    return np.array([c == "1" for c in scores.get(key, compute)])


def chosen_checkpoints(rows, best):
    """{rule: {kind: (run, file)}}: best.pt of each kind's best setting (its first seed), and best_choice.pt of
    the kind's run whose selection-item accuracy peaked highest (where the runs scored items)."""
    rules = {"best validation loss": {kind: (b["run"], "best.pt") for kind, b in best.items()}}
    top = {}
    for r in rows:
        if r["best_acc"] is not None and (r["kind"] not in top or r["best_acc"] > top[r["kind"]]["best_acc"]):
            top[r["kind"]] = r
    if len(top) == 2:
        rules["best selection-item accuracy"] = {kind: (r["run"], "best_choice.pt") for kind, r in top.items()}
    return rules


def downstream_test(rows, best, folder, config, scores, device):
    """Per rule: each kind's test accuracy and the paired difference AR - diffusion with its standard error."""
    items, lengths = test_items(folder, best["ar"]["run"], config)
    results = []
    for rule, picks in chosen_checkpoints(rows, best).items():
        correct = {kind: test_correct(folder, run, file, items, config, scores, device)
                   for kind, (run, file) in picks.items()}
        difference, se = downstream.paired_difference(correct["ar"], correct["diffusion"], items.files.numpy())
        results.append({"rule": rule, "items": len(items.answers), "files": int(len(np.unique(items.files))),
                        "lengths": list(lengths), "diffusion_samples": config.test_samples,
                        "ar": {"checkpoint": "/".join(picks["ar"]), "accuracy": float(correct["ar"].mean())},
                        "diffusion": {"checkpoint": "/".join(picks["diffusion"]),
                                      "accuracy": float(correct["diffusion"].mean())},
                        "ar_minus_diffusion": difference, "se": se})
    return results


# ----------------------------------------------------------------------------- the verdict of one U

def critical_flops(unique_tokens):
    """Paper 1's fit: C_crit(U) = 2.12e15 x U^2.174 FLOPs, U in millions, past which diffusion's best loss is lower."""
    return 2.12e15 * (unique_tokens / 1e6) ** 2.174


def verdict_of(rows, best, runs, config, tests):
    """verdict.json's content: each kind's best setting, the relative gap, the compute against C_crit, the tests."""
    by_name = {r["name"]: r for r in runs}
    kinds = {}
    for kind, b in best.items():
        run = by_name[b["run"]]
        kinds[kind] = {"run": b["run"], "setting": b["label"], "epochs": b["epochs"], "best_epoch": b["best_epoch"],
                       "schedule_fraction": b["best_epoch"] / b["epochs"], "score": b["mean"], "std": b["std"],
                       "seeds": b["n"], "edges": b["edges"], "params": run["params"],
                       "per_unique_token": run["per_unique_token"], "flops": run["flops_per_token"] * run["tokens"]}
    settings = []
    for r in rows:  # every run's own number, for the table and the frontier plot
        run = by_name[r["run"]]
        settings.append({"run": r["run"], "kind": r["kind"], "setting": " ".join(p for p in run["setting"][1:-1] if p),
                         "epochs": run["setting"][-1], "best_epoch": r["best_epoch"], "score": r["score"],
                         "flops_per_token": run["flops_per_token"], "flops": run["flops_per_token"] * run["tokens"]})
    c_crit = critical_flops(config.unique_tokens)
    flops = kinds["diffusion"]["flops"]
    return {"unique_tokens": config.unique_tokens, "tokenizer": rows[0]["tokenizer"],
            "rescore_samples": config.rescore_samples, "rescore_windows": rows[0]["score_windows"],
            "tokens_per_step": sorted({r["tokens_per_step"] for r in runs}), "kinds": kinds,
            "gap": (kinds["diffusion"]["score"] - kinds["ar"]["score"]) / kinds["ar"]["score"],
            "c_crit": c_crit, "flops_over_c_crit": flops / c_crit,
            "paper1_predicts": "diffusion lower" if flops > c_crit else "AR lower", "downstream": tests,
            "runs": settings}


def verdict_lines(v, best):
    lines = [f"U = {v['unique_tokens']:,} ({v['tokenizer']}): each run's best.pt scored at K = {v['rescore_samples']} "
             f"on {v['rescore_windows']} validation windows"]
    for kind, name in (("ar", "AR"), ("diffusion", "diffusion")):
        k = v["kinds"][kind]
        lines.append(f"  {sweep.describe_best(name, best[kind])}; {k['per_unique_token']:.2f} non-embedding "
                     f"parameters per unique token, {k['flops']:.2e} training FLOPs; "
                     f"{v.get('bracketing', {}).get(kind, 'bracketing not asked')}")
    gap = v["gap"]
    lines.append(f"  gap (L_diffusion - L_AR) / L_AR = {100 * gap:+.2f}%: {'diffusion' if gap < 0 else 'AR'} lower; "
                 f"diffusion's compute is {v['flops_over_c_crit']:.3g} x paper 1's C_crit(U) = {v['c_crit']:.2e}, "
                 f"where paper 1 predicts {v['paper1_predicts']}")
    for t in v["downstream"]:
        d, se = t["ar_minus_diffusion"], t["se"]
        lines.append(f"  downstream, chosen by {t['rule']}: AR {t['ar']['accuracy']:.3f} ({t['ar']['checkpoint']}), "
                     f"diffusion {t['diffusion']['accuracy']:.3f} ({t['diffusion']['checkpoint']}); AR - diffusion "
                     f"= {d:+.3f} +- {se:.3f} (paired, clustered by file; {t['items']} held-out items from "
                     f"{t['files']} files, diffusion at K = {t['diffusion_samples']})")
    return lines


def grid_bests(config, extra, more=(), chosen=None):
    """Train the grid and the runs in `more` (finished runs are kept), re-score every run's best.pt and find each
    kind's best setting (with `chosen`, {kind: setting}, that setting over its seeds): (runs, rows, best), or None
    after a plan only or a spent time budget."""
    finished = all(sweep.run_is_finished(os.path.join(config.out, r["name"]))
                   for r in sweep.make_grid(config, extra) + list(more))
    plan_only, config.plan_only = config.plan_only, config.plan_only and not finished  # a finished stage is scored
    try:
        trained = sweep.train_grid(config, extra, more)
    finally:
        config.plan_only = plan_only
    if trained is None:
        return None
    runs, _ = trained
    folders = sweep.run_folders(config, runs)
    rows = compare.main(folders + [f"--plot={config.plot or os.path.join(config.out, 'compare.png')}", "--xscale=log"])
    setting_of = {r["name"]: r["setting"] for r in runs}
    scores, device = Scores(os.path.join(config.out, "scores.json")), pick_device(runs[0]["train"].device)
    print(f"scoring every run's best.pt at K = {config.rescore_samples} on {config.rescore_windows} windows",
          flush=True)
    with torch.no_grad():
        rescore(rows, config.out, config, scores, device)
    best = sweep.kind_bests(rows, setting_of, chosen)
    if "ar" not in best or "diffusion" not in best:
        raise UserError("the protocol compares two kinds: give both an epoch count")
    return runs, rows, best


def bracketed_bests(config, extra):
    """The grid, widened round by round while a kind's best sits at an edge: (runs, rows, best, {kind: bracketing})
    or None."""
    for round_ in range(config.bracket_rounds + 1):
        found = grid_bests(config, extra)
        if found is None:
            return None
        additions, bracketing = bracket_next(found[-1], config)
        if not additions or round_ == config.bracket_rounds:
            break
        widen(config, additions)
        print(f"bracketing, round {round_ + 1}: adding " + "; ".join(
            f"{kind} {', '.join(add['models'] + [f'{e:g} epochs' for e in add['epochs']])}"
            for kind, add in additions.items()), flush=True)
    for kind in additions:
        bracketing[kind] = f"stopped by --bracket_rounds={config.bracket_rounds}; {bracketing[kind]}"
    return (*found, bracketing)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if __name__ == "__main__":
        signal.signal(signal.SIGTERM, sweep.stop_on_sigterm)
    split = argv.index("--") if "--" in argv else len(argv)
    config = ProtocolConfig()
    parse_args(argv[:split], config, doc=__doc__)
    if not list_items("ar_epochs", config.ar_epochs, float) or not list_items("diffusion_epochs",
                                                                             config.diffusion_epochs, float):
        raise UserError("the protocol compares two kinds: give both --ar_epochs and --diffusion_epochs")
    if config.plot:
        check_plot_path("plot", config.plot)
    sized_models(config)
    root, config.out = config.out, os.path.join(config.out, f"u{config.unique_tokens}")
    print(f"U = {config.unique_tokens:,}: AR models {config.ar_models}, diffusion models {config.diffusion_models}; "
          f"runs in {config.out}", flush=True)
    extra, seeds = argv[split + 1:], list_items("repeat_seeds", config.repeat_seeds, int)
    config.repeat_seeds = ""  # the protocol repeats each kind's final best itself, after the checks
    if not config.plan_only:
        sweep.size_runs(sweep.make_grid(config, extra), config)  # every run's options checked before it is written
        preregister(config)
    found = bracketed_bests(config, extra)
    if found is None:
        return None
    runs, rows, best, bracketing = found
    checks = check_runs(config, extra, best)
    if checks:
        print("checks at each kind's best: " + ", ".join(r["name"] for r in checks), flush=True)
        found = grid_bests(config, extra, checks)
        if found is None:
            return None
        runs, rows, best = found
    if seeds:
        repeats = seed_runs(runs, best, seeds)
        print(f"each kind's best setting again with seeds {seeds}: " + ", ".join(r["name"] for r in repeats),
              flush=True)
        found = grid_bests(config, extra, checks + repeats, {kind: b["setting"] for kind, b in best.items()})
        if found is None:
            return None
        runs, rows, best = found
    if config.plan_only:
        print("every run of the plan has finished: nothing is left to train")
        return None
    scores, device = Scores(os.path.join(config.out, "scores.json")), pick_device(runs[0]["train"].device)
    with torch.no_grad():
        tests = downstream_test(rows, best, config.out, config, scores, device)
    result = verdict_of(rows, best, runs, config, tests)
    result["bracketing"] = bracketing
    write_json(result, os.path.join(config.out, "verdict.json"))
    print("\n".join(verdict_lines(result, best)))
    if frontier.plot(config.out, result, os.path.join(config.out, "frontier.png")):
        print(f"loss against compute, each kind's envelope: {os.path.join(config.out, 'frontier.png')}")
    print(f"verdict: {os.path.join(config.out, 'verdict.json')}; across U: python experiments/gap_vs_u.py {root}")
    return result


if __name__ == "__main__":
    run_cli(main)

"""
Compare training runs: a table of best and final validation loss, and a plot of validation loss vs epoch.

    python compare.py out/ar out/diffusion                   # table, verdict, out/compare.png (with matplotlib)
    python compare.py out/sweep/* --plot=out/sweep.png --xscale=log

AR's number is its exact NLL; diffusion's is the ELBO, an upper bound on its NLL, so diffusion below AR means
diffusion's true NLL is lower still. Units: nats/token (and bits/byte for byte-tokenized data).
"""
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass

from config import option, parse_args

COLORS = {"ar": ["#1f4e9c", "#3b7dd8", "#6fa8f0", "#0b2a5c", "#8fbff5"],
          "diffusion": ["#c2410c", "#f97316", "#fdba74", "#7c2d12", "#fb923c"]}
OTHER_COLORS = [["#15803d", "#22c55e", "#86efac", "#14532d", "#4ade80"],  # a third objective, a fourth...
                ["#7e22ce", "#a855f7", "#d8b4fe", "#581c87", "#c084fc"]]


# what every line of log.jsonl holds for the table, the verdict and the plot
LOG_FIELDS = ("iter", "epoch", "tokens", "train_loss", "val_loss", "kind", "tokenizer", "unique_tokens", "n_params",
              "elapsed_s")


def read_log(folder):
    path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no log.jsonl: pass run folders written by train_ar.py / train_diffusion.py")
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # the last line torn by a kill: the run redoes it when resumed
                break
            raise ValueError(f"{path} line {number} is not JSON: the log is damaged (rerun the run with --overwrite)") \
                from None
    if not records:
        raise ValueError(f"{path} is empty: the run has not evaluated yet")
    for number, record in enumerate(records, 1):
        missing = [key for key in LOG_FIELDS if not isinstance(record, dict) or key not in record]
        if missing:
            raise ValueError(f"{path} line {number} lacks {', '.join(missing)}: not a log of this version of "
                            f"train_ar.py / train_diffusion.py")
    return records


def summarize(folder):
    records = read_log(folder)
    best = min(records, key=lambda r: r["val_loss"])
    last = records[-1]
    bytes_tokens = "val_bits_per_byte" in last
    row = {"run": os.path.basename(os.path.normpath(folder)), "kind": last["kind"], "params": last["n_params"],
           "unique_tokens": last["unique_tokens"], "epochs": last["epoch"], "best_val": best["val_loss"],
           "best_epoch": best["epoch"], "final_val": last["val_loss"], "tokens": last["tokens"],
           "wall_s": last["elapsed_s"], "bits_per_byte": bytes_tokens, "records": records, "best_acc": None,
           "tokenizer": last["tokenizer"]}
    scored = [r for r in records if r.get("mc_accuracy") is not None]
    if scored:  # the multiple-choice accuracy: its best, and at the best-loss checkpoint (best.pt)
        top = max(scored, key=lambda r: r["mc_accuracy"])
        row.update(best_acc=top["mc_accuracy"], best_acc_se=top["mc_se"], best_acc_epoch=top["epoch"],
                   acc_at_best_val=best.get("mc_accuracy"), acc_at_best_val_se=best.get("mc_se"))
    return row


def check_one_tokenizer(rows):
    """Losses per token compare only between runs of one tokenizer: a token of another vocabulary is another unit."""
    named = {r["tokenizer"]: r["run"] for r in rows}
    if len(named) > 1:
        raise ValueError("these runs use different tokenizers (" + ", ".join(f"{t} in {run}" for t, run in
                        named.items()) + "): their losses per token do not compare; compare runs of one tokenizer")


def format_table(rows):
    bpb = all(r["bits_per_byte"] for r in rows)
    acc = any(r["best_acc"] is not None for r in rows)
    head = (f"{'run':<22} {'kind':<9} {'params':>7} {'unique':>9} {'epochs':>7} {'best val':>9} {'@epoch':>7} "
            f"{'final val':>9} {'tokens':>11} {'wall':>7}" + (f" {'best bits/byte':>14}" if bpb else "")
            + (f" {'best acc':>8} {'@epoch':>7} {'acc@best val':>12}" if acc else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['run'][:22]:<22} {r['kind']:<9} {r['params'] / 1e6:>6.2f}M {r['unique_tokens']:>9,} "
                f"{r['epochs']:>7.1f} {r['best_val']:>9.4f} {r['best_epoch']:>7.1f} {r['final_val']:>9.4f} "
                f"{r['tokens']:>11,} {r['wall_s'] / 60:>6.1f}m")
        if bpb:
            line += f" {r['best_val'] / math.log(2):>14.4f}"
        if acc and r["best_acc"] is not None:
            at_best = f"{r['acc_at_best_val']:.3f}" if r["acc_at_best_val"] is not None else "-"
            line += f" {r['best_acc']:>8.3f} {r['best_acc_epoch']:>7.1f} {at_best:>12}"
        lines.append(line)
    lines.append("val loss in nats/token: AR exact NLL, diffusion ELBO (an upper bound on its NLL)"
                 + ("; acc: multiple-choice continuation accuracy (chance 0.25)" if acc else ""))
    return "\n".join(lines)


def trajectory(r):
    """One run's curve in words: where its best was, and what its validation loss did after it."""
    records, best_epoch = r["records"], r["best_epoch"]
    climb = r["final_val"] - r["best_val"]
    if best_epoch >= records[max(len(records) - 2, 0)]["epoch"]:  # best at one of the last two evaluations
        return (f"{r['run']} ({r['kind']}): still improving at its end: best {r['best_val']:.4f} at epoch "
                f"{best_epoch:.1f} of {r['epochs']:.1f}")
    return (f"{r['run']} ({r['kind']}): best {r['best_val']:.4f} at epoch {best_epoch:.1f} of {r['epochs']:.1f}, "
            f"then {'climbed' if climb > 0 else 'moved'} to {r['final_val']:.4f} by the end ({climb:+.4f})")


def kind_name(kind):
    """How a kind is written in prose: AR in capitals, the others as logged."""
    return kind.upper() if len(kind) <= 3 else kind


def verdict(rows):
    """Each run's trajectory, and which kind's best validation loss is lower, by how much (each kind at its best
    run; any number of kinds)."""
    lines = [trajectory(r) for r in rows]
    best = {}
    for r in rows:
        if r["kind"] not in best or r["best_val"] < best[r["kind"]]["best_val"]:
            best[r["kind"]] = r
    kinds = sorted(best)
    if len(kinds) >= 2:
        lower, higher = sorted(kinds, key=lambda k: best[k]["best_val"])[:2]
        gap = best[higher]["best_val"] - best[lower]["best_val"]
        each = ", ".join(f"{kind_name(k)} {best[k]['best_val']:.4f} in {best[k]['run']}" for k in kinds)
        lines.append(f"by validation loss: {kind_name(lower)} lower, by {gap:.4f} nats/token "
                     f"({100 * gap / best[higher]['best_val']:.1f}% of {kind_name(higher)}'s best; {each})")
    scored = [k for k in kinds if best[k].get("acc_at_best_val") is not None]
    if len(scored) >= 2:  # a rule fixed in advance (the best-loss checkpoint), not the curve's maximum
        each = "), ".join(f"{kind_name(k)} {best[k]['acc_at_best_val']:.3f} (+- {best[k]['acc_at_best_val_se']:.3f}"
                          for k in scored)
        lines.append(f"multiple-choice accuracy at each kind's best-loss checkpoint: {each}; the items the runs "
                     f"were evaluated on, so a curve, not a verdict: experiments/protocol.py scores held-out items "
                     f"paired)")
    return "\n".join(lines)


def run_label(r):
    """A run's name, with its kind when the name does not say it."""
    return r["run"] if r["kind"] in r["run"].lower() else f"{r['run']} ({r['kind']})"


def log_epochs(rows, xscale):
    """Whether the epoch axis is logarithmic: asked for, or (auto) when the runs' lengths differ fivefold or more,
    so that AR's few epochs and diffusion's hundreds can both be read."""
    if xscale != "auto":
        return xscale == "log"
    lengths = [r["epochs"] for r in rows if r["epochs"] > 0]
    return len(lengths) > 1 and max(lengths) >= 5 * min(lengths)


def train_points(records):
    """(epoch, training loss) of each evaluation, except one whose average spans under half the run's usual number
    of steps (the last evaluation, a few steps after the one before): its few steps, late in the cosine, would draw
    a drop that is no feature of the curve. The log keeps it."""
    spans = [(b["iter"] - a["iter"], b) for a, b in zip(records, records[1:]) if b["train_loss"] is not None]
    if not spans:
        return []
    usual = sorted(span for span, _ in spans)[len(spans) // 2]
    return [(r["epoch"], r["train_loss"]) for span, r in spans if 2 * span >= usual]


def plot(rows, path, xscale="auto"):
    """Validation loss vs epoch, all runs on one axis; train loss dashed (up to 6 runs: more would hide the
    validation curves); a second panel with the multiple-choice accuracy. Returns False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with_acc = any(r["best_acc"] is not None for r in rows)
    many = len(rows) > 6  # then no train curves, and the legends go beside the axes
    fig, axes = plt.subplots(1, 2 if with_acc else 1, figsize=((14 if with_acc else 8) + (6 if many else 0), 5),
                             squeeze=False)
    legend = dict(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1)) if many else dict(fontsize=8)
    ax, shown = axes[0][0], []  # shown: the loss values drawn, for the axis limits
    used, others = defaultdict(int), iter(OTHER_COLORS * 4)
    palette = {k: COLORS.get(k) or next(others) for k in sorted({r["kind"] for r in rows})}
    for r in rows:
        color = palette[r["kind"]][used[r["kind"]] % 5]
        used[r["kind"]] += 1
        if with_acc:
            scored = [(x["epoch"], x["mc_accuracy"]) for x in r["records"] if x.get("mc_accuracy") is not None]
            if scored:
                axes[0][1].plot(*zip(*scored), color=color, marker=".", label=run_label(r))
        epochs = [x["epoch"] for x in r["records"]]
        ax.plot(epochs, [x["val_loss"] for x in r["records"]], color=color, marker=".",
                label=f"{run_label(r)} val, best {r['best_val']:.3f}")
        shown += [x["val_loss"] for x in r["records"][1:]]  # the untrained first evaluation would squash the rest
        train = train_points(r["records"])
        if train and not many:
            ax.plot(*zip(*train), color=color, linestyle="--", alpha=0.6, label=f"{run_label(r)} train")
            shown += [loss for _, loss in train]
    log_x = log_epochs(rows, xscale)
    for a in axes[0]:
        if log_x:  # linear below one epoch, logarithmic above: epoch 0 stays on the axis
            a.set_xscale("symlog", linthresh=1)
            a.set_xlim(left=0)
        a.set_xlabel("epoch (passes over the unique tokens)" + (", log scale" if log_x else ""))
        a.grid(alpha=0.3)
    if with_acc:
        acc_ax = axes[0][1]
        acc_ax.axhline(0.25, color="grey", linestyle=":", label="chance")
        acc_ax.set_ylabel("multiple-choice continuation accuracy")
        acc_ax.set_title("downstream: accuracy vs epoch")
        acc_ax.legend(**legend)
    unit = "nats/token (bytes: nats/byte)" if all(r["bits_per_byte"] for r in rows) else "nats/token"
    ax.set_ylabel(f"loss, {unit}; diffusion: ELBO bound")
    if shown:
        low, high = min(shown), max(shown)
        ax.set_ylim(low - 0.05 * (high - low), min(high, 2.5 * low) + 0.05 * (high - low))
    ax.legend(**legend)
    ax.set_title(" vs ".join(kind_name(k) for k in palette) + " on repeated data")
    save_figure(fig, path)
    return True


def save_figure(fig, path):
    """Write a matplotlib figure whole, then rename it into place: a failed write leaves no empty picture."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    tmp = f"{path}.{os.getpid()}.tmp.png"  # the extension tells matplotlib the format
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass
class CompareConfig:
    plot: str = os.path.join("out", "compare.png")  # where the PNG goes
    # the epoch axis: auto is logarithmic when the runs' lengths differ fivefold or more
    xscale: str = option("auto", choices=("auto", "linear", "log"))
    no_plot: bool = False  # the table only


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # plain files (a plot beside the runs, say `out/sweep/*`) are not runs: skip them
    folders = [a for a in argv if not a.startswith("-") and not os.path.isfile(a)]
    options = CompareConfig()
    parse_args([a for a in argv if a.startswith("-")], options, doc=__doc__)  # lab/ checks the values first
    if not folders:
        raise ValueError("usage: python compare.py RUN_FOLDER [RUN_FOLDER ...] [--plot=out/compare.png] [--xscale=log]")
    rows = [summarize(folder) for folder in folders]
    check_one_tokenizer(rows)
    print(format_table(rows))
    print(verdict(rows))
    if options.no_plot:
        return rows
    path = options.plot
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        drawn = plot(rows, path, xscale=options.xscale)
    except OSError as e:
        raise ValueError(f"--plot {path}: cannot write it ({e.strerror}): choose another path") from None
    if drawn:
        print(f"plot: {path}")
    else:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
    return rows


if __name__ == "__main__":  # the command line: lab/ turns a bad input into one line
    from lab import launch
    launch.compare()

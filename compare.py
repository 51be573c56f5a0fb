"""
Compare training runs: a table of best and final validation loss, and a plot of validation loss vs epoch.

    python compare.py out/ar out/diffusion                   # table, verdict, out/compare.png (with matplotlib)
    python compare.py out/sweep/* --plot=out/sweep.png --xscale=log

AR's number is its exact NLL; diffusion's is the ELBO, an upper bound on its NLL, so diffusion below AR means
diffusion's true NLL is lower still. Units: nats/token (and bits/byte for byte-tokenized data).
"""
if __name__ == "__main__":  # first: a Ctrl-C during the slow imports below is one line too (cli.quiet_start)
    import cli
    cli.quiet_start()
import json
import math
import os
import sys
from dataclasses import dataclass

from cli import UserError, option, parse_args, run_cli
from folders import replace_whole

COLORS = {"ar": ["#1f4e9c", "#3b7dd8", "#6fa8f0", "#0b2a5c", "#8fbff5"],
          "diffusion": ["#c2410c", "#f97316", "#fdba74", "#7c2d12", "#fb923c"]}


# what every line of log.jsonl holds for the table, the verdict and the plot
LOG_FIELDS = ("iter", "epoch", "tokens", "train_loss", "val_loss", "kind", "tokenizer", "unique_tokens", "n_params",
              "elapsed_s")


def read_log(folder):
    path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{folder} has no log.jsonl: pass run folders written by train_ar.py / train_diffusion.py")
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # the last line torn by a kill: the run redoes it when resumed
                break
            raise UserError(f"{path} line {number} is not JSON: the log is damaged (rerun the run with --overwrite)") \
                from None
    if not records:
        raise UserError(f"{path} is empty: the run has not evaluated yet")
    for number, record in enumerate(records, 1):
        missing = [key for key in LOG_FIELDS if not isinstance(record, dict) or key not in record]
        if missing:
            raise UserError(f"{path} line {number} lacks {', '.join(missing)}: not a log of this version of "
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
        raise UserError("these runs use different tokenizers (" + ", ".join(f"{t} in {run}" for t, run in
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


def verdict(rows):
    """Each run's trajectory, and which kind's best validation loss is lower, by how much."""
    lines = [trajectory(r) for r in rows]
    best = {}
    for r in rows:
        if r["kind"] not in best or r["best_val"] < best[r["kind"]]["best_val"]:
            best[r["kind"]] = r
    if len(best) == 2:
        ar, df = best["ar"]["best_val"], best["diffusion"]["best_val"]
        lower, higher = ("diffusion", "AR") if df < ar else ("AR", "diffusion")
        gap = abs(ar - df)
        lines.append(f"by validation loss: {lower} lower, by {gap:.4f} nats/token ({100 * gap / max(ar, df):.1f}% of "
                     f"{higher}'s best; AR {ar:.4f} in {best['ar']['run']}, diffusion {df:.4f} in "
                     f"{best['diffusion']['run']})")
    scored = {kind: r for kind, r in best.items() if r.get("acc_at_best_val") is not None}
    if len(scored) == 2:  # a rule fixed in advance (the best-loss checkpoint), not the curve's maximum
        ar, df = scored["ar"], scored["diffusion"]
        lines.append(f"multiple-choice accuracy at each kind's best-loss checkpoint: AR {ar['acc_at_best_val']:.3f} "
                     f"(+- {ar['acc_at_best_val_se']:.3f}), diffusion {df['acc_at_best_val']:.3f} "
                     f"(+- {df['acc_at_best_val_se']:.3f}; the items the runs were evaluated on, so a curve, not a "
                     f"verdict: experiments/protocol.py scores held-out items paired)")
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
    used = {"ar": 0, "diffusion": 0}
    for r in rows:
        color = COLORS[r["kind"]][used[r["kind"]] % 5]
        used[r["kind"]] += 1
        if with_acc:
            scored = [(x["epoch"], x["mc_accuracy"]) for x in r["records"] if x.get("mc_accuracy") is not None]
            if scored:
                axes[0][1].plot(*zip(*scored), color=color, marker=".", label=run_label(r))
        epochs = [x["epoch"] for x in r["records"]]
        ax.plot(epochs, [x["val_loss"] for x in r["records"]], color=color, marker=".",
                label=f"{run_label(r)} val, best {r['best_val']:.3f}")
        shown += [x["val_loss"] for x in r["records"][1:]]  # the untrained first evaluation would squash the rest
        train = [(x["epoch"], x["train_loss"]) for x in r["records"] if x["train_loss"] is not None]
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
    ax.set_title("AR vs masked diffusion on repeated data")
    save_figure(fig, path)
    return True


def save_figure(fig, path):
    """Write a matplotlib figure whole, then rename it into place: a failed write leaves no empty picture."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        replace_whole(path, lambda tmp: fig.savefig(tmp, dpi=120), suffix=".png")  # the extension tells the format
    finally:
        plt.close(fig)


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
    parse_args([a for a in argv if a.startswith("-")], options, doc=__doc__)
    if not folders:
        raise UserError("usage: python compare.py RUN_FOLDER [RUN_FOLDER ...] [--plot=out/compare.png] [--xscale=log]")
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
        raise UserError(f"--plot {path}: cannot write it ({e.strerror}): choose another path") from None
    if drawn:
        print(f"plot: {path}")
    else:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
    return rows


if __name__ == "__main__":
    run_cli(main)

"""
The gap between the kinds against the unique-token budget: every U that experiments/protocol.py has finished
under one folder, as a table and a plot, with paper 1's prediction beside each measurement.

    python experiments/gap_vs_u.py out/protocol                    # table, out/protocol/gap_vs_u.png

The gap is (L_diffusion - L_AR) / L_AR of each kind's best setting (negative: diffusion lower). Paper 1 predicts
diffusion lower once the compute passes C_crit(U) = 2.12e15 x U^2.174 FLOPs (U in millions); the compute here is
the training FLOPs of diffusion's best run.
"""
import glob
import json
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import compare  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from lab.checks import NUMBER, check_plot_path, shape_mismatch, parse_checked as parse_args  # noqa: E402


@dataclass
class GapConfig:
    plot: str = ""  # default: FOLDER/gap_vs_u.png
    no_plot: bool = False


KIND = {"score": NUMBER, "setting": str, "best_epoch": NUMBER, "epochs": NUMBER, "edges": list}
VERDICT = {"unique_tokens": int, "tokenizer": str, "rescore_samples": int, "rescore_windows": int, "gap": NUMBER,
           "flops_over_c_crit": NUMBER, "paper1_predicts": str, "kinds": {"ar": KIND, "diffusion": KIND},
           "downstream": [{"ar_minus_diffusion": NUMBER, "se": NUMBER}]}  # what table() and plot() read


def read_verdict(path, shape=VERDICT):
    """One U's verdict.json, checked to hold what the reader needs (`shape`)."""
    try:
        with open(path) as f:
            verdict = json.load(f)
    except OSError:
        raise UserError(f"no {path}: run that U's protocol command (experiments/protocol.py) first") from None
    except ValueError:
        raise UserError(f"{path} is not JSON: run that U's protocol command again") from None
    problem = shape_mismatch(verdict, shape, "it")
    if problem:
        raise UserError(f"{path} is not a verdict of experiments/protocol.py ({problem}): run that U's protocol "
                        f"command again")
    return verdict


def read_verdicts(folder):
    """Every OUT/u<U>/verdict.json under folder, smallest U first; one tokenizer only (losses per token compare
    only within one)."""
    found = [read_verdict(path) for path in glob.glob(os.path.join(folder, "u*", "verdict.json"))]
    if not found:
        raise UserError(f"{folder} holds no u<U>/verdict.json: run experiments/protocol.py --out={folder} first")
    tokenizers = {v["tokenizer"] for v in found}
    if len(tokenizers) > 1:
        raise UserError(f"the verdicts under {folder} use different tokenizers ({', '.join(sorted(tokenizers))}): "
                        f"their gaps do not compare; keep one tokenizer per folder")
    return sorted(found, key=lambda v: v["unique_tokens"])


def table(verdicts):
    head = (f"{'U':>10} {'AR best':>8} {'(setting, epoch)':<26} {'diff. best':>10} {'(setting, epoch)':<26} "
            f"{'gap':>7} {'FLOPs/C_crit':>12} {'paper 1':>15} {'AR - diff. acc':>16}")
    lines = [head, "-" * len(head)]
    for v in verdicts:
        ar, df = v["kinds"]["ar"], v["kinds"]["diffusion"]
        test = v["downstream"][0] if v["downstream"] else None
        acc = f"{test['ar_minus_diffusion']:+.3f} +- {test['se']:.3f}" if test else "-"
        lines.append(f"{v['unique_tokens']:>10,} {ar['score']:>8.4f} {where(ar):<26} {df['score']:>10.4f} "
                     f"{where(df):<26} {100 * v['gap']:>+6.2f}% {v['flops_over_c_crit']:>12.3g} "
                     f"{v['paper1_predicts']:>15} {acc:>16}")
    lines.append(f"losses: each run's best.pt at K = {verdicts[0]['rescore_samples']} on "
                 f"{verdicts[0]['rescore_windows']} val windows ({verdicts[0]['tokenizer']}); gap = (L_diffusion - "
                 f"L_AR) / L_AR; acc: held-out items, checkpoints chosen by best validation loss, paired SE; a "
                 f"setting marked * is at an edge of its grid (not bracketed)")
    return "\n".join(lines)


def where(kind):
    mark = "*" if kind["edges"] else ""
    return f"({kind['setting']}, {kind['best_epoch']:.0f}/{kind['epochs']:g}){mark}"[:26]


def plot(verdicts, path):
    """Two panels: the gap against U, and against diffusion's compute / C_crit(U), with paper 1's sign of the
    gap shaded. Returns False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    gaps = [100 * v["gap"] for v in verdicts]
    fig, (by_u, by_c) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_u.plot([v["unique_tokens"] for v in verdicts], gaps, "o-", color="#c2410c", label="measured")
    by_u.set_xlabel("unique training tokens U")
    by_c.plot([v["flops_over_c_crit"] for v in verdicts], gaps, "o-", color="#c2410c", label="measured")
    for v, gap in zip(verdicts, gaps):
        by_c.annotate(f"U={v['unique_tokens']:,}", (v["flops_over_c_crit"], gap), fontsize=7,
                      textcoords="offset points", xytext=(4, 4))
    by_c.axvline(1, color="grey", linestyle=":")
    by_c.axvspan(1, max(2, 2 * max(v["flops_over_c_crit"] for v in verdicts)), color="#c2410c", alpha=0.08,
                 label="paper 1: diffusion lower here")
    by_c.set_xlabel("diffusion's training FLOPs / paper 1's C_crit(U)")
    for ax in (by_u, by_c):
        ax.set_xscale("log")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("(L_diffusion - L_AR) / L_AR, %  (below 0: diffusion lower)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"the gap between each kind's best setting ({verdicts[0]['tokenizer']})")
    compare.save_figure(fig, path)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    folders = [a for a in argv if not a.startswith("-")]
    config = GapConfig()
    parse_args([a for a in argv if a.startswith("-")], config, doc=__doc__)
    if len(folders) != 1:
        raise UserError("usage: python experiments/gap_vs_u.py OUT_FOLDER [--plot=PATH] (the protocol's --out)")
    if config.plot and not config.no_plot:
        check_plot_path("plot", config.plot)
    verdicts = read_verdicts(folders[0])
    print(table(verdicts))
    if not config.no_plot:
        path = config.plot or os.path.join(folders[0], "gap_vs_u.png")
        print(f"plot: {path}" if plot(verdicts, path) else "no plot: matplotlib is not installed")
    return verdicts


if __name__ == "__main__":
    run_cli(main)

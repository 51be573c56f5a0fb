"""
Paper 1's central figure for one U: validation loss against training FLOPs, every run of experiments/protocol.py a
curve (its evaluations), each kind's envelope (its Pareto frontier: the lowest loss any of its runs had reached by
each compute) drawn over them, each kind's best setting marked at its re-scored number, and C_crit(U) as a
vertical line. experiments/protocol.py draws it at the end of every U; this redraws it.

    python experiments/frontier.py out/cpu_twin/u37500            # writes out/cpu_twin/u37500/frontier.png
"""
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import compare  # noqa: E402
import gap_vs_u  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from lab.checks import NUMBER, check_plot_path, parse_checked as parse_args  # noqa: E402


@dataclass
class FrontierConfig:
    plot: str = ""  # default: FOLDER/frontier.png


RUN = {"run": str, "kind": str, "flops_per_token": NUMBER}
VERDICT = {"unique_tokens": int, "c_crit": NUMBER, "runs": [RUN],
           "kinds": {"ar": {"run": str, "score": NUMBER, "best_epoch": NUMBER, "flops": NUMBER},
                     "diffusion": {"run": str, "score": NUMBER, "best_epoch": NUMBER, "flops": NUMBER}}}


def envelope(points):
    """The Pareto frontier of (flops, loss) points: in order of compute, each point that lowers the best loss so
    far. Above it no point lies; at each compute it is the lowest loss reached with at most that much."""
    frontier = []
    for flops, loss in sorted(points):
        if not frontier or loss < frontier[-1][1]:
            frontier.append((flops, loss))
    return frontier


def curves(folder, verdict):
    """{run: (kind, [(training FLOPs, val loss)] at each evaluation after the first)} from each run's log."""
    found = {}
    for r in verdict["runs"]:
        records = compare.read_log(os.path.join(folder, r["run"]))
        found[r["run"]] = (r["kind"], [(r["flops_per_token"] * x["tokens"], x["val_loss"]) for x in records
                                        if x["tokens"] > 0])
    return found


def best_points(folder, verdict):
    """{kind: (FLOPs at its best checkpoint, its re-scored loss)}: the best setting's run, at the evaluation where
    its logged loss was lowest (best.pt)."""
    points = {}
    for kind, k in verdict["kinds"].items():
        per_token = next(r["flops_per_token"] for r in verdict["runs"] if r["run"] == k["run"])
        records = compare.read_log(os.path.join(folder, k["run"]))
        best = min(records, key=lambda x: x["val_loss"])
        points[kind] = (per_token * best["tokens"], k["score"])
    return points


def plot(folder, verdict, path):
    """Draw the figure; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {"ar": "tab:blue", "diffusion": "tab:red"}
    by_kind = {}
    for run, (kind, points) in curves(folder, verdict).items():
        ax.plot(*zip(*points), color=colors.get(kind, "grey"), alpha=0.25, linewidth=0.8)
        by_kind.setdefault(kind, []).extend(points)
    for kind, points in by_kind.items():
        frontier = envelope(points)
        ax.step(*zip(*frontier), where="post", color=colors.get(kind, "grey"), linewidth=2.2,
                label=f"{compare.kind_name(kind)} envelope ({sum(r['kind'] == kind for r in verdict['runs'])} runs' "
                      f"evaluations)")
    for kind, (flops, loss) in best_points(folder, verdict).items():
        status = verdict.get("bracketing", {}).get(kind, "bracketing not asked")
        ax.plot([flops], [loss], marker="*", markersize=15, color=colors.get(kind, "grey"), markeredgecolor="black",
                linestyle="none", label=f"{compare.kind_name(kind)} best {loss:.3f}, re-scored "
                f"({verdict['kinds'][kind]['run']}; {'bracketed' if status == 'bracketed' else 'not bracketed'})")
    ax.axvline(verdict["c_crit"], color="black", linestyle=":", label=f"paper 1's C_crit(U) = {verdict['c_crit']:.2e}")
    every = [loss for points in by_kind.values() for _, loss in points]
    low, high = min(every), sorted(every)[int(0.9 * (len(every) - 1))]
    ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))  # the untrained tail would squash the rest
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6N + attention per token, PaLM appendix B)")
    ax.set_ylabel("validation loss, nats/token (diffusion: ELBO bound)")
    ax.set_title(f"U = {verdict['unique_tokens']:,} unique tokens: loss against compute, every run a curve")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    compare.save_figure(fig, path)
    return True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    folders = [a for a in argv if not a.startswith("-")]
    config = FrontierConfig()
    parse_args([a for a in argv if a.startswith("-")], config, doc=__doc__)
    if len(folders) != 1:
        raise UserError("give one U folder, e.g. python experiments/frontier.py out/cpu_twin/u37500")
    path = config.plot or os.path.join(folders[0], "frontier.png")
    check_plot_path("plot", path)
    verdict = gap_vs_u.read_verdict(os.path.join(folders[0], "verdict.json"), VERDICT)
    if not plot(folders[0], verdict, path):
        raise UserError("the plot needs matplotlib: pip install matplotlib")
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)

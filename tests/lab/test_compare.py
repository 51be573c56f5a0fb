import builtins
import json
import re
import math
import os
import subprocess
import sys

import pytest
import torch

import compare
from conftest import ROOT, TINY

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import elbo_spread  # noqa: E402
import sweep  # noqa: E402


def write_run(folder, kind, vals, bytes_tokens=True):
    os.makedirs(folder)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for i, v in enumerate(vals):
            r = {"iter": i * 10, "epoch": i * 2.0, "tokens": i * 1000, "train_loss": v - 0.1 if i else None,
                 "val_loss": v, "kind": kind, "tokenizer": "bytes-256", "unique_tokens": 500, "n_params": 12345,
                 "elapsed_s": 60.0 * i}
            if bytes_tokens:
                r["val_bits_per_byte"] = v / math.log(2)
            f.write(json.dumps(r) + "\n")


def test_table_best_value_epoch_and_units(tmp_path):
    write_run(tmp_path / "ar", "ar", [5.0, 3.0, 2.5, 2.7, 3.5])
    write_run(tmp_path / "df", "diffusion", [5.5, 3.5, 2.9, 2.6, 2.4])
    rows = compare.main([str(tmp_path / "ar"), str(tmp_path / "df"), f"--plot={tmp_path / 'p.png'}"])
    ar, df = rows
    assert (ar["best_val"], ar["best_epoch"], ar["final_val"]) == (2.5, 4.0, 3.5)
    assert (df["best_val"], df["best_epoch"]) == (2.4, 8.0)
    table = compare.format_table(rows)
    assert "nats/token" in table and "bits/byte" in table
    assert f"{2.5 / math.log(2):.4f}" in table.splitlines()[2]
    no_bytes = str(tmp_path / "bpe")
    write_run(no_bytes, "ar", [9.0, 4.0], bytes_tokens=False)
    assert "bits/byte" not in compare.format_table([compare.summarize(no_bytes)])


def test_plot_is_written_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "ar", "ar", [5.0, 3.0, 2.5])
    compare.main([str(tmp_path / "ar"), f"--plot={tmp_path / 'p.png'}"])
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_prints_table_and_says_how(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    write_run(tmp_path / "ar", "ar", [5.0, 3.0])
    compare.main([str(tmp_path / "ar"), f"--plot={tmp_path / 'p.png'}"])
    out = capsys.readouterr().out
    assert "pip install matplotlib" in out and "best val" in out
    assert not os.path.exists(tmp_path / "p.png")


def test_folder_without_log_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no log.jsonl"):
        compare.main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="unknown option --plto=x; did you mean --plot"):
        compare.main([str(tmp_path / "empty"), "--plto=x"])


def test_sweep_runs_both_kinds_and_reports(data_dir, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "sweep")
    args = ["--unique_tokens=2000", "--ar_epochs=1,2", "--diffusion_epochs=2", f"--out={out}", "--jobs=2", "--",
            *TINY, f"--data_dir={data_dir}", "--dataset=tiny", "--eval_interval=5", "--elbo_samples=4"]
    rows = sweep.main(args)
    assert [(r["run"], r["kind"]) for r in rows] == [("ar_e1", "ar"), ("ar_e2", "ar"), ("diffusion_e2", "diffusion")]
    assert all(r["unique_tokens"] == 2000 for r in rows)
    assert [round(r["epochs"]) for r in rows] == [1, 2, 2]
    text = capsys.readouterr().out
    best_ar = min(r["best_val"] for r in rows if r["kind"] == "ar")
    assert f"best AR {best_ar:.4f}" in text and "lower by" in text
    # a second call finds every run finished and trains nothing
    sweep.main(args)
    assert text.count("running:") == 3 and capsys.readouterr().out.count("finished, skipped") == 3

    # the spread of the diffusion ELBO over mask seeds: K = 4 (the run's own) is noisier than K = 64
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["elbo_spread.py", f"--ckpt={out}/diffusion_e2", "--seeds=4", "--ks=4,64"])
    elbo_spread.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("K =")]
    spreads = [float(line.split("+-")[1].split()[0]) for line in lines]
    means = [float(line.split("ELBO")[1].split()[0]) for line in lines]
    assert len(lines) == 2 and spreads[0] > spreads[1] > 0
    assert abs(means[1] - rows[2]["final_val"]) < 0.1 * rows[2]["final_val"]


def test_verdict_averages_seeds_and_picks_each_kinds_best_setting():
    def row(run, kind, best, epoch):
        return {"run": run, "kind": kind, "best_val": best, "best_epoch": epoch}
    rows = [row("ar_e8_s1", "ar", 2.30, 6), row("ar_e8_s2", "ar", 2.40, 7),
            row("ar_e16_s1", "ar", 2.50, 9), row("ar_e16_s2", "ar", 2.10, 11),  # mean 2.30 < 2.35: the best AR
            row("diffusion_e100_s1", "diffusion", 2.60, 90), row("diffusion_e100_s2", "diffusion", 2.20, 100)]
    setting_of = {r["run"]: (r["kind"], r["run"].split("_")[1][1:]) for r in rows}
    text = sweep.verdict(rows, setting_of)
    assert "best AR 2.3000 +- 0.2828 (std over 2 seeds) at epoch 10.0 of 16-epoch runs" in text
    assert "best diffusion 2.4000 +- 0.2828" in text and text.endswith("AR lower by 0.1000 nats/token")
    assert sweep.verdict(rows[:4], setting_of) == "one kind only: no verdict"


def test_sweep_seeds_give_one_run_each(data_dir, tmp_path, capsys):
    out = str(tmp_path / "seeds")
    rows = sweep.main(["--unique_tokens=2000", "--ar_epochs=1", "--diffusion_epochs=", "--seeds=1,2", f"--out={out}",
                       "--jobs=2", "--", *TINY, f"--data_dir={data_dir}", "--dataset=tiny", "--eval_interval=5"])
    assert [r["run"] for r in rows] == ["ar_e1_s1", "ar_e1_s2"]
    configs = [torch.load(os.path.join(out, r["run"], "ckpt.pt"), weights_only=False)["config"] for r in rows]
    assert [c["seed"] for c in configs] == [1, 2]
    assert rows[0]["final_val"] != rows[1]["final_val"]  # a different seed is a different run
    with pytest.raises(ValueError, match="--seeds takes whole numbers"):
        sweep.main(["--seeds=1,two", f"--out={out}"])


def test_a_plan_over_its_budget_is_refused_before_anything_is_written(data_dir, tmp_path, capsys):
    out = str(tmp_path / "sweep")
    # an assumed rate rather than a measured one: the same plan twice, whatever the machine's load
    grid = ["--ar_epochs=200", "--diffusion_epochs=2000", f"--out={out}", "--assumed_tflops=0.01"]
    train = ["--", *TINY, f"--data_dir={data_dir}", "--dataset=tiny"]
    with pytest.raises(ValueError, match=r"the plan needs about [0-9.]+ min but the budget is 1.0 min: "
                                        r"--unique_tokens=\d+ would fit") as refused:
        sweep.main(["--unique_tokens=2000", *grid, "--budget_s=60", *train])
    assert not os.path.exists(out)
    needed = float(re.search(r"needs about ([0-9.]+) min", str(refused.value)).group(1))
    assert f"about {needed:.1f} min in all" in capsys.readouterr().out  # the plan printed what it refused
    fit = int(re.search(r"--unique_tokens=(\d+)", str(refused.value)).group(1))
    assert 0 < fit < 2000 * 60 / (needed * 60)
    sweep.main([f"--unique_tokens={fit}", *grid, "--budget_s=60", "--plan_only", *train])  # the named U fits


def test_verdict_with_repeats_reports_the_repeated_winners_over_all_their_seeds():
    """A setting that ran once with a lucky seed must not displace the winner that was repeated: the verdict
    reports the repeated setting's mean."""
    def row(run, kind, best):
        return {"run": run, "kind": kind, "best_val": best, "best_epoch": 10}
    rows = [row("a", "ar", 5.18), row("a_s2", "ar", 5.21), row("a_s3", "ar", 5.20), row("b", "ar", 5.19),
            row("d", "diffusion", 5.60), row("d_s2", "diffusion", 5.72), row("d_s3", "diffusion", 5.68),
            row("e", "diffusion", 5.66)]
    a, b, d, e = ("ar", "4x256", "papers", 10.0), ("ar", "4x256", "strong", 10.0), ("diffusion", "6x384", "", 250.0), \
        ("diffusion", "4x256", "", 250.0)
    setting_of = {"a": a, "a_s2": a, "a_s3": a, "b": b, "d": d, "d_s2": d, "d_s3": d, "e": e}
    text = sweep.verdict(rows, setting_of, {"ar": a, "diffusion": d})
    assert text.startswith("best AR (4x256 papers) 5.1967 +- 0.0153 (std over 3 seeds)")
    assert "best diffusion (6x384) 5.6667 +- 0.0611 (std over 3 seeds) at epoch 10.0 of 250-epoch runs" in text
    assert text.endswith("AR lower by 0.4700 nats/token")
    assert "best AR (4x256 strong) 5.1900 at" in sweep.verdict(rows, setting_of)  # without: the lowest mean


def test_sweep_model_sizes_and_bad_values(data_dir, tmp_path, capsys):
    assert sweep.model_options("6x384") == ["--n_layer=6", "--n_embd=384", "--n_head=6"]
    assert sweep.model_options("2x64x2") == ["--n_layer=2", "--n_embd=64", "--n_head=2"]
    for bad in ["6", "6x", "x384", "0x64", "6x384x2x1"]:
        with pytest.raises(ValueError, match="layers x width"):
            sweep.model_options(bad)
    with pytest.raises(ValueError, match="--ar_epochs takes numbers"):
        sweep.main(["--ar_epochs=8,lots", "--plan_only"])
    sweep.main(["--unique_tokens=1000", "--ar_models=1x32x2,2x64x2", "--ar_epochs=2", "--diffusion_epochs=10",
                "--plan_only", "--assumed_tflops=1", "--", f"--data_dir={data_dir}", "--dataset=tiny",
                "--block_size=32"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["ar_1x32x2_e2", "ar_2x64x2_e2", "diffusion_e10"]
    flops = [float(line.split()[5]) for line in lines[1:4]]
    assert flops[1] > 2 * flops[0] and lines[-1].startswith("plan: 3 runs")
    assert not os.path.exists(os.path.join("out", "sweep", "ar_1x32x2_e2"))  # a plan trains nothing


def test_verdict_tells_each_trajectory_and_the_gap(tmp_path):
    write_run(tmp_path / "ar", "ar", [5.0, 3.0, 2.5, 2.7, 3.5])
    write_run(tmp_path / "df", "diffusion", [5.5, 3.5, 2.9, 2.6, 2.4])
    text = compare.verdict([compare.summarize(str(tmp_path / "ar")), compare.summarize(str(tmp_path / "df"))])
    lines = text.splitlines()
    assert lines[0] == "ar (ar): best 2.5000 at epoch 4.0 of 8.0, then climbed to 3.5000 by the end (+1.0000)"
    assert lines[1] == "df (diffusion): still improving at its end: best 2.4000 at epoch 8.0 of 8.0"
    assert lines[2].startswith("by validation loss: diffusion lower, by 0.1000 nats/token (4.0% of AR's best")
    assert "lower" not in compare.verdict([compare.summarize(str(tmp_path / "ar"))])


def test_default_plot_goes_under_out(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "ar", "ar", [5.0, 3.0])
    monkeypatch.chdir(tmp_path)
    compare.main([str(tmp_path / "ar")])
    assert os.path.isfile(tmp_path / "out" / "compare.png") and not os.path.exists(tmp_path / "compare.png")


def test_accuracy_columns_verdict_and_second_panel(tmp_path):
    def with_acc(folder, accs, se):
        lines = [json.loads(line) for line in open(folder / "log.jsonl")]
        with open(folder / "log.jsonl", "w") as f:
            for r, a in zip(lines, accs):
                f.write(json.dumps(dict(r, mc_accuracy=a, mc_se=se)) + "\n")
    write_run(tmp_path / "ar", "ar", [5.0, 3.0, 2.5, 2.7, 3.5])
    write_run(tmp_path / "df", "diffusion", [5.5, 3.5, 2.9, 2.6, 2.4])
    with_acc(tmp_path / "ar", [0.25, 0.30, 0.33, 0.36, 0.35], 0.02)  # still rising after its best loss (epoch 4)
    with_acc(tmp_path / "df", [0.25, 0.28, 0.30, 0.31, 0.34], 0.03)
    rows = [compare.summarize(str(tmp_path / "ar")), compare.summarize(str(tmp_path / "df"))]
    assert (rows[0]["best_acc"], rows[0]["best_acc_epoch"], rows[0]["acc_at_best_val"]) == (0.36, 6.0, 0.33)
    table = compare.format_table(rows).splitlines()
    assert table[0].endswith("best acc  @epoch acc@best val")
    assert table[2].split()[-3:] == ["0.360", "6.0", "0.330"] and table[3].split()[-3:] == ["0.340", "8.0", "0.340"]
    verdict = compare.verdict(rows).splitlines()[-1]
    # the accuracy of each kind's best-loss checkpoint (AR's at epoch 4, diffusion's at its end), not the maximum
    # each with its own standard error
    assert verdict.startswith("multiple-choice accuracy at each kind's best-loss checkpoint: AR 0.330 (+- 0.020), "
                              "diffusion 0.340 (+- 0.030;") and "not a verdict" in verdict
    pytest.importorskip("matplotlib")
    compare.main([str(tmp_path / "ar"), str(tmp_path / "df"), f"--plot={tmp_path / 'two.png'}"])
    import matplotlib.image
    assert matplotlib.image.imread(str(tmp_path / "two.png")).shape[1] > 1500  # two panels side by side


def test_jobs_at_once_are_as_many_as_the_gpus_memory_holds_by_the_measured_peaks(monkeypatch):
    class Card:
        total_memory = 80e9
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Card())
    grid = [{"kind": "ar", "train": None, "peak": 10e9}] * 6 + [{"kind": "diffusion", "train": None, "peak": 20e9}] * 2
    monkeypatch.setattr(sweep, "shape_key", lambda run: (run["kind"], run["peak"]))
    peaks = {("ar", 10e9): 10e9, ("diffusion", 20e9): 20e9}
    # the largest first, ~1 GB each for the CUDA context, within 90% of the card: 21 + 21 + 11 + 11 < 72 < + 11
    assert sweep.auto_jobs(grid, peaks) == 4
    assert sweep.auto_jobs(grid[:1], {("ar", 10e9): 100e9}) == 1  # one run always goes, even if it may not fit


def test_runs_of_different_tokenizers_are_refused_and_damaged_logs_are_one_line(tmp_path):
    write_run(tmp_path / "ar", "ar", [5.0, 3.0, 2.5])
    write_run(tmp_path / "df", "diffusion", [5.5, 3.5, 2.9])
    for folder, tokenizer in (("ar", "bpe-1024-abc"), ("df", "bpe-8192-def")):
        path = tmp_path / folder / "log.jsonl"
        lines = [dict(json.loads(line), tokenizer=tokenizer) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(ValueError, match=r"different tokenizers \(bpe-1024-abc in ar, bpe-8192-def in df\)"):
        compare.main([str(tmp_path / "ar"), str(tmp_path / "df"), "--no_plot"])
    # a last line torn by a kill is left out (the run redoes it when resumed); a damaged line before it is an error
    with open(tmp_path / "ar" / "log.jsonl", "a") as f:
        f.write('{"iter": 30, "epo')
    assert [r["iter"] for r in compare.read_log(str(tmp_path / "ar"))] == [0, 10, 20]
    with open(tmp_path / "ar" / "log.jsonl", "a") as f:
        f.write('\n{"iter": 40}\n')  # the torn line is no longer the last
    with pytest.raises(ValueError, match=r"log.jsonl line 4 is not JSON"):
        compare.read_log(str(tmp_path / "ar"))
    # a line of JSON without the fields the table needs (another program's log, or a hand edit): one line naming them
    (tmp_path / "ar" / "log.jsonl").write_text('{"iter": 0, "epoch": 0.0, "kind": "ar"}\n')
    with pytest.raises(ValueError, match=r"line 1 lacks tokens, train_loss, val_loss, tokenizer"):
        compare.read_log(str(tmp_path / "ar"))
    # a plot path that cannot be written: one line
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--plot .*cannot write it"):
        compare.main([str(tmp_path / "df"), f"--plot={tmp_path / 'a_file' / 'p.png'}"])


def test_an_interrupted_sweep_leaves_no_training_process_behind(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, which the sweep turns into the same) while runs train: each run is stopped before the
    sweep ends. A `sleep` stands in for a training process."""
    import signal
    import threading
    import time
    started = []
    real_popen = subprocess.Popen

    def popen(cmd, **kwargs):
        proc = real_popen(["sleep", "60"], **kwargs)
        started.append(proc)
        return proc
    monkeypatch.setattr(subprocess, "Popen", popen)
    runs = [{"name": f"ar_e{i}", "kind": "ar", "options": []} for i in range(2)]
    config = sweep.SweepConfig(out=str(tmp_path), status_every_s=60)
    # Ctrl-C at the terminal, as a foreground sweep gets it (this suite may run with SIGINT ignored, as a background
    # job; the runs get Ctrl-C's default back from the sweep either way)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    def interrupt_once_both_run():  # an event, not a timer: a slow host may take seconds to start them
        while len(started) < 2 or any(proc.poll() is not None for proc in started):
            time.sleep(0.01)
        signal.raise_signal(signal.SIGINT)
    threading.Thread(target=interrupt_once_both_run, daemon=True).start()
    t0 = time.time()
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.train_all(runs, config, jobs=2, t_start=t0)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(started) == 2 and all(proc.poll() is not None for proc in started) and time.time() - t0 < 30
    assert all(proc.returncode == -signal.SIGINT for proc in started)  # stopped by the sweep's SIGINT
    with pytest.raises(KeyboardInterrupt):
        sweep.stop_on_sigterm(signal.SIGTERM, None)


def test_the_plot_leaves_out_a_training_average_of_a_few_steps():
    """The demo's last evaluation comes 3 iterations after the one before: its training average (3 late steps)
    would end the curve in a vertical drop. Every evaluation with a usual span is drawn."""
    def records(iters, losses):
        return [{"iter": i, "epoch": i / 10, "train_loss": loss} for i, loss in zip(iters, losses)]
    assert compare.train_points(records([0, 10, 20, 30, 33], [None, 5.0, 4.0, 3.5, 1.0])) == \
        [(1.0, 5.0), (2.0, 4.0), (3.0, 3.5)]
    assert compare.train_points(records([0, 10, 20, 30, 37], [None, 5.0, 4.0, 3.5, 3.4]))[-1] == (3.7, 3.4)
    assert compare.train_points(records([0], [None])) == []

import builtins
import json
import math
import os
import sys

import pytest
import torch

import compare
from conftest import ROOT, TINY
from cli import UserError

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import elbo_spread  # noqa: E402
import sweep  # noqa: E402


def write_run(folder, kind, vals, bytes_tokens=True):
    os.makedirs(folder)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        for i, v in enumerate(vals):
            r = {"iter": i * 10, "epoch": i * 2.0, "tokens": i * 1000, "train_loss": v - 0.1 if i else None,
                 "val_loss": v, "kind": kind, "unique_tokens": 500, "n_params": 12345, "elapsed_s": 60.0 * i}
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
    with pytest.raises(UserError, match="has no log.jsonl"):
        compare.main([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="unknown option --plto; did you mean --plot"):
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
                       "--", *TINY, f"--data_dir={data_dir}", "--dataset=tiny", "--eval_interval=5"])
    assert [r["run"] for r in rows] == ["ar_e1_s1", "ar_e1_s2"]
    configs = [torch.load(os.path.join(out, r["run"], "ckpt.pt"), weights_only=False)["config"] for r in rows]
    assert [c["seed"] for c in configs] == [1, 2]
    assert rows[0]["final_val"] != rows[1]["final_val"]  # a different seed is a different run
    with pytest.raises(UserError, match="--seeds takes whole numbers"):
        sweep.main(["--seeds=1,two", f"--out={out}"])

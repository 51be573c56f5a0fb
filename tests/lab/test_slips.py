"""Slips a real user makes, and faults at the edges: each is one line (exit status 1) and loses nothing. A run folder
and a data folder are told apart before anything is written; a disk that fills without an errno, a non-finite
validation loss, a huge prompt, damaged experiment files, a refused plot path, a path too long, an old lock."""
import json
import os
import sys
import time

import pytest
import torch

import train_ar
from conftest import ROOT, make_tiny_data, run_training, tiny_args
from lab import folders, launch
from runtime import load_checkpoint
from test_bad_input import one_line_error, snapshot

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import gap_vs_u  # noqa: E402
import protocol  # noqa: E402


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A data folder and a finished AR run."""
    root = tmp_path_factory.mktemp("finished")
    data_dir = make_tiny_data(root)
    run_training(train_ar, tiny_args(data_dir, str(root / "run"), "--max_iters=6", "--eval_interval=3"))
    return root, data_dir


def test_a_run_is_never_written_into_a_data_folder(finished):
    root, data_dir = finished
    before = snapshot(os.path.join(data_dir, "tiny"))
    message = one_line_error(lambda argv: run_training(train_ar, argv),
                             tiny_args(data_dir, os.path.join(data_dir, "tiny"), "--max_iters=2"))
    assert "holds prepared data (meta.json, train.bin, val.bin), not a run" in message
    assert snapshot(os.path.join(data_dir, "tiny")) == before  # no lock, no log, no checkpoint beside train.bin


def test_data_is_never_prepared_over_a_run_or_over_files_it_did_not_make(finished, tmp_path):
    root, data_dir = finished
    before = snapshot(root / "run")
    for extra in ([], ["--overwrite"]):
        message = one_line_error(launch.prepare_run, [f"--data_dir={root}", "--name=run", *extra])
        assert f"{root / 'run'} holds a training run (ckpt.pt, best.pt, log.jsonl), not data" in message
        assert snapshot(root / "run") == before
    other = tmp_path / "data" / "mine"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    message = one_line_error(launch.prepare_run, [f"--data_dir={tmp_path / 'data'}", "--name=mine", "--overwrite"])
    assert "holds files prepare_data.py does not write (notes.txt)" in message
    assert (other / "notes.txt").read_text() == "mine" and sorted(os.listdir(tmp_path / "data")) == ["mine"]


def test_a_disk_that_fills_without_an_errno_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """numpy's short write says 'N requested and M written' with no errno; a nearly full disk makes it one line."""
    import prepare_data

    def short_write(tokens, path):
        open(path, "wb").write(b"\0" * 10)  # part of the file made it to the disk
        raise OSError(f"{2 * len(tokens)} requested and 10 written")
    monkeypatch.setattr(prepare_data, "write_split", short_write)
    monkeypatch.setattr(folders, "free_bytes", lambda path: 4096)
    message = one_line_error(launch.prepare_run, [f"--data_dir={tmp_path / 'data'}"])
    assert message.startswith(f"error: {tmp_path / 'data' / 'default.new'}: the disk is full (the token files need")
    assert "4096" not in message and "0.0 MB are free" in message
    assert os.listdir(tmp_path / "data") == []  # no half-written folder, no lock
    # with room to spare the same error is not blamed on the disk: it goes on as it is, and still leaves nothing
    monkeypatch.setattr(folders, "free_bytes", lambda path: 10 ** 12)
    with pytest.raises(OSError, match="requested and 10 written"):
        launch.prepare_run([f"--data_dir={tmp_path / 'data'}"])
    assert os.listdir(tmp_path / "data") == []


def test_a_non_finite_validation_loss_is_never_saved_and_the_message_names_the_kept_checkpoint(data_dir, tmp_path):
    out = str(tmp_path / "run")
    evaluations = []

    def nan_at_the_third_evaluation(model, windows, window_ids, config):
        evaluations.append(1)
        nats, count = train_ar.evaluate_loss(model, windows, window_ids, config)
        return (float("nan") if len(evaluations) == 3 else nats), count
    with pytest.raises(ValueError, match=r"the validation loss is not finite at iteration 10: stopped; its last good "
                                         r"checkpoint, .*ckpt.pt at iteration 5, is kept"):
        run_training(train_ar, tiny_args(data_dir, out, "--max_iters=20", "--eval_interval=5"),
                     evaluate_loss=nan_at_the_third_evaluation)
    assert load_checkpoint(out + "/ckpt.pt")["iter"] == 5
    assert [json.loads(line)["iter"] for line in open(out + "/log.jsonl")] == [0, 5]  # no NaN line in the log


def test_sample_refuses_non_finite_weights_and_a_prompt_longer_than_the_context(finished, tmp_path):
    root, _ = finished
    ckpt = load_checkpoint(str(root / "run" / "ckpt.pt"))
    ckpt["model"]["embed.weight"][0, 0] = float("inf")
    torch.save(ckpt, tmp_path / "inf.pt")
    message = one_line_error(launch.sample_run, [f"--ckpt={tmp_path / 'inf.pt'}", "--num_samples=1"])
    assert "weights are not finite" in message
    t0 = time.time()
    message = one_line_error(launch.sample_run, [f"--ckpt={root / 'run'}", "--start=[MASK*1000000000000]"])
    assert "asks for 1,000,000,000,000 [MASK] tokens but the context is 32" in message
    assert time.time() - t0 < 60  # refused before anything was allocated for them


@pytest.mark.parametrize("content,problem", [
    ({}, "it lacks 'unique_tokens'"), ([1, 2], "it is not a JSON object"),
    ("VALID_BUT_NO_DIFFUSION", "it['kinds'] lacks 'diffusion'"),
])
def test_gap_vs_u_reads_only_verdicts(tmp_path, content, problem):
    if content == "VALID_BUT_NO_DIFFUSION":
        kind = {"score": 5.0, "setting": "2x64", "best_epoch": 3.0, "epochs": 4, "edges": []}
        content = {"unique_tokens": 2000, "tokenizer": "bytes-256", "rescore_samples": 8, "rescore_windows": 4,
                   "gap": 0.1, "flops_over_c_crit": 1.0, "paper1_predicts": "AR lower", "kinds": {"ar": kind},
                   "downstream": []}
    (tmp_path / "u2000").mkdir()
    (tmp_path / "u2000" / "verdict.json").write_text(json.dumps(content))
    message = one_line_error(gap_vs_u.main, [str(tmp_path)])
    assert f"is not a verdict of experiments/protocol.py ({problem})" in message


@pytest.mark.parametrize("content,problem", [
    ([1], "not a JSON object"), ({"k": "fast"}, "'k' is text that is not a test's 0/1 answers"), ({"k": {"loss": "low", "windows": 4}}, "'k'['loss']"),
])
def test_the_protocol_reads_only_its_own_scores(tmp_path, content, problem):
    (tmp_path / "scores.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="is not this protocol's scores") as stop:
        protocol.Scores(str(tmp_path / "scores.json"))
    assert problem in str(stop.value)
    good = {"a": {"loss": 4.5, "windows": 8}, "b": "0110"}
    (tmp_path / "scores.json").write_text(json.dumps(good))
    assert protocol.Scores(str(tmp_path / "scores.json")).values == good


def test_the_protocol_refuses_one_kind_before_any_run(data_dir, tmp_path):
    out = tmp_path / "protocol"
    message = one_line_error(protocol.main, [f"--out={out}", "--unique_tokens=2000", "--diffusion_epochs=", "--",
                                             f"--data_dir={data_dir}", "--dataset=tiny"])
    assert "compares two kinds: give both --ar_epochs and --diffusion_epochs" in message
    assert not out.exists()  # refused before the first run


@pytest.mark.parametrize("script", ["gap_vs_u", "compare"])
def test_a_plot_path_that_is_a_folder_or_not_a_png_is_refused_before_any_work(finished, tmp_path, script):
    root, _ = finished
    for path, said in ((tmp_path, "is a folder"), (tmp_path / "x.xyz", "the plot is a PNG picture")):
        call = gap_vs_u.main if script == "gap_vs_u" else launch.compare
        message = one_line_error(lambda argv: call(argv), [str(root / "run"), f"--plot={path}"])
        assert message == f"error: --plot {path}" + (" " if said == "is a folder" else ": ") + said + \
            (": give a file path ending in .png" if said == "is a folder" else ": give a path ending in .png")
    assert os.listdir(tmp_path) == []  # nothing written, no temporary named


def test_a_path_too_long_leaves_no_folder_behind(data_dir, tmp_path):
    deep = os.path.join(str(tmp_path / "runs"), *["d" * 120] * 42)  # ~5,000 characters: past PATH_MAX
    message = one_line_error(lambda argv: run_training(train_ar, argv), tiny_args(data_dir, deep, "--max_iters=2"))
    assert message.startswith("error: ") and len(message.splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # not the ~34 empty nested folders a plain makedirs leaves


@pytest.mark.parametrize("pid", [1, "parent"])
def test_an_old_lock_naming_an_unrelated_live_process_is_never_answered_with_kill(data_dir, tmp_path, pid):
    """A lock of an earlier version (pid, host, since; no start time) whose pid now belongs to another live
    process: the advice is to remove the file, with its age, never to kill that process."""
    import socket
    pid = os.getppid() if pid == "parent" else pid
    out = tmp_path / "run"
    out.mkdir()
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - 3 * 3600))
    (out / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": since}))
    message = one_line_error(lambda argv: run_training(train_ar, argv), tiny_args(data_dir, str(out), "--max_iters=2"))
    assert "kill" not in message and f"names process {pid} but cannot be checked" in message
    assert f"remove {out / '.lock'}" in message and "3h00m ago" in message
    (out / ".lock").unlink()  # the advice works: the run starts
    run_training(train_ar, tiny_args(data_dir, str(out), "--max_iters=2"))
    assert load_checkpoint(str(out / "ckpt.pt"))["iter"] == 2

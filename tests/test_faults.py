"""Faults lose nothing. Training, --resume, --overwrite and prepare_data.py are killed (SIGKILL) at seeded random
moments, and a sweep is stopped; after each kill every folder must hold a whole old state or a whole new one, load,
and let the next command carry on. The killed processes are forked from this one (no interpreter start per kill),
so the 30+ kill points take seconds."""
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import prepare_data
from conftest import ROOT, tiny_args, tiny_text
from data import load_meta, load_tokens
from runtime import load_checkpoint
from test_training import read_log, train

FORK = multiprocessing.get_context("fork")
RUN = ["--max_iters=60", "--eval_interval=10"]  # a checkpoint at every evaluation


def killed(fn, delay):
    """Run fn() in a forked child and SIGKILL it after `delay` seconds; False if it ended by itself first (then it
    must have succeeded)."""
    def child():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        torch.set_num_threads(1)
        try:
            fn()
        except BaseException:
            os._exit(1)
        os._exit(0)
    process = FORK.Process(target=child)
    process.start()
    process.join(delay)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        return True
    assert process.exitcode == 0
    return False


def whole_run(out, reference):
    """Whether out holds a whole run of `reference` (an uninterrupted run's log): its checkpoints load with finite
    weights, and its log, but a line torn by the kill, is the start of the reference's, up to the checkpoint at
    least. None when out holds no checkpoint yet."""
    if not os.path.exists(os.path.join(out, "ckpt.pt")):
        return None
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    if os.path.exists(os.path.join(out, "best.pt")):
        assert load_checkpoint(os.path.join(out, "best.pt"))["iter"] <= ckpt["iter"]
    with open(os.path.join(out, "log.jsonl")) as f:
        lines = f.read().split("\n")
    log = []
    for line in lines:
        try:
            log.append({k: v for k, v in json.loads(line).items() if k != "elapsed_s"})
        except ValueError:
            break
    assert [r["iter"] for r in log if r["iter"] <= ckpt["iter"]][-1] == ckpt["iter"]
    return log == reference[:len(log)]


@pytest.fixture
def reference(data_dir, tmp_path):
    """The uninterrupted logs of two runs in one folder's place: seed 1337 (the old run) and seed 7 (the new)."""
    logs = {}
    for seed in (1337, 7):
        out = str(tmp_path / f"reference_{seed}")
        train("ar", data_dir, out, *RUN, f"--seed={seed}")
        logs[seed] = read_log(out)
    return logs


def test_kills_during_training_and_resume_leave_a_run_that_ends_as_the_uninterrupted_one(data_dir, tmp_path,
                                                                                            reference):
    rng, out, kills = random.Random(19), str(tmp_path / "run"), 0
    while True:
        resume = ["--resume"] if os.path.exists(os.path.join(out, "ckpt.pt")) else []
        if not killed(lambda: train("ar", data_dir, out, *RUN, *resume), rng.uniform(0.05, 0.5)):
            break
        kills += 1
        assert whole_run(out, reference[1337]) in (True, None)  # None: killed before its first checkpoint
    assert kills >= 10 and read_log(out) == reference[1337]


def test_kills_during_overwrite_leave_the_old_run_whole_or_the_new_one_started(data_dir, tmp_path, reference):
    rng, out, kills, saw = random.Random(20), str(tmp_path / "run"), 0, set()
    train("ar", data_dir, out, *RUN)  # the old run, finished
    while True:
        new_started = whole_run(out, reference[7])
        command = ["--resume"] if new_started else [*RUN, "--seed=7", "--overwrite"]
        if not killed(lambda: train("ar", data_dir, out, *command), rng.uniform(0.05, 0.4)):
            break
        kills += 1
        if not os.path.exists(out):  # killed between the two renames of the switch: the new run is whole beside
            assert whole_run(out + ".new", reference[7])
            saw.add("between")
            continue
        old, new = whole_run(out, reference[1337]), whole_run(out, reference[7])
        assert old or new, "neither the old run whole nor the new one started"
        saw.add("old" if old else "new")
    assert kills >= 8 and saw >= {"old", "new"} and read_log(out) == reference[7]
    assert not os.path.exists(out + ".new") and not os.path.exists(out + ".old")


def test_kills_during_prepare_data_leave_the_old_data_whole_or_the_new_data_whole(tmp_path):
    rng, kills, seen = random.Random(21), 0, set()
    data_dir = str(tmp_path / "data")
    for name, words in (("old.txt", 2000), ("new.txt", 60000)):
        (tmp_path / name).write_text(tiny_text(n_words=words, seed=words))
    args = [f"--data_dir={data_dir}", "--name=corpus", "--tokenizer=bpe", "--vocab_size=400"]
    folder = prepare_data.main(args + [f"--input={tmp_path / 'old.txt'}"])
    sizes = {"old": load_meta(folder)["train_tokens"]}

    def state():
        meta = load_meta(folder)
        for split in ("train", "val"):
            assert len(load_tokens(folder, split, meta)) == meta[f"{split}_tokens"]
        assert np.max(load_tokens(folder, "train", meta)) < meta["n_vocab"]
        return "old" if meta["train_tokens"] == sizes["old"] else "new"

    while True:
        if not killed(lambda: prepare_data.main(args + [f"--input={tmp_path / 'new.txt'}", "--overwrite"]),
                      rng.uniform(0.02, 0.6)):
            break
        kills += 1
        seen.add(state() if os.path.exists(folder) else "between")
        if seen >= {"new"}:  # the new data is in place: the next command keeps it
            break
    assert kills >= 6 and state() == "new" and seen >= {"old", "new"}
    prepare_data.main(args + [f"--input={tmp_path / 'new.txt'}"])  # the next command works: keeps the folder
    assert sorted(os.listdir(data_dir)) == ["corpus"]


def test_a_stopped_sweep_leaves_no_run_behind_and_the_same_command_finishes_it(data_dir, tmp_path):
    out = str(tmp_path / "sweep")
    command = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), "--unique_tokens=2000",
               "--ar_epochs=40", "--diffusion_epochs=40", f"--out={out}", "--jobs=2", "--evals=4", "--",
               *tiny_args(data_dir, "")[:-1]]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(os.path.exists(os.path.join(out, run, "ckpt.pt"))
                                             for run in (os.listdir(out) if os.path.isdir(out) else [])):
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)  # what `kill` sends: the sweep stops its runs, which checkpoint
    sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    runs = [os.path.join(out, run) for run in os.listdir(out) if os.path.isdir(os.path.join(out, run))]
    for run in runs:
        assert not os.path.exists(os.path.join(run, ".lock"))  # no training process left running
        if os.path.exists(os.path.join(run, "ckpt.pt")):
            load_checkpoint(os.path.join(run, "ckpt.pt"))
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-800:] + again.stderr[-800:]
    for run in runs:
        assert read_log(run)[-1]["done"]

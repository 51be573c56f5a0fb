"""Faults lose nothing. Training, --resume, --overwrite and prepare_data.py are killed (SIGKILL) at seeded random
moments, and a sweep is stopped; after each kill every folder must hold a whole old state or a whole new one, load,
and let the next command carry on. The killed processes are forked from this one (no interpreter start per kill),
so the 30+ kill points take seconds."""
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lab import folders, launch
import torch

import prepare_data
from conftest import ROOT, tiny_args
from data import load_meta, load_tokens
from runtime import load_checkpoint
from test_training import read_log, train

FORK = multiprocessing.get_context("fork")
RUN = ["--max_iters=100", "--eval_interval=10"]  # a checkpoint at every evaluation


def killed(fn, delay, after=None):
    """Run fn() in a forked child and SIGKILL it after `delay` seconds (counted from when the path `after` appears,
    if given); False if it ended by itself first (then it must have succeeded)."""
    errors, report = FORK.Pipe(duplex=False)

    def child():
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.stdout = sys.stderr = open(os.devnull, "w")
        torch.set_num_threads(1)
        try:
            fn()
        except BaseException as e:
            report.send(f"{type(e).__name__}: {e}")
            os._exit(1)
        os._exit(0)
    process = FORK.Process(target=child)
    process.start()
    while after and not os.path.exists(after) and process.is_alive():
        time.sleep(0.0005)
    process.join(delay)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        return True
    assert process.exitcode == 0, errors.recv() if errors.poll() else process.exitcode
    return False


def whole_run(out, reference):
    """Whether out holds a whole run of `reference` (an uninterrupted run's log; another run's checkpoint is not):
    ckpt.pt loads with finite weights; the log, but a line torn by the kill, is the start of the reference's, up to
    the checkpoint at least; best.pt is the reference's best evaluation. The log and best.pt may hold the evaluation
    ckpt.pt was about to save: a resumed run redoes it, identically. None when out holds no checkpoint yet."""
    if not os.path.exists(os.path.join(out, "ckpt.pt")):
        return None
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    if ckpt["state"]["best_val"] != min(r["val_loss"] for r in reference if r["iter"] <= ckpt["iter"]):
        return False  # another run's checkpoint
    if os.path.exists(os.path.join(out, "best.pt")):
        best = load_checkpoint(os.path.join(out, "best.pt"))
        assert best["iter"] <= ckpt["iter"] + 10
        assert [r["val_loss"] for r in reference if r["iter"] == best["iter"]] == [best["best_val"]]
    with open(os.path.join(out, "log.jsonl")) as f:
        lines = f.read().split("\n")
    log = []
    for line in lines:
        try:
            log.append({k: v for k, v in json.loads(line).items() if k != "elapsed_s"})
        except ValueError:
            break
    assert len(log) >= sum(r["iter"] <= ckpt["iter"] for r in reference)  # every evaluation up to the checkpoint
    return log == reference[:len(log)]


@pytest.fixture
def reference(data_dir, tmp_path):
    """Two finished runs and their logs: seed 1337 (an old run) and seed 7 (the new run that replaces it)."""
    runs = {}
    for seed in (1337, 7):
        out = str(tmp_path / f"reference_{seed}")
        train("ar", data_dir, out, *RUN, f"--seed={seed}")
        runs[seed] = (out, read_log(out))
    return runs


def test_kills_during_training_and_resume_leave_a_run_that_ends_as_the_uninterrupted_one(data_dir, tmp_path,
                                                                                            reference):
    """Each kind in turn: AR as above; diffusion with dropout, the multiple-choice test and checkpoints between
    evaluations. A run killed again and again ends with the uninterrupted run's log and weights, to the last digit."""
    diffusion = ["--dropout=0.1", "--elbo_samples=4", "--mc_items=20", "--ckpt_interval=7"]
    out = str(tmp_path / "diffusion_reference")
    train("diffusion", data_dir, out, *RUN, *diffusion)
    references = {"ar": (reference[1337][0], []), "diffusion": (out, diffusion)}
    rng, kills, chain = random.Random(19), 0, 0
    while kills < 12 and chain < 40:
        kind = ("ar", "diffusion")[chain % 2]
        (reference_run, options), chain = references[kind], chain + 1
        out, log = str(tmp_path / f"run{chain}"), read_log(reference_run)
        for _ in range(6):  # a fresh run, then --resume after every kill (at most 6), until it ends by itself
            resume = ["--resume"] if os.path.exists(os.path.join(out, "ckpt.pt")) else []
            if not killed(lambda: train(kind, data_dir, out, *RUN, *options, *resume), rng.uniform(0.02, 0.3)):
                break
            kills += 1
            assert whole_run(out, log) in (True, None)  # None: killed before its first checkpoint
        else:
            resume = ["--resume"] if os.path.exists(os.path.join(out, "ckpt.pt")) else []
            train(kind, data_dir, out, *RUN, *options, *resume)
        assert read_log(out) == log  # every loss to the last digit, as if never killed
        a, b = load_checkpoint(out + "/ckpt.pt")["model"], load_checkpoint(reference_run + "/ckpt.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a) and not os.path.exists(os.path.join(out, ".lock"))
    assert kills >= 12 and chain >= 2  # both kinds


def test_kills_during_overwrite_leave_the_old_run_whole_or_the_new_one_started(data_dir, tmp_path, reference):
    rng, seen = random.Random(20), set()
    (old_run, old_log), (_, new_log) = reference[1337], reference[7]

    def command(out):
        return ["--resume"] if whole_run(out, new_log) else [*RUN, "--seed=7", "--overwrite"]

    for chain in range(5):  # 10 kill points
        out = str(tmp_path / f"run{chain}")
        shutil.copytree(old_run, out)
        # the first kill falls while the new run makes its first evaluation and checkpoint beside the old run (a few
        # ms), the second one later: --overwrite again if the old run is still there, else --resume
        for delay, after in ((rng.uniform(0.0, 0.008), out + ".new"), (rng.uniform(0.02, 0.3), None)):
            if not killed(lambda: train("ar", data_dir, out, *command(out)), delay, after):
                continue
            if not os.path.exists(out):  # killed between the switch's two renames: the new run is whole beside it
                assert whole_run(out + ".new", new_log)
                seen.add("between")
                continue
            old, new = whole_run(out, old_log), whole_run(out, new_log)
            assert old or new, "neither the old run whole nor the new one started"
            seen.add("old" if old else "new")
        train("ar", data_dir, out, *command(out))  # the next command works
        assert read_log(out) == new_log
        assert not os.path.exists(out + ".new") and not os.path.exists(out + ".old")
    assert seen >= {"old", "new"}


def test_kills_during_prepare_data_leave_the_old_data_whole_or_the_new_data_whole(tmp_path):
    rng, kills, seen = random.Random(21), 0, set()
    old_args = [f"--data_dir={tmp_path / 'old'}", "--name=corpus"]  # the default corpus in bytes
    new_args = [f"--data_dir={tmp_path / 'data'}", "--name=corpus", "--tokenizer=bpe", "--vocab_size=512"]
    old = launch.prepare_run(old_args)
    folder = os.path.join(tmp_path, "data", "corpus")
    tokenizers = {"bytes": "old", "bpe": "new"}

    def state():
        meta = load_meta(folder)
        for split in ("train", "val"):
            tokens = load_tokens(folder, split)
            assert len(tokens) == meta[f"{split}_tokens"] and np.max(tokens) < meta["n_vocab"]
        return tokenizers[meta["tokenizer"]]

    for _ in range(30):
        if kills >= 8:
            break
        shutil.rmtree(tmp_path / "data", ignore_errors=True)
        shutil.copytree(old, folder)
        for _ in range(2):  # two kills at most, then the command runs to its end
            if not killed(lambda: launch.prepare_run(new_args + ["--overwrite"]), rng.uniform(0.01, 0.5)):
                break
            kills += 1
            seen.add(state() if os.path.exists(folder) else "between")
        else:
            launch.prepare_run(new_args + ["--overwrite"])
        assert state() == "new" and sorted(os.listdir(tmp_path / "data")) == ["corpus"]
    assert kills >= 8 and "old" in seen  # the new data comes whole or not at all; the switch is too short to hit


def test_a_stopped_sweep_leaves_no_run_behind_and_the_same_command_finishes_it(data_dir, tmp_path):
    """`kill` (SIGTERM) of a sweep while a run trains: the sweep stops its runs, which keep their last checkpoint,
    and exits 130; the same command then resumes them, stops again at --time_budget_s, and finishes them without
    it."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import sweep
    from lab.errors import run_cli
    out = str(tmp_path / "sweep")
    # 310 iterations: long enough that the run is still training when the SIGTERM comes, even on a loaded machine
    args = ["--unique_tokens=2000", "--ar_epochs=40", "--diffusion_epochs=", f"--out={out}", "--evals=2", "--",
            *tiny_args(data_dir, "")[:-1]]

    def stoppable_sweep():
        signal.signal(signal.SIGTERM, sweep.stop_on_sigterm)  # as when run as a script
        run_cli(lambda: sweep.main(args))
    process = FORK.Process(target=stoppable_sweep)
    process.start()
    ckpt = os.path.join(out, "ar_e40", "ckpt.pt")
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(ckpt):
        time.sleep(0.01)
    process.terminate()  # SIGTERM
    process.join(60)
    assert process.exitcode == 130
    assert not os.path.exists(os.path.join(out, "ar_e40", ".lock"))  # no training process left running
    assert not read_log(os.path.join(out, "ar_e40"))[-1]["done"] and load_checkpoint(ckpt)["iter"] < 310
    # the same command with a time budget: the run resumes, stops at the budget with a checkpoint, and says so
    assert sweep.main(args[:4] + ["--time_budget_s=0.01"] + args[4:]) is None
    stopped = load_checkpoint(ckpt)["iter"]
    assert stopped < 310 and not read_log(os.path.join(out, "ar_e40"))[-1]["done"]
    rows = sweep.main(args)  # and without one it finishes the run
    log = read_log(os.path.join(out, "ar_e40"))
    iters = [r["iter"] for r in log]
    assert rows[0]["run"].endswith("ar_e40") and log[-1]["done"] and iters == sorted(set(iters))
    assert iters[-1] == 310 and rows[0]["epochs"] == pytest.approx(310 * 8 / ((2000 - 1) // 32), abs=1e-4)


def test_a_killed_sweeps_run_dies_with_it_and_the_next_sweep_skips_a_run_still_at_work(data_dir, tmp_path, capsys):
    """SIGKILL cannot be caught, so the sweep's runs ask the kernel to be stopped when it dies (Linux): the run
    stops with its checkpoint and frees its folder. A run another process still holds is skipped, not failed."""
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import sweep
    out = str(tmp_path / "sweep")
    args = ["--unique_tokens=2000", "--ar_epochs=400", "--diffusion_epochs=", f"--out={out}", "--evals=2", "--",
            *tiny_args(data_dir, "")[:-1]]
    process = FORK.Process(target=sweep.main, args=(args,))
    process.start()
    lock = os.path.join(out, "ar_e400", ".lock")
    deadline = time.time() + 60
    while time.time() < deadline and not os.path.exists(os.path.join(out, "ar_e400", "ckpt.pt")):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    deadline = time.time() + 30
    while time.time() < deadline and os.path.exists(lock):
        time.sleep(0.05)
    assert not os.path.exists(lock)  # the run ended (and released its folder) without its sweep
    with open(lock, "w") as f:  # now a live process holds the run, as one started by hand would
        f.write(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}))
    capsys.readouterr()
    failed = sweep.train_all([{"name": "ar_e400", "kind": "ar", "options": []}], sweep.SweepConfig(out=out),
                             jobs=1, t_start=time.time())
    assert failed == [] and f"skipped {os.path.join(out, 'ar_e400')}: it is in use by process {os.getppid()}" in \
        capsys.readouterr().out


# ----------------------------------------------------------------------------- one writer, and the data under a run

@pytest.fixture
def live_pid():
    """The pid of a live process that is not this one."""
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def lock_of(pid):
    """A lock as this version writes it for process pid (its start time and boot make it checkable)."""
    return json.dumps({"pid": pid, "host": socket.gethostname(), "since": "2026-01-01 00:00:00",
                       "started": folders.process_start(pid), "boot": folders.boot_id()})


def test_data_is_prepared_by_one_writer_and_never_replaced_under_a_live_run(data_dir, tmp_path, live_pid):
    folder = os.path.join(data_dir, "tiny")
    args = [f"--data_dir={data_dir}", "--name=tiny", "--overwrite"]
    before = {name: os.path.getmtime(os.path.join(folder, name)) for name in os.listdir(folder)}
    with open(folder + ".lock", "w") as f:  # a second prepare_data.py at work on the folder
        f.write(lock_of(live_pid))
    with pytest.raises(ValueError, match=f"tiny is in use by process {live_pid} on "):
        launch.prepare_run(args)
    with pytest.raises(ValueError, match=f"tiny is being prepared by process {live_pid} on .*wait"):
        train("ar", data_dir, str(tmp_path / "run"), "--max_iters=2")  # and no run starts on it meanwhile
    os.remove(folder + ".lock")
    os.makedirs(os.path.join(folder, ".readers"))
    with open(os.path.join(folder, ".readers", "a-run"), "w") as f:  # a live training run reads the folder
        f.write(lock_of(live_pid))
    with pytest.raises(ValueError, match=f"tiny is read by a training run, process {live_pid} on this machine .*wait"):
        launch.prepare_run(args)
    assert {name: os.path.getmtime(os.path.join(folder, name)) for name in before} == before  # untouched
    assert not os.path.exists(folder + ".new") and not os.path.exists(folder + ".lock")
    with open(os.path.join(folder, ".readers", "a-run"), "w") as f:  # the run has ended: its mark is stale
        f.write(lock_of(999_999_999))
    train("ar", data_dir, str(tmp_path / "run"), "--max_iters=2")  # a run marks the data only while it lives
    assert os.listdir(os.path.join(folder, ".readers")) == ["a-run"]
    with pytest.raises(ValueError, match="already holds data prepared from other text"):
        launch.prepare_run(args[:-1])  # other text, no --overwrite: refused
    launch.prepare_run(args)
    assert sorted(os.listdir(data_dir)) == ["tiny"] and not os.path.exists(os.path.join(folder, ".readers"))


def test_a_checkpoint_of_another_version_is_refused_in_one_line_naming_its_options(data_dir, tmp_path):
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=20", "--eval_interval=10", "--stop_after_s=0.0001")
    ckpt = load_checkpoint(out + "/ckpt.pt")
    ckpt["config"]["random_offsets"] = False  # an option an earlier version had
    torch.save(ckpt, out + "/ckpt.pt")
    with pytest.raises(ValueError, match="another version of this project \\(options random_offsets"):
        train("ar", data_dir, out, "--resume")


def test_a_diverging_run_never_saves_non_finite_weights_and_its_last_good_checkpoint_samples(data_dir, tmp_path):
    """A learning rate past float32's range: the weights are not finite after one step while that step's loss was
    still finite, so the check before each save must look at the weights too."""
    out = str(tmp_path / "run")
    diverging = ["--lr=1e39", "--warmup_iters=0", "--eval_interval=1", "--max_iters=20"]
    with pytest.raises(ValueError, match=r"the weights are not finite: stopped; its last good checkpoint, .*ckpt.pt "
                                         r"at iteration (\d+), is kept") as stop:
        train("ar", data_dir, out, *diverging)
    named = int(re.search(r"at iteration (\d+)", str(stop.value)).group(1))
    assert named == load_checkpoint(os.path.join(out, "ckpt.pt"))["iter"]  # the message names the file on disk
    for name in ("ckpt.pt", "best.pt"):
        ckpt = load_checkpoint(os.path.join(out, name))
        assert ckpt["iter"] <= 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    with pytest.raises(ValueError, match="not finite"):
        train("ar", data_dir, out, *diverging, "--resume")  # it diverges again: one line, the checkpoint kept
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iter"] <= 1
    launch.sample_run([f"--ckpt={out}", "--max_new_tokens=8", "--num_samples=1"])  # the kept weights sample


def test_a_switch_killed_between_its_two_renames_is_finished_by_the_next_command(data_dir, tmp_path, reference):
    """The state a kill leaves between the switch's renames (microseconds, so built here by hand): the old run moved
    aside to .old, the new one whole in .new, out_dir missing. The next command puts the new run in place."""
    (old_run, _), (new_run, new_log) = reference[1337], reference[7]
    out = str(tmp_path / "run")
    shutil.copytree(old_run, out + ".old")
    shutil.copytree(new_run, out + ".new")
    train("ar", data_dir, out, *RUN, "--seed=7", "--resume")  # a finished run: nothing to train, the switch done
    assert read_log(out) == new_log and sorted(os.listdir(tmp_path)) == ["data", "reference_1337", "reference_7",
                                                                         "run"]
    # the same for a data folder: prepare_data.py finishes it, then keeps the data it finds prepared
    folder = os.path.join(data_dir, "corpus")
    old = launch.prepare_run([f"--data_dir={data_dir}", "--name=corpus"])
    os.rename(old, folder + ".new")
    shutil.copytree(os.path.join(data_dir, "tiny"), folder + ".old")
    assert launch.prepare_run([f"--data_dir={data_dir}", "--name=corpus"]) == folder
    assert load_meta(folder)["inputs_sha256"] and sorted(os.listdir(data_dir)) == ["corpus", "tiny"]


KILLED_WHILE_THE_LOG_IS_TRIMMED = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from lab import folders
real_open = open


class Dying:  # a file that the process is killed while writing, after open() has done what it does to the file
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.f.close()

    def writelines(self, lines):
        self.f.writelines(lines[:1])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)


folders.open = lambda path, mode="r": Dying(real_open(path, mode)) if "w" in mode else real_open(path, mode)
folders.start_log(sys.argv[2], 10)
"""


def test_a_resumed_run_killed_while_it_trims_its_log_leaves_the_log_whole(tmp_path):
    """A resume keeps the log's lines up to its checkpoint and drops the rest; a kill in the middle of that leaves
    the previous log (found when a kill at a random moment left a checkpoint beside an empty log.jsonl), and the
    next writer of the folder removes the half-written temporary."""
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"iter": i, "val_loss": 3.0 - i / 100}) + "\n" for i in (0, 10, 20)]
    log.write_text("".join(lines))
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_THE_LOG_IS_TRIMMED, ROOT, str(log)])
    assert killed.returncode == -signal.SIGKILL
    assert log.read_text() == "".join(lines)
    from lab import folders
    folders.remove_killed_writes(str(tmp_path))
    assert os.listdir(tmp_path) == ["log.jsonl"]
    folders.start_log(str(log), 10)  # and without a kill, the evaluation after the checkpoint is dropped
    assert log.read_text() == "".join(lines[:2])


def test_a_lock_is_never_blocked_for_good_by_a_reused_pid_and_another_machines_names_its_way_out(data_dir, tmp_path,
                                                                                               live_pid, capsys):
    """A lock records its process's start time: a live process with the same pid that started at another time is not
    the writer (taken over, with a note). Another machine's lock cannot be checked: refused, naming the file to
    remove; removing it lets the run start. The same for a data folder's reader marks."""
    from lab.folders import process_start
    out = tmp_path / "run"
    out.mkdir()
    reused = dict(json.loads(lock_of(live_pid)), started=process_start(live_pid) + 1)
    (out / ".lock").write_text(json.dumps(reused))
    train("ar", data_dir, str(out), "--max_iters=2")
    assert "was locked by a process that has ended: taking the lock over" in capsys.readouterr().out
    (out / ".lock").write_text(json.dumps(dict(json.loads(lock_of(live_pid)), started=process_start(live_pid))))
    with pytest.raises(ValueError, match=f"in use by process {live_pid} on this machine .*kill {live_pid}"):
        train("ar", data_dir, str(out), "--resume")  # the same pid and start time: the writer itself, alive
    (out / ".lock").write_text(json.dumps({"pid": 4242, "host": "colab-runtime-gone", "since": "2026-01-01 00:00:00"}))
    message = f"on another machine, colab-runtime-gone .*remove {re.escape(str(out / '.lock'))} and run this again"
    with pytest.raises(ValueError, match=message):
        train("ar", data_dir, str(out), "--resume")
    os.remove(out / ".lock")  # the way out the message names
    train("ar", data_dir, str(out), "--resume", "--stop_after_s=0")
    readers = os.path.join(data_dir, "tiny", ".readers")
    os.makedirs(readers, exist_ok=True)
    mark = os.path.join(readers, "colab-runtime-gone-4242")
    with open(mark, "w") as f:
        f.write(json.dumps({"pid": 4242, "host": "colab-runtime-gone", "since": "2026-01-01 00:00:00"}))
    with pytest.raises(ValueError, match=f"read by a training run, .*remove {re.escape(mark)} and run this again"):
        launch.prepare_run([f"--data_dir={data_dir}", "--name=tiny", "--overwrite"])


def test_a_writer_killed_while_it_took_the_lock_leaves_a_temporary_the_next_writer_removes(data_dir, tmp_path,
                                                                                              live_pid):
    """A SIGKILL between writing the lock's temporary and removing it leaves `.lock.PID.tmp`: the next writer removes
    those of ended processes (whole or half-written), and keeps a live process's and another machine's; a checkpoint
    killed while it was saved leaves `NAME.PID.tmp`, which the run that next holds the folder removes."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / f".lock.{ended.pid}.tmp").write_text(lock_of(ended.pid))
    (out / f".lock.{ended.pid + 100000}.tmp").write_text('{"pid": ')  # killed while writing it
    (out / f".lock.{live_pid}.tmp").write_text(lock_of(live_pid))  # a writer taking the lock right now
    (out / ".lock.4242.tmp").write_text(json.dumps({"pid": 4242, "host": "colab-runtime-gone"}))
    (out / f"best.pt.{ended.pid}.tmp").write_bytes(b"PK half a checkpoint")  # killed while saving one
    train("ar", data_dir, str(out), "--max_iters=2")
    left = sorted(p for p in os.listdir(out) if p.endswith(".tmp"))
    assert left == sorted([f".lock.{live_pid}.tmp", ".lock.4242.tmp"])


def test_a_full_disk_is_one_line_naming_the_file_and_the_space_and_leaves_nothing_half_written(data_dir, tmp_path,
                                                                                               monkeypatch):
    """torch.save on a full disk raises its RuntimeError (inline_container's 'file write failed'); every writer
    then says so in one line and leaves no temporary file, and the previous checkpoint still loads."""
    import shutil as shutil_module
    from collections import namedtuple
    from lab.errors import run_cli
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=20", "--eval_interval=10", "--stop_after_s=1e-9")
    before = load_checkpoint(os.path.join(out, "ckpt.pt"))["iter"]
    real_save, usage = torch.save, namedtuple("usage", "total used free")

    def full_disk_save(obj, path):
        open(path, "wb").close()  # torch leaves what it began
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")
    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 50 << 10))
    with pytest.raises(ValueError, match=r"(best|ckpt).pt: the disk is full \(the file needs about [\d.,]+ MB, "
                                        r"0.0 MB are free\): free some space or choose another --out_dir; the "
                                        r"previous (best|ckpt).pt is kept"):
        train("ar", data_dir, out, "--resume", "--stop_after_s=0")
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt.pt", "log.jsonl"]  # no temporary file, no lock
    assert load_checkpoint(os.path.join(out, "ckpt.pt"))["iter"] == before
    # prepare_data.py: the half-written folder beside the old one goes
    def prepare_on_a_full_disk(*args, **options):
        os.makedirs(os.path.join(data_dir, "other.new"))  # begun, then the disk fills
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(prepare_data, "prepare", prepare_on_a_full_disk)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: launch.prepare_run([f"--data_dir={data_dir}", "--name=other"]))
    assert re.fullmatch(r"error: .*other.new: the disk is full \(the token files need up to [\d.,]+ MB, 0.0 MB are "
                        r"free\): free some space or choose another --data_dir", stop.value.code), stop.value.code
    assert sorted(os.listdir(data_dir)) == ["tiny"]
    # a log line that does not fit (no file name in the error): one line still
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert stop.value.code == "error: No space left on device: free some space, or write elsewhere"


def test_a_plot_that_cannot_be_written_leaves_no_empty_picture(data_dir, tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.figure
    import compare
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=10", "--eval_interval=5")

    def full_disk(self, path, **options):
        open(path, "wb").close()  # begun, then the disk fills
        raise OSError(28, "No space left on device", path)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(ValueError, match="--plot .*cannot write it \\(No space left on device\\)"):
        compare.main([out, f"--plot={tmp_path / 'p.png'}"])
    assert not any(name.startswith("p.png") for name in os.listdir(tmp_path))

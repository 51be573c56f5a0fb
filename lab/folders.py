"""
Folders that lose nothing: one writer per folder (a lock file with the writer's pid and host), and a folder
replaced all or nothing (the new one is written whole beside it and renamed into its place). Training uses them
for its run folder (--overwrite), prepare_data.py for data folders; a training run also marks its data folder as
read, so that prepare_data.py does not replace the data under it.
"""
import atexit
import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import time

import torch

from lab.errors import UserError
from tokenizer import RANKS_FILE
from trainer import fmt_time

LOCK_FILE = ".lock"


def replace_whole(path, write, suffix=""):
    """Put a new `path` in place whole: write(tmp) fills a temporary of this process's own name (`path.PID.tmp`, plus
    `suffix` where the writer needs an extension), then one rename replaces the file. A failure or Ctrl-C removes the
    temporary and leaves the previous file; a SIGKILL's is removed by the folder's next writer
    (remove_killed_writes)."""
    tmp = f"{path}.{os.getpid()}.tmp{suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def take_lock(path, folder):
    """Make this process the one writer of `folder`: the lock file `path`, with its pid and host, created atomically
    and whole (written under a temporary name, then hard-linked to `path`, which fails if it exists), removed by
    release_lock or at exit. A lock whose process has ended (on this host) is taken over, with a note; a live one is
    a UserError that names it."""
    remove_dead_writers_temporaries(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(this_process(), f)
    except BaseException:  # a full disk: no empty lock file left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        while True:
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                holder = lock_holder(path)
                if holder is not None:
                    raise UserError(f"{folder} is in use by {holder_text(holder, path)}") from None
                print(f"note: {folder} was locked by a process that has ended: taking the lock over")
                try:
                    os.remove(path)
                except FileNotFoundError:  # another process took it over first: try again
                    pass
    finally:
        os.remove(tmp)
    atexit.register(release_lock, path)
    return path


def remove_dead_writers_temporaries(path):
    """Remove the `path.PID.tmp` files of processes killed while they took the lock (a SIGKILL runs no cleanup):
    those lock_holder finds stale, if their process (named by the file) is not alive still writing one."""
    for tmp in glob.glob(glob.escape(path) + ".*.tmp"):
        pid = tmp[len(path) + 1:-len(".tmp")]
        if lock_holder(tmp) is None and not (pid.isdigit() and process_alive(int(pid))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def this_process():
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "started": process_start(os.getpid()), "boot": boot_id()}


def process_start(pid):
    """When process `pid` started, in clock ticks since boot (Linux's /proc; None elsewhere or if it is gone): with
    the pid, it names one process, so a pid the system has since given to another process is not taken as the
    writer."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name in parentheses
    except (OSError, ValueError, IndexError):
        return None


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def lock_holder(path):
    """The live process that holds a lock file ({pid, host, since, ...}), or None when it is stale: its process ended
    (or its pid now names another process, or the machine rebooted since), or it is this process's own (a run
    before, in the same Python), or it is not a lock this project wrote (locks are created whole). Another
    machine's process cannot be checked: it is taken to be alive."""
    try:
        with open(path) as f:
            holder = json.load(f)
        pid, host = int(holder["pid"]), holder["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return holder
    if pid == os.getpid() or (holder.get("boot") and boot_id() and holder["boot"] != boot_id()):
        return None
    if not process_alive(pid):
        return None
    if holder.get("started") is not None and process_start(pid) not in (None, holder["started"]):
        return None  # the pid was reused by a process that started later
    return holder


def holder_text(holder, path):
    """Who holds a lock, since when, and the way out, in words."""
    since = holder.get("since", "?")
    try:
        since += f", {fmt_time(time.time() - time.mktime(time.strptime(since, '%Y-%m-%d %H:%M:%S')))} ago"
    except (ValueError, OverflowError):
        pass
    if holder["host"] != socket.gethostname():  # a shared or copied disk, a recycled Colab runtime
        return (f"process {holder['pid']} on another machine, {holder['host']} (since {since}): it cannot be checked "
                f"from here; if it no longer runs there, remove {path} and run this again")
    if holder.get("started") is None or process_start(int(holder["pid"])) != holder["started"]:
        # an earlier version's lock (no start time), or no /proc: its pid may now be any process, never ours to kill
        return (f"a lock written {since} that names process {holder['pid']} but cannot be checked (an earlier "
                f"version's lock, or no /proc here): if no run of this project uses it now, remove {path} and run "
                f"this again")
    return (f"process {holder['pid']} on this machine (since {since}): wait for it to end, or stop it "
            f"(kill {holder['pid']})")


def release_lock(path):
    """Remove a lock this process holds (nothing if it is gone or another process's)."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        os.remove(path)
    except (OSError, ValueError):
        pass


def atomic_save(obj, path):
    """Write to a temporary file, then rename: a kill mid-save leaves the previous file intact. The temporary name
    is this process's own, and an error or Ctrl-C mid-save removes it; a full disk is one line (a UserError)."""
    try:
        replace_whole(path, lambda tmp: torch.save(obj, tmp))
    except BaseException as e:
        if not isinstance(e, (OSError, RuntimeError)):  # Ctrl-C and the like: nothing to say about the disk
            raise
        needed, free = tensor_bytes(obj), free_bytes(path)
        if disk_full(e, needed, free):
            raise UserError(f"{path}: the disk is full (the file needs about {needed / 2**20:,.1f} MB, "
                            f"{free / 2**20:,.1f} MB are free): free some space or choose another --out_dir; the "
                            f"previous {os.path.basename(path)} is kept") from None
        raise


def free_bytes(path):
    """Free space on the disk that holds path (or its nearest existing parent)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


def disk_full(error, needed, free):
    """Whether a write failed because the disk filled: ENOSPC, or an error that carries no errno (numpy's short
    write 'N requested and M written', torch's inline-container error) while less than `needed` is free."""
    if getattr(error, "errno", None) == errno.ENOSPC:
        return True
    return isinstance(error, (OSError, RuntimeError)) and getattr(error, "errno", None) is None and free < needed


def make_folders(path):
    """os.makedirs(path); returns the folders it created, deepest first. If it fails (a name too long, a
    read-only parent), none of them is left behind."""
    created, folder = [], os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        remove_folders(created)
        raise
    return created


def remove_folders(created):
    """Remove the empty folders make_folders created (deepest first); a folder something else wrote into stays."""
    for folder in created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def tensor_bytes(obj):
    """The bytes of every tensor in a nest of dicts, lists and tuples (what torch.save writes, near enough)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


# ----------------------------------------------------------------------------- replacing a folder whole

def put_in_place(new, folder):
    """Rename the whole folder `new` to `folder`, replacing what was there: the rename of the old folder aside is
    the moment of the switch, and finish_switch completes one that a kill interrupted."""
    if os.path.exists(folder):
        os.rename(folder, f"{folder}.old")
    os.rename(new, folder)
    shutil.rmtree(f"{folder}.old", ignore_errors=True)


def finish_switch(folder, is_whole):
    """A replacement killed between its two renames left `folder` missing and the whole new one (is_whole(path))
    beside it: put it in place, since the switch had happened (the old folder was already moved aside). Another
    process (a DDP rank) finishing it at the same moment is fine."""
    if not os.path.exists(folder) and os.path.isdir(f"{folder}.new") and is_whole(f"{folder}.new"):
        try:
            os.rename(f"{folder}.new", folder)
        except OSError:
            if not os.path.exists(folder):
                raise


def settle_replacement(folder):
    """Remove what an interrupted replacement left beside `folder` (the caller holds its lock, after finish_switch):
    a new folder that never took its place, and an old one moved aside."""
    for leftover in (f"{folder}.new", f"{folder}.old"):
        shutil.rmtree(leftover, ignore_errors=True)


# ----------------------------------------------------------------------------- a run's folder

def run_is_whole(folder):
    return os.path.isfile(os.path.join(folder, "ckpt.pt"))


RUN_FILES = ("ckpt.pt", "best.pt", "best_choice.pt", "log.jsonl")  # what a training run writes
DATA_FILES = ("meta.json", "train.bin", "val.bin", RANKS_FILE, "val_files.txt", ".readers")  # prepare_data.py


def found(folder, names):
    """Which of `names` are in folder (none if it is no folder)."""
    return [name for name in names if os.path.exists(os.path.join(folder, name))]


def foreign_files(folder):
    """What a data folder holds that prepare_data.py does not write (its own temporaries aside)."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return [n for n in names if n not in DATA_FILES and not n.endswith(".tmp")]


def remove_killed_writes(folder):
    """The half-written `NAME.PID.tmp` files (checkpoints) a killed writer left in a run folder this process has
    just locked: no other process writes there now. Lock temporaries are left to remove_dead_writers_temporaries."""
    for name in os.listdir(folder):
        parts = name.split(".")
        if name.endswith(".tmp") and len(parts) > 2 and parts[-2].isdigit() and not name.startswith(LOCK_FILE + "."):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))


def claim_run_folder(out_dir, resuming, overwrite):
    """Lock out_dir for this run and return the folder it writes first: out_dir itself, or, when --overwrite
    replaces a run there, a fresh `<out_dir>.new` beside it that takes out_dir's place at its first checkpoint
    (put_in_place), so a kill at any moment leaves the old run whole or the new one started. A folder that holds a
    run is refused without --resume or --overwrite. (trainer.configure has already run finish_switch.)"""
    created = make_folders(out_dir)
    try:
        take_lock(os.path.join(out_dir, LOCK_FILE), out_dir)
    except BaseException:  # a refused or unwritable folder: none of the folders made for it is left
        remove_folders(created)
        raise
    remove_killed_writes(out_dir)
    settle_replacement(out_dir)
    holds_run = run_is_whole(out_dir)
    if not resuming and holds_run and not overwrite:
        release_lock(os.path.join(out_dir, LOCK_FILE))
        raise UserError(f"{out_dir} already holds a run: continue it with --resume, start over with --overwrite, or "
                        f"choose another --out_dir")
    if not resuming and holds_run:
        new = f"{out_dir}.new"
        os.makedirs(new)
        take_lock(os.path.join(new, LOCK_FILE), out_dir)
        return new
    if not resuming and os.path.exists(os.path.join(out_dir, "log.jsonl")):
        print(f"{out_dir} holds no checkpoint (an earlier start stopped before its first one): starting afresh there")
    return out_dir


def start_log(path, resume_iter):
    """log.jsonl, to append to: a fresh run's starts empty; a resumed run's keeps its lines up to its checkpoint's
    iteration (evaluations after it, and a line torn by a kill, are dropped: they are redone). Replaced whole, so a
    kill while it is trimmed leaves the previous log, never an empty one."""
    kept = []
    if resume_iter is not None and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["iter"] <= resume_iter:
                        kept.append(line)
                except ValueError:
                    break

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)
    replace_whole(path, write)


class RunFolder:
    """Everything a training run holds on disk, claimed on entry and released on exit: out_dir's lock (one
    writer), the data folder's reader mark (prepare_data.py leaves the data alone meanwhile) and log.jsonl. With
    --overwrite over a run, the new run writes into `<out_dir>.new` until its first checkpoint, where `checkpointed`
    puts it in out_dir's place. Only one DDP process writes: with writer=False it does nothing."""

    def __init__(self, out_dir, data_dir, resume_iter, overwrite, writer=True):
        self.out_dir, self.data_dir, self.resume_iter, self.overwrite = out_dir, data_dir, resume_iter, overwrite
        self.writer, self.path = writer, None  # path: the folder written now (out_dir, or <out_dir>.new)

    def __enter__(self):
        if self.writer:
            self.data_mark = hold_data(self.data_dir)
            self.path = claim_run_folder(self.out_dir, self.resume_iter is not None, self.overwrite)
            start_log(os.path.join(self.path, "log.jsonl"), self.resume_iter)
        return self

    def append_log(self, record):
        if self.writer:
            with open(os.path.join(self.path, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, name, obj):
        atomic_save(obj, os.path.join(self.path, name))

    def checkpointed(self):
        """After a checkpoint: a new run written beside the old one (--overwrite) takes out_dir's place."""
        if self.writer and self.path != self.out_dir:
            put_in_place(self.path, self.out_dir)
            self.path = self.out_dir
            atexit.register(release_lock, os.path.join(self.out_dir, LOCK_FILE))  # the lock moved with its folder

    def __exit__(self, *exception):
        if self.writer:
            for lock in {os.path.join(self.out_dir, LOCK_FILE), os.path.join(self.path, LOCK_FILE), self.data_mark}:
                release_lock(lock)
        return False


# ----------------------------------------------------------------------------- a data folder

def data_lock(data_dir):
    """The lock file of a data folder: beside it, since prepare_data.py replaces the folder whole."""
    return f"{data_dir.rstrip(os.sep)}.lock"


def hold_data(data_dir):
    """Mark data_dir as read by this live process (a file in data_dir/.readers, removed at exit), so that
    prepare_data.py does not replace it under a run; refuse data that prepare_data.py is writing now. A read-only
    folder is not marked. Returns the mark's path, for release_lock."""
    holder = lock_holder(data_lock(data_dir)) if os.path.exists(data_lock(data_dir)) else None
    if holder is not None:
        raise UserError(f"{data_dir} is being prepared by {holder_text(holder, data_lock(data_dir))}")
    path = os.path.join(data_dir, ".readers", f"{socket.gethostname()}-{os.getpid()}")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(this_process(), f)
    except OSError:
        return path
    atexit.register(release_lock, path)
    return path


def data_readers(data_dir):
    """The live processes that hold data_dir (hold_data), as {pid, host, since, ..., path: the mark's file}."""
    folder = os.path.join(data_dir, ".readers")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    marks = [(os.path.join(folder, name), lock_holder(os.path.join(folder, name))) for name in names]
    return [dict(holder, path=path) for path, holder in marks if holder is not None]

"""
The command-line entry points: each puts the lab's checks and guards in front of a core script, which calls it
from its last lines (`from lab import launch; launch.train(...)`). Nothing is written before every check has passed; a bad
input is one line and exit status 1; a fault loses nothing (locks, whole-file and whole-folder writes).
"""
import ctypes
import hashlib
import json
import os
import re
import shutil
import sys
import time

import torch
import torch.distributed as dist

import downstream
import runtime
import trainer
from config import TrainConfig
from data import training_data
from lab import checks, folders
from lab.errors import UserError, run_cli
from model import shape_problem

# ----------------------------------------------------------------------------- the CPU allocator

KEPT_MMAP_THRESHOLD = 32 << 20  # blocks up to 32 MB (glibc's largest setting) come from the heap, not mmap
KEPT_TRIM_THRESHOLD = 1 << 30  # and up to 1 GB of freed heap stays with the process


def keep_freed_cpu_memory():
    """glibc hands freed blocks of 128 KB and more back to the system and the next step's activations fault them in
    again, zeroed page by page: thousands of page faults a step, ~12% of a small model's CPU training time. Keep
    freed memory in the process for reuse instead. Only where glibc's mallopt exists, and not over a user's own
    MALLOC_* or GLIBC_TUNABLES setting."""
    if any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, TypeError, AttributeError):  # not glibc (macOS, Windows, musl without it)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, KEPT_MMAP_THRESHOLD)
    mallopt(m_trim_threshold, KEPT_TRIM_THRESHOLD)


def kept_memory_environment():
    """The environment variables that make keep_freed_cpu_memory's setting in another program (glibc reads them)."""
    return {"MALLOC_MMAP_THRESHOLD_": str(KEPT_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(KEPT_TRIM_THRESHOLD)}


def checked_device(name):
    """The device a script runs on, checked; on the CPU, freed memory is kept for reuse."""
    device = checks.named_device(name) or runtime.pick_device("auto")
    if device.type == "cpu":
        keep_freed_cpu_memory()
    return device


# ----------------------------------------------------------------------------- training

def configure(objective, argv):
    """(config, checkpoint to resume or None, the options given): the command line, --resume's rules and every check of the options
    and the data, before anything is read by the core or written."""
    config = TrainConfig()
    given = checks.parse_checked(argv, config, doc=objective.__doc__)
    config.out_dir = config.out_dir or os.path.join("out", objective.KIND)
    folders.finish_switch(config.out_dir, folders.run_is_whole)  # before anything reads the folder
    data = folders.found(config.out_dir, folders.DATA_FILES[:3])
    if data:  # a data folder is never a run folder: prepare_data.py --overwrite would delete the run with it
        raise UserError(f"--out_dir {config.out_dir} holds prepared data ({', '.join(data)}), not a run: choose "
                        f"another --out_dir")
    ckpt = None
    if config.resume:
        config, ckpt = checks.checkpoint_to_resume(config, given, objective.KIND)
    problem = shape_problem(config.n_embd, config.n_head)
    if problem:
        raise UserError(problem)
    checked_device(config.device)
    checks.check_training_data(config, ckpt)
    if ckpt is not None:
        checks.checked_model(ckpt)
    return config, ckpt, given


def choice_items(config):
    """The multiple-choice items scored at every evaluation (downstream.py), from the val split's selection files
    (evaluate.py's held-out test set is the other files), or None with --mc_items=0."""
    if not config.mc_items:
        return None
    meta, _, val_tokens = training_data(config)
    return downstream.build_items(val_tokens, config.mc_items, *downstream.item_lengths(meta, config.block_size),
                                  seed=config.eval_seed, files=downstream.item_set(val_tokens, meta, "selection"))


class LabHooks(trainer.Hooks):
    """The lab's work inside the loop: nothing non-finite reaches a file, --stop_after_s, and the multiple-choice
    accuracy at every evaluation with its best weights (best_choice.pt)."""

    def __init__(self, items, saved_iter=None):
        self.items, self.first_nonfinite, self.best_choice, self.start_iter = items, None, None, None
        self.saved_iter = saved_iter  # the iteration of the checkpoint on disk (a resumed run's, at first)

    def after_step(self, run, state, loss):  # the first non-finite step, kept on the device (no sync)
        if self.first_nonfinite is None:
            self.first_nonfinite = torch.tensor(-1, device=run.device)
        bad = (self.first_nonfinite < 0) & ~torch.isfinite(loss)
        self.first_nonfinite = torch.where(bad, state.iter, self.first_nonfinite)

    def guard(self, run, state):
        """Stop (UserError) before a log or a save if a training loss so far, or a weight, is NaN or infinite."""
        bad = -1 if self.first_nonfinite is None else int(self.first_nonfinite)
        weights_finite = bool(torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all())
        if bad >= 0 or not weights_finite:
            self.stop(run, f"loss is not finite at iteration {bad}" if bad >= 0 else "the weights are not finite")

    def stop(self, run, what):
        kept = "no checkpoint of this run was saved" if self.saved_iter is None else \
            f"its last good checkpoint, {os.path.join(run.config.out_dir, 'ckpt.pt')} at iteration {self.saved_iter}, " \
            f"is kept"
        raise UserError(f"{what}: stopped; {kept} (try a lower --lr)")

    def after_eval(self, run, state, record):
        if not torch.isfinite(torch.tensor(record["val_loss"])):
            self.stop(run, f"the validation loss is not finite at iteration {state.iter}")
        if run.rank != 0 or self.items is None:  # rank 0 scores them; the others wait at the next step
            return
        run.model.eval()
        with torch.no_grad(), run.autocast:
            record["mc_accuracy"], record["mc_se"], _ = downstream.accuracy(self.items, lambda c, x, ids: (
                run.objective.continuation_nll(run.model, c.to(run.device), x.to(run.device), ids,
                                               run.config.mc_samples, run.config.eval_batch_size,
                                               run.config.eval_seed)))
        run.model.train()
        if record["mc_accuracy"] > state.best_choice:  # a second rule to choose a checkpoint by
            state.best_choice = record["mc_accuracy"]
            self.best_choice = trainer.weights_copy(run, state, record)

    def stop_now(self, run, state):
        """--stop_after_s has run out: rank 0's clock, broadcast, so all processes stop together (with several
        processes only at progress lines, to spare a broadcast per step)."""
        self.start_iter = state.iter if self.start_iter is None else self.start_iter
        if run.config.stop_after_s <= 0:
            return False
        if run.world_size > 1 and (state.iter - self.start_iter) % run.config.log_interval:
            return False
        flag = time.time() - run.t_start >= run.config.stop_after_s
        if run.world_size == 1:
            return flag
        flag = torch.tensor([float(flag)], device=run.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def extra_files(self, run, state):  # called as a checkpoint is saved
        files, self.best_choice, self.saved_iter = {"best_choice.pt": self.best_choice}, None, state.iter
        return files


def train_run(objective, argv=None):
    """A training run from the command line: checks, then the core loop inside the locked run folder."""
    config, ckpt, _ = configure(objective, sys.argv[1:] if argv is None else argv)
    items = choice_items(config)
    writer = int(os.environ.get("RANK", 0)) == 0  # one DDP process writes
    data_dir = os.path.join(config.data_dir, config.dataset)
    resume_iter = ckpt["iter"] if ckpt is not None else None
    with folders.RunFolder(config.out_dir, data_dir, resume_iter, config.overwrite, writer=writer) as folder:
        result = trainer.run(config, objective, folder if writer else None, LabHooks(items, resume_iter))
    leave_if_distributed()  # the folder's files are closed and its locks released
    return result


def leave_if_distributed():
    """A DDP process exits here, its work done and its files closed, without tearing gloo down: the teardown (in
    destroy_process_group or at interpreter exit) now and then aborted a process ('terminate called without an
    active exception', exit -6) after a run that had finished whole."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def train(objective, argv=None):
    """The entry point of a training script: a bad input is one line and exit status 1, Ctrl-C 130."""
    return run_cli(lambda: train_run(objective, argv),
                   interrupted="interrupted: the last checkpoint is kept; continue with --resume")


# ----------------------------------------------------------------------------- sampling

def check_prompt(core, start, block_size):
    """The prompt text (--start, or the file it names), with its [MASK*N] expansions bounded by the context before
    anything is allocated."""
    try:
        text = core.read_prompt(start)
    except OSError as e:
        raise UserError(f"--start {start}: cannot read the file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--start {start}: the file is not UTF-8 text (byte {e.start}): give a text file") from None
    masks = sum(int(n or 1) for n in re.findall(r"\[MASK(?:\*(\d+))?\]", text))
    if masks > block_size:
        raise UserError(f"the prompt asks for {masks:,} [MASK] tokens but the context is {block_size}: ask for fewer")


def checked_options_and_checkpoint(core, config, argv):
    """(config, checkpoint) of a script that reads one checkpoint: its options, device, checkpoint and weights."""
    checks.parse_checked(sys.argv[1:] if argv is None else argv, config, doc=core.__doc__)
    checked_device(config.device)
    ckpt = checks.checked_checkpoint(config.ckpt)
    checks.checked_model(ckpt)
    return config, ckpt


def sample_run(argv=None):
    import sample as core
    config, ckpt = checked_options_and_checkpoint(core, core.SampleConfig(), argv)
    check_prompt(core, config.start, ckpt["model_args"]["block_size"])
    core.main(config)


def sample(argv=None):
    """The entry point of sample.py."""
    return run_cli(lambda: sample_run(argv))


# ----------------------------------------------------------------------------- preparing data

def inputs_fingerprint(train_docs, val_docs, args):
    """sha256 of everything a data folder is made from: the documents and the options that shape the tokens."""
    digest = hashlib.sha256(json.dumps([args.tokenizer, args.vocab_size, args.max_train_tokens]).encode())
    for doc in ([train_docs] if isinstance(train_docs, str) else train_docs) + ["\0val\0"] + \
            ([val_docs] if isinstance(val_docs, str) else val_docs):
        digest.update(doc.encode("utf-8") + b"\0")
    return digest.hexdigest()


def prepared_from(out_dir):
    """The inputs fingerprint of a complete data folder (None if it has none or a file is missing or cut short)."""
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
        sizes_ok = all(os.path.getsize(os.path.join(out_dir, f"{split}.bin")) == 2 * meta[f"{split}_tokens"]
                       for split in ("train", "val"))
        ranks_ok = meta["tokenizer"] != "bpe" or os.path.isfile(os.path.join(out_dir, meta["ranks_file"]))
        whole = sizes_ok and ranks_ok and checks.meta_problem(meta) is None  # training would read it as it is
        return meta.get("inputs_sha256") if whole else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_replaceable(out_dir, overwrite):
    """A folder that holds other data is replaced only with --overwrite, and never while a training run reads it; a
    folder that holds anything else (a training run, other files) is never replaced."""
    if not os.path.exists(out_dir):
        return
    run = folders.found(out_dir, folders.RUN_FILES)
    if run:
        raise UserError(f"{out_dir} holds a training run ({', '.join(run)}), not data: prepare the data under another "
                        f"--name or --data_dir")
    foreign = folders.foreign_files(out_dir)
    if foreign:
        raise UserError(f"{out_dir} holds files prepare_data.py does not write ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}): it is not a data folder; prepare the data under "
                        f"another --name or --data_dir")
    if not overwrite:
        raise UserError(f"{out_dir} already holds data prepared from other text or options (or an incomplete "
                        f"folder): replace it with --overwrite, or choose another --name")
    readers = folders.data_readers(out_dir)
    if readers:
        raise UserError(f"{out_dir} is read by a training run, {folders.holder_text(readers[0], readers[0]['path'])}"
                        f", before replacing the data")


def write_new_folder(core, args, corpus, out_dir):
    """The data written whole into <out_dir>.new (a full disk or Ctrl-C leaves nothing half-written), then renamed
    into out_dir's place."""
    new = f"{out_dir}.new"
    try:
        meta = core.prepare(corpus.train_docs, corpus.val_docs, new, args.tokenizer, corpus.source,
                            args.max_train_tokens, args.vocab_size, corpus.documents,
                            corpus.extra, corpus.val_names)
    except BaseException as e:
        shutil.rmtree(new, ignore_errors=True)
        docs = [corpus.train_docs, corpus.val_docs] if isinstance(corpus.train_docs, str) \
            else [*corpus.train_docs, *corpus.val_docs]
        needed = 2 * sum(len(doc.encode()) for doc in docs)  # two bytes a token, at most a token a byte
        free = folders.free_bytes(new)
        if folders.disk_full(e, needed, free):
            raise UserError(f"{new}: the disk is full (the token files need up to {needed / 2**20:,.1f} MB, "
                            f"{free / 2**20:,.1f} MB are free): free some space or choose another --data_dir") \
                from None
        raise
    folders.put_in_place(new, out_dir)
    return meta


def prepare_run(argv=None):
    import prepare_data as core
    args = core.PrepareConfig()
    checks.parse_checked(sys.argv[1:] if argv is None else argv, args, doc=core.__doc__)
    if args.input and not os.path.isfile(args.input):
        raise UserError(f"--input {args.input}: no such file")
    corpus = core.read_corpus(args)
    out_dir = core.folder_for(args, corpus)
    inputs = inputs_fingerprint(corpus.train_docs, corpus.val_docs, args)
    corpus.extra = dict(corpus.extra or {}, inputs_sha256=inputs)  # meta.json records what the folder is made of
    created = folders.make_folders(args.data_dir)
    try:
        lock = folders.take_lock(folders.data_lock(out_dir), out_dir)  # one writer per data folder
    except BaseException:
        folders.remove_folders(created)
        raise
    try:
        folders.finish_switch(out_dir, lambda folder: prepared_from(folder) is not None)
        folders.settle_replacement(out_dir)
        if prepared_from(out_dir) == inputs and not args.overwrite:
            print(f"kept {out_dir}: already prepared from the same text with the same options")
            return out_dir
        check_replaceable(out_dir, args.overwrite)
        t0 = time.time()
        meta = write_new_folder(core, args, corpus, out_dir)
    finally:
        folders.release_lock(lock)
    core.report(args, meta, out_dir, time.time() - t0)
    return out_dir


def prepare(argv=None):
    """The entry point of prepare_data.py."""
    return run_cli(lambda: prepare_run(argv))


# ----------------------------------------------------------------------------- evaluating

def evaluate_run(argv=None):
    import evaluate as core
    config, ckpt = checked_options_and_checkpoint(core, core.EvalConfig(), argv)
    train, folder, meta = checks.load_run_data(ckpt, config.data_dir, config.dataset)
    checks.checked_tokens(folder, "val", meta)
    downstream.item_lengths(meta, train.block_size, config.mc_context, config.mc_continuation)
    return core.main(config)


def evaluate(argv=None):
    """The entry point of evaluate.py."""
    return run_cli(lambda: evaluate_run(argv))


def compare(argv=None):
    """The entry point of compare.py."""
    import compare as core
    argv = sys.argv[1:] if argv is None else argv

    def checked():
        options = core.CompareConfig()
        checks.parse_checked([a for a in argv if a.startswith("-")], options, doc=core.__doc__)
        if not options.no_plot:
            checks.check_plot_path("plot", options.plot)
        return core.main(argv)
    return run_cli(checked)

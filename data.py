"""
The data a run reads, from the folder prepare_data.py writes (meta.json, train.bin, val.bin): the token files, the
training windows in their epoch order, the fixed validation windows, and the checks that a checkpoint is scored or
continued on its own data. Shared by training, evaluate.py and the experiments.
"""
import json
import os

import numpy as np
import torch

from cli import UserError
from config import saved_config
from tokenizer import meta_problem, portable_meta, same_tokenizer


def load_meta(data_dir):
    """A data folder's meta.json, with its keys checked."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise UserError(f"no prepared data in {data_dir}/ (meta.json missing): run `python prepare_data.py` first")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError):
        meta = None
    problem = "is not valid JSON" if meta is None else meta_problem(meta)
    if problem:
        raise UserError(f"{path} {problem}: the folder is damaged or not this project's; prepare it again with "
                        f"prepare_data.py and --overwrite")
    return meta


def load_tokens(data_dir, split, meta):
    """A split as a read-only uint16 memmap, checked against meta.json."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: re-run `python prepare_data.py`")
    expected = meta.get(f"{split}_tokens")
    if meta.get("dtype", "uint16") != "uint16" or os.path.getsize(path) != 2 * expected:
        raise UserError(f"{path} holds {os.path.getsize(path)} bytes but meta.json says {expected} uint16 tokens: "
                        f"the files are from different runs or truncated; re-run prepare_data.py")
    return np.memmap(path, dtype=np.uint16, mode="r")


def check_token_ids(tokens, meta, path):
    """Every id must be one of the tokenizer's: [MASK] (= n_vocab) and the padding above it are never data."""
    largest = int(np.max(tokens)) if len(tokens) else 0
    if largest >= meta["n_vocab"]:
        what = "the [MASK] id" if largest == meta["n_vocab"] else "an id past the vocabulary"
        raise UserError(f"{path} holds token id {largest}, {what} ({meta['tokenizer']} has {meta['n_vocab']} "
                        f"tokens): the file does not match meta.json; re-run prepare_data.py")


class TrainingWindows:
    """Training windows of block_size + 1 tokens over the first U tokens (window j of an epoch starts at
    j * block_size, so consecutive windows share one token: AR predicts every token but the first exactly once
    per epoch).

    Slot g (a count of windows over the whole run) is epoch g // n and position g % n of that epoch's seeded
    shuffle, so an epoch visits every window once and any slot can be recomputed on resume. With `document_ends`
    (the epoch order of the papers' loader) each epoch first lays the documents out in a fresh seeded order, so the
    windows' boundaries move between epochs while every token is still seen once.
    """

    def __init__(self, tokens, block_size, seed, document_ends=None):
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.documents = None if document_ends is None else list(zip([0, *document_ends[:-1]], document_ends))
        self.n = (len(tokens) - 1) // block_size
        self._epoch, self._starts, self._epoch_tokens = None, None, tokens

    def epoch_layout(self, epoch):
        """(token array, window starts in visiting order) of an epoch, computed once per epoch."""
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.documents is not None:
                order = rng.permutation(len(self.documents))
                self._epoch_tokens = np.concatenate([self.tokens[self.documents[i][0]:self.documents[i][1]]
                                                     for i in order])
            self._starts = rng.permutation(self.n) * self.block_size
            self._epoch = epoch
        return self._epoch_tokens, self._starts

    def get(self, slots):
        """Token windows for the given slots, as an int64 tensor (len(slots), block_size + 1)."""
        rows = []
        for g in slots:
            tokens, starts = self.epoch_layout(int(g) // self.n)
            start = int(starts[int(g) % self.n])
            rows.append(tokens[start:start + self.block_size + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def document_ends(tokens, eot_id):
    """End positions (exclusive) of the documents in tokens: after each end-of-text id, and at the end."""
    ends = (np.flatnonzero(np.asarray(tokens) == eot_id) + 1).tolist()
    return ends if ends and ends[-1] == len(tokens) else ends + [len(tokens)]


def val_windows(tokens, block_size, max_windows):
    """`max_windows` fixed validation windows spread evenly over the val split (all if 0): the same ones at every
    evaluation."""
    n = (len(tokens) - 1) // block_size
    chosen = np.linspace(0, n - 1, min(n, max_windows)).round().astype(int) if max_windows else np.arange(n)
    rows = [tokens[j * block_size:j * block_size + block_size + 1] for j in chosen]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def training_data(config, ckpt):
    """(meta with a BPE's ranks, for the checkpoints; the training windows over the first U train tokens; the val
    split's tokens) of a run, every size checked against its options and, on resume, against its checkpoint."""
    data_dir = os.path.join(config.data_dir, config.dataset)
    meta = portable_meta(load_meta(data_dir), data_dir)
    train_tokens, val_tokens = load_tokens(data_dir, "train", meta), load_tokens(data_dir, "val", meta)
    unique_tokens = config.unique_tokens or len(train_tokens)
    if unique_tokens > len(train_tokens):
        raise UserError(f"--unique_tokens {unique_tokens:,} is more than the {len(train_tokens):,} train tokens "
                        f"in {data_dir}")
    if unique_tokens < config.block_size + 1:
        raise UserError(f"--unique_tokens {unique_tokens:,} is less than one window (block_size + 1 = "
                        f"{config.block_size + 1})")
    if len(val_tokens) < config.block_size + 1:
        raise UserError(f"--block_size {config.block_size} is larger than the {len(val_tokens):,} val tokens "
                        f"in {data_dir}: use a smaller block_size or more data")
    if config.epoch_order == "documents" and meta.get("eot_id") is None:
        raise UserError(f"--epoch_order=documents needs data with document boundaries, and {data_dir} has none: "
                        f"prepare it with `python prepare_data.py --dataset python`")
    if ckpt is not None:
        check_run_data(ckpt, meta, data_dir)
    tokens = train_tokens[:unique_tokens]
    check_token_ids(tokens, meta, os.path.join(data_dir, "train.bin"))
    check_token_ids(val_tokens, meta, os.path.join(data_dir, "val.bin"))
    ends = document_ends(tokens, meta["eot_id"]) if config.epoch_order == "documents" else None
    return meta, TrainingWindows(tokens, config.block_size, config.seed, ends), val_tokens


# ----------------------------------------------------------------------------- a checkpoint's own data

def data_fingerprint(meta):
    """A data folder's identity in a few characters: its text's sha256 and its token counts."""
    return f"sha256 {meta['sha256'][:12]}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens"


def check_run_data(ckpt, meta, data_dir, own_data=True):
    """A checkpoint continues or is scored only on data of its own tokenizer; and, where the folder is the run's own
    (not one given to score it on), only on the very data it was trained on: a folder prepared again since (other
    text, other files) changes the unique tokens under the run."""
    if not same_tokenizer(ckpt["meta"], meta):
        raise UserError(f"the checkpoint's tokenizer ({ckpt['meta']['tokenizer']}, {ckpt['meta']['n_vocab']} "
                        f"tokens) differs from {data_dir}'s ({meta['tokenizer']}, {meta['n_vocab']}): give the "
                        f"run's own data")
    saved, now = data_fingerprint(ckpt["meta"]), data_fingerprint(meta)
    if own_data and saved != now:
        raise UserError(f"{data_dir} was prepared again since the run started: the run's data is {saved}, the "
                        f"folder's is {now}; prepare the run's data again, or start the run afresh")


def load_run_data(ckpt, data_dir=None, dataset=None):
    """(the run's training config, its data folder, that folder's meta) for a checkpoint, checked against it;
    data_dir and dataset replace the run's own."""
    config = saved_config(ckpt, "the checkpoint")
    folder = os.path.join(data_dir or config.data_dir, dataset or config.dataset)
    meta = load_meta(folder)
    check_run_data(ckpt, meta, folder, own_data=not (data_dir or dataset))
    return config, folder, meta


def tokenizer_name(meta):
    """The tokenizer in a few characters, for logs: its kind, size and (a BPE's) ranks hash."""
    ranks = meta.get("ranks_sha256")
    return f"{meta['tokenizer']}-{meta['n_vocab']}" + (f"-{ranks[:10]}" if ranks else "")

"""
The data a run reads, from the folder prepare_data.py writes (meta.json, train.bin, val.bin): the token files, the
training windows in their epoch order and the fixed validation windows. Shared by training, evaluate.py and the
experiments. (lab/checks.py checks a folder before the core reads it.)
"""
import json
import os

import numpy as np
import torch

from tokenizer import portable_meta


def load_meta(data_dir):
    with open(os.path.join(data_dir, "meta.json")) as f:
        return json.load(f)


def load_tokens(data_dir, split):
    """A split as a read-only uint16 memmap (never read whole into memory)."""
    return np.memmap(os.path.join(data_dir, f"{split}.bin"), dtype=np.uint16, mode="r")


class TrainingWindows:
    """Training windows of block_size + 1 tokens over the first U tokens (window j of an epoch starts at
    j * block_size, so consecutive windows share one token: AR predicts every token but the first exactly once
    per epoch).

    Slot g (a count of windows over the whole run) is epoch g // n and position g % n of that epoch's seeded
    shuffle, so an epoch visits every window once and any slot can be recomputed on resume. With `documents`
    (the epoch order of the papers' loader) each epoch first lays the documents out in a fresh seeded order, so the
    windows' boundaries move between epochs while every token is still seen once.
    """

    def __init__(self, tokens, block_size, seed, documents=None):
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.documents = documents  # (start, end) spans, or None
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


def document_spans(tokens, eot_id, chunks=20):
    """The documents of tokens as (start, end) spans, each ending after an end-of-text id; data without documents
    (eot_id None) is cut into `chunks` equal pieces."""
    n = len(tokens)
    if eot_id is None:
        ends = [round(n * (i + 1) / chunks) for i in range(chunks)]
    else:
        ends = (np.flatnonzero(np.asarray(tokens) == eot_id) + 1).tolist()
        ends = ends if ends and ends[-1] == n else ends + [n]
    return [(s, e) for s, e in zip([0, *ends[:-1]], ends) if e > s]


def val_windows(tokens, block_size, max_windows):
    """`max_windows` fixed validation windows spread evenly over the val split (all if 0): the same ones at every
    evaluation."""
    n = (len(tokens) - 1) // block_size
    chosen = np.linspace(0, n - 1, min(n, max_windows)).round().astype(int) if max_windows else np.arange(n)
    rows = [tokens[j * block_size:j * block_size + block_size + 1] for j in chosen]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def training_data(config):
    """(meta with a BPE's ranks, for the checkpoints; the training windows over the first U train tokens; the val
    split's tokens) of a run."""
    data_dir = os.path.join(config.data_dir, config.dataset)
    meta = portable_meta(load_meta(data_dir), data_dir)
    train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
    if config.unique_from == "pieces" and config.unique_tokens:
        tokens, spans = unique_pieces(train_tokens, meta.get("eot_id"), config)
    else:
        tokens = train_tokens[:config.unique_tokens or len(train_tokens)]
        spans = document_spans(tokens, meta["eot_id"]) if config.epoch_order == "documents" else None
    spans = spans if config.epoch_order == "documents" else None
    return meta, TrainingWindows(tokens, config.block_size, config.seed, spans), val_tokens


def unique_pieces(train_tokens, eot_id, config):
    """(U tokens, their pieces as spans): a piece of up to piece_tokens tokens at a random offset of each of randomly
    ordered train documents, until there are U tokens (the last piece cut to fit), all drawn by data_seed. The U of
    a run then spans many documents, where the split's first U tokens are a handful of files."""
    U, rng = config.unique_tokens, np.random.default_rng([config.data_seed, config.unique_tokens])
    documents = document_spans(train_tokens, eot_id)
    pieces, total = [], 0
    for d in rng.permutation(len(documents)):
        start, end = documents[d]
        length = min(config.piece_tokens, end - start, U - total)
        offset = start + int(rng.integers(end - start - length + 1))
        pieces.append(np.asarray(train_tokens[offset:offset + length]))
        total += length
        if total == U:
            break
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    return np.concatenate(pieces), list(zip([0, *ends[:-1]], ends))


def tokenizer_name(meta):
    """The tokenizer in a few characters, for logs: its kind, size and (a BPE's) ranks hash."""
    ranks = meta.get("ranks_sha256")
    return f"{meta['tokenizer']}-{meta['n_vocab']}" + (f"-{ranks[:10]}" if ranks else "")

"""
A multiple-choice continuation test built from the validation split, offline and deterministically: each item is
a context, its true continuation and distractor continuations taken from other validation positions. Both kinds
answer by one rule: the choice with the smallest negative log-likelihood given the context, summed over its
tokens (AR: exact, by the chain rule; diffusion: the conditional ELBO, an upper bound on it). Paper 2 reports its
crossovers on such downstream accuracy and finds it can keep rising while validation loss climbs.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from data import document_spans


@dataclass
class Items:
    contexts: torch.Tensor  # (N, C) token ids
    choices: torch.Tensor  # (N, n_choices, L): the true continuation at `answers`, distractors elsewhere
    answers: torch.Tensor  # (N,)
    files: torch.Tensor  # (N,) which of its set's files each item comes from


def item_lengths(meta, block_size, context_len=0, continuation_len=0):
    """(context, continuation) lengths in tokens: the ones given, or by default 64 / 24 for bytes and 48 / 16 for
    BPE tokens (~3 bytes each), shrunk in proportion when the model's context is shorter."""
    default_context, default_continuation = (64, 24) if meta["tokenizer"] == "bytes" else (48, 16)
    shrink = min(1.0, block_size / (default_context + default_continuation))
    context_len = context_len or max(int(default_context * shrink), 1)
    continuation_len = continuation_len or max(int(default_continuation * shrink), 1)
    if context_len + continuation_len > block_size:
        raise ValueError(f"--mc_context {context_len} + --mc_continuation {continuation_len} is longer than the "
                        f"context ({block_size}): shorten them")
    return context_len, continuation_len


def split_files(files, selection_share=0.3, seed=0):
    """(selection files, test files): in a seeded order, each file goes to the selection set if it still fits in
    `selection_share` of the tokens, else to the test set. Which checkpoint to trust is chosen on one set and scored
    on the other, so the choice cannot fit the test's items."""
    order = np.random.default_rng([seed, len(files)]).permutation(len(files))
    total, taken, selection = sum(e - s for s, e in files), 0, []
    for i in order:
        if taken + files[i][1] - files[i][0] <= selection_share * total:
            selection.append(int(i))
            taken += files[i][1] - files[i][0]
    test = sorted(set(range(len(files))) - set(selection))
    if not selection or not test:
        raise ValueError(f"the val split's {len(files)} file(s) cannot be split into a selection and a test set: "
                        f"prepare more data")
    return [files[i] for i in sorted(selection)], [files[i] for i in test]


def item_set(val_tokens, meta, which, seed=0):
    """The files of one item set of the val split: 'selection', 'test' or 'all'."""
    files = document_spans(val_tokens, meta.get("eot_id"))
    if which == "all":
        return files
    selection, test = split_files(files, seed=seed)
    return selection if which == "selection" else test


def build_items(val_tokens, n_items, context_len, continuation_len, n_choices=4, seed=0, files=None):
    """n_items items from the given files of val_tokens ((start, end) spans; default: all of it as one), the same
    for the same arguments; n_items = 0: every non-overlapping item, each file cut into C + L token pieces in order.
    An item lies inside one file: its context is val[s : s + C] and its true continuation the L tokens after it; each distractor is L tokens from another position of the same files that does not
    overlap the true one and differs from it and from the other distractors. Items.files names each item's file,
    the clusters of a standard error."""
    val = np.asarray(val_tokens, dtype=np.int64)
    files = files if files is not None else [(0, len(val))]
    C, L = context_len, continuation_len
    starts, file_of = within_files(files, C + L, stride=1 if n_items else C + L)
    piece_starts, _ = within_files(files, L)  # where a distractor may start: inside one file of the set
    if sum(e - s for s, e in files) < 4 * (C + L) or len(starts) < n_items:
        raise ValueError(f"the val split's item files ({sum(e - s for s, e in files):,} tokens) are too short for "
                        f"{n_items} items of {C} + {L} tokens: use fewer items or shorter ones")
    rng = np.random.default_rng([seed, n_items, C, L, n_choices])
    picked = np.sort(rng.choice(len(starts), size=n_items, replace=False)) if n_items else np.arange(len(starts))
    contexts, choices, answers = [], [], []
    for s in starts[picked]:
        true = val[s + C:s + C + L]
        options = [true]
        for _ in range(1000 * n_choices):
            if len(options) == n_choices:
                break
            p = int(piece_starts[rng.integers(len(piece_starts))])
            candidate = val[p:p + L]
            if abs(p - (s + C)) >= L and not any(np.array_equal(candidate, o) for o in options):
                options.append(candidate)
        if len(options) < n_choices:
            raise ValueError(f"the val split repeats itself too much to find {n_choices - 1} distinct distractors "
                            f"of {L} tokens: use longer continuations")
        answer = int(rng.integers(n_choices))
        options[0], options[answer] = options[answer], options[0]
        contexts.append(val[s:s + C])
        choices.append(np.stack(options))
        answers.append(answer)
    return Items(torch.from_numpy(np.stack(contexts)), torch.from_numpy(np.stack(choices)),
                 torch.tensor(answers), torch.from_numpy(file_of[picked]))


def within_files(files, length, stride=1):
    """(every stride-th start of `length` tokens that lies inside one file, the index of that file), as arrays."""
    starts = [np.arange(s, e - length + 1, stride) for s, e in files]
    return (np.concatenate(starts + [np.zeros(0, dtype=np.int64)]).astype(np.int64),
            np.concatenate([np.full(len(a), f) for f, a in enumerate(starts)] + [np.zeros(0, dtype=np.int64)]))


def correct_choices(items, score_nll, batch_items=64, progress=None):
    """A bool per item: is the choice of smallest NLL the true continuation? score_nll(contexts (B, C),
    continuations (B, L), item_ids (B,)) -> NLL per row; progress(done, total)."""
    n, k = items.choices.shape[:2]
    correct = []
    for i in range(0, n, batch_items):
        ids = torch.arange(i, min(i + batch_items, n))
        contexts = items.contexts[ids].repeat_interleave(k, dim=0)
        nll = score_nll(contexts, items.choices[ids].flatten(0, 1), ids.repeat_interleave(k)).view(len(ids), k)
        correct.append(nll.argmin(dim=1).cpu() == items.answers[ids])
        if progress is not None:
            progress(int(ids[-1]) + 1, n)
    return torch.cat(correct)


def accuracy(items, score_nll, batch_items=64, progress=None):
    """(accuracy, its standard error, chance) of answering each item with the choice of smallest NLL."""
    correct = correct_choices(items, score_nll, batch_items, progress)
    acc = correct.double().mean().item()
    return acc, math.sqrt(acc * (1 - acc) / len(correct)), 1 / items.choices.shape[1]


def paired_difference(correct_a, correct_b, files):
    """(mean of a - b, its standard error) over items both answered, clustered by file: items of one file share
    its style, so they are not independent. Var = G / (G - 1) * sum_g (sum_{i in g} (d_i - mean))^2 / n^2 over the
    G files (the cluster-robust variance of a mean)."""
    d = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    files = np.asarray(files)
    n, mean = len(d), float(d.mean())
    groups = np.unique(files)
    if len(groups) < 2:
        raise ValueError("the paired difference needs items from at least two files")
    sums = np.array([(d[files == g] - mean).sum() for g in groups])
    return mean, math.sqrt(len(groups) / (len(groups) - 1) * float((sums ** 2).sum()) / n ** 2)

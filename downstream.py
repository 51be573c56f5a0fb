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

from cli import UserError


@dataclass
class Items:
    contexts: torch.Tensor  # (N, C) token ids
    choices: torch.Tensor  # (N, n_choices, L): the true continuation at `answers`, distractors elsewhere
    answers: torch.Tensor  # (N,)


def item_lengths(meta, block_size, context_len=0, continuation_len=0):
    """(context, continuation) lengths in tokens: the ones given, or by default 64 / 24 for bytes and 48 / 16 for
    BPE tokens (~3 bytes each), shrunk in proportion when the model's context is shorter."""
    default_context, default_continuation = (64, 24) if meta["tokenizer"] == "bytes" else (48, 16)
    shrink = min(1.0, block_size / (default_context + default_continuation))
    context_len = context_len or max(int(default_context * shrink), 1)
    continuation_len = continuation_len or max(int(default_continuation * shrink), 1)
    if context_len + continuation_len > block_size:
        raise UserError(f"--mc_context {context_len} + --mc_continuation {continuation_len} is longer than the "
                        f"context ({block_size}): shorten them")
    return context_len, continuation_len


def build_items(val_tokens, n_items, context_len, continuation_len, n_choices=4, seed=0):
    """n_items items from val_tokens, the same for the same arguments. An item's context is val[s : s + C] and
    its true continuation the L tokens after it; each distractor is L tokens from another position that does not
    overlap the true one and differs from it and from the other distractors."""
    val = np.asarray(val_tokens, dtype=np.int64)
    C, L = context_len, continuation_len
    if len(val) < 4 * (C + L) or len(val) - C - L + 1 < n_items:
        raise UserError(f"the val split ({len(val):,} tokens) is too short for {n_items} items of {C} + {L} "
                        f"tokens: use fewer items or shorter ones")
    rng = np.random.default_rng([seed, n_items, C, L, n_choices])
    starts = np.sort(rng.choice(len(val) - C - L + 1, size=n_items, replace=False))
    contexts, choices, answers = [], [], []
    for s in starts:
        true = val[s + C:s + C + L]
        options = [true]
        for _ in range(1000 * n_choices):
            if len(options) == n_choices:
                break
            p = int(rng.integers(0, len(val) - L + 1))
            candidate = val[p:p + L]
            if abs(p - (s + C)) >= L and not any(np.array_equal(candidate, o) for o in options):
                options.append(candidate)
        if len(options) < n_choices:
            raise UserError(f"the val split repeats itself too much to find {n_choices - 1} distinct distractors "
                            f"of {L} tokens: use longer continuations")
        answer = int(rng.integers(n_choices))
        options[0], options[answer] = options[answer], options[0]
        contexts.append(val[s:s + C])
        choices.append(np.stack(options))
        answers.append(answer)
    return Items(torch.from_numpy(np.stack(contexts)), torch.from_numpy(np.stack(choices)),
                 torch.tensor(answers))


def accuracy(items, score_nll, batch_items=64, progress=None):
    """(accuracy, its standard error, chance) of answering each item with the choice of smallest NLL.
    score_nll(contexts (B, C), continuations (B, L), item_ids (B,)) -> NLL per row; progress(done, total)."""
    n, k = items.choices.shape[:2]
    correct = 0
    for i in range(0, n, batch_items):
        ids = torch.arange(i, min(i + batch_items, n))
        contexts = items.contexts[ids].repeat_interleave(k, dim=0)
        nll = score_nll(contexts, items.choices[ids].flatten(0, 1), ids.repeat_interleave(k)).view(len(ids), k)
        correct += int((nll.argmin(dim=1) == items.answers[ids]).sum())
        if progress is not None:
            progress(int(ids[-1]) + 1, n)
    acc = correct / n
    return acc, math.sqrt(acc * (1 - acc) / n), 1 / k

"""The multiple-choice continuation test: items, the scoring rule, the diffusion conditional ELBO, evaluate.py."""
import math

import numpy as np
import pytest

from lab import launch
import torch

from conftest import eval_args, run_training

import downstream
import train_ar
import train_diffusion
from model import ModelConfig, Transformer
from config import TrainConfig


def val_tokens(n=5000, seed=0):
    return np.random.default_rng(seed).integers(0, 200, n).astype(np.uint16)


def test_items_are_deterministic_and_no_distractor_is_the_answer():
    val = val_tokens()
    a = downstream.build_items(val, 500, 20, 8, seed=3)
    b = downstream.build_items(val, 500, 20, 8, seed=3)
    assert all(torch.equal(x, y) for x, y in [(a.contexts, b.contexts), (a.choices, b.choices), (a.answers, b.answers)])
    assert a.contexts.shape == (500, 20) and a.choices.shape == (500, 4, 8)
    assert not torch.equal(a.answers, downstream.build_items(val, 500, 20, 8, seed=4).answers)
    spans = {row.tobytes() for row in np.lib.stride_tricks.sliding_window_view(val.astype(np.int64), 28)}
    for i in range(500):
        true = a.choices[i, a.answers[i]]
        # the context and the true continuation are consecutive val tokens
        assert torch.cat([a.contexts[i], true]).numpy().tobytes() in spans
        for j in range(4):
            if j != a.answers[i]:
                assert not torch.equal(a.choices[i, j], true)
    assert sorted(torch.bincount(a.answers, minlength=4).tolist())[0] > 80  # the answer's place is spread


def test_a_scorer_that_knows_gets_one_and_a_uniform_one_gets_chance():
    items = downstream.build_items(val_tokens(), 600, 16, 8, seed=1)
    def knows(contexts, continuations, ids):  # NLL 0 for each item's own true continuation, 1 for the rest
        truth = items.choices[ids, items.answers[ids]]
        return (~(continuations == truth).all(dim=1)).double()
    acc, se, chance = downstream.accuracy(items, knows)
    assert (acc, se, chance) == (1.0, 0.0, 0.25)
    acc, se, _ = downstream.accuracy(items, lambda c, x, ids: torch.zeros(len(x)))
    assert abs(acc - 0.25) < 3 * se and se == pytest.approx(math.sqrt(acc * (1 - acc) / 600))


def tiny(causal):
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_vocab=200, block_size=32, n_layer=2, n_head=2, n_embd=32, causal=causal)).eval()


def test_the_conditional_elbo_is_repeatable_and_with_no_context_is_the_validation_elbo():
    model, config = tiny(False), TrainConfig(elbo_samples=16, eval_batch_size=24)
    windows = torch.from_numpy(val_tokens(5 * 33).astype(np.int64)).view(5, 33)
    ids = torch.tensor([3, 8, 1, 0, 42])
    with torch.no_grad():
        empty = torch.zeros(5, 0, dtype=torch.long)
        a = train_diffusion.continuation_nll(model, empty, windows[:, :-1], ids, *eval_args(config))
        b = train_diffusion.continuation_nll(model, empty, windows[:, :-1], ids, *eval_args(config))
        nats, count = train_diffusion.evaluate_loss(model, windows, ids, config)
        # with a context, only the continuation is masked: its bound differs, and it depends on the context
        c = train_diffusion.continuation_nll(model, windows[:, :16], windows[:, 16:32], ids, *eval_args(config))
        d = train_diffusion.continuation_nll(model, windows.flip(1)[:, :16], windows[:, 16:32], ids, *eval_args(config))
    assert torch.equal(a, b) and a.sum().item() == pytest.approx(nats, rel=1e-12) and count == 5 * 32
    assert (c > 0).all() and not torch.allclose(c, d)


def test_ar_continuation_nll_is_the_chain_rule():
    model, config = tiny(True), TrainConfig(eval_batch_size=3)
    x = torch.from_numpy(val_tokens(4 * 20).astype(np.int64)).view(4, 20)
    with torch.no_grad():
        nll = train_ar.continuation_nll(model, x[:, :12], x[:, 12:], torch.arange(4), *eval_args(config))
        logp = torch.log_softmax(model(x[:, :-1]), dim=-1)
    direct = -sum(logp[:, i - 1].gather(1, x[:, i:i + 1]).squeeze(1) for i in range(12, 20))
    torch.testing.assert_close(nll.float(), direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least one context token"):
        train_ar.continuation_nll(model, x[:, :0], x, torch.arange(4), *eval_args(config))


def test_evaluate_reproduces_the_runs_logged_loss(tmp_path, capsys):
    """evaluate.py's validation loss of best.pt is the best loss the run logged, to the printed digit."""
    import json
    from conftest import make_tiny_data, tiny_args
    data_dir = make_tiny_data(tmp_path)
    for kind, script in (("ar", train_ar), ("diffusion", train_diffusion)):
        out = str(tmp_path / kind)
        run_training(script, tiny_args(data_dir, out, "--max_iters=30", "--eval_interval=10", "--elbo_samples=4"))
        capsys.readouterr()
        result = launch.evaluate_run([f"--ckpt={out}", "--mc_items=40", "--mc_context=12", "--mc_continuation=6"])
        best = min(json.loads(line)["val_loss"] for line in open(f"{out}/log.jsonl"))
        assert result["val_loss"] == pytest.approx(best, rel=1e-6)
        printed = capsys.readouterr().out
        assert f"val loss: {best:.4f} nats/token" in printed and "chance 0.250" in printed
        assert result["chance"] == 0.25  # its accuracy against the run's own: test_mechanics
    with pytest.raises(ValueError, match="longer than the context"):
        launch.evaluate_run([f"--ckpt={tmp_path / 'ar'}", "--mc_context=30", "--mc_continuation=10"])
    with pytest.raises(ValueError, match="too short"):
        launch.evaluate_run([f"--ckpt={tmp_path / 'ar'}", "--mc_items=100000", "--mc_context=12", "--mc_continuation=6"])


def test_gen_ppl_prefers_what_the_reference_learned_and_entropy_flags_repetition(tmp_path, capsys):
    import os
    import sys
    from runtime import load_checkpoint, model_from_checkpoint
    from conftest import ROOT, make_tiny_data, tiny_args
    from data import load_tokens
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import sample_quality
    data_dir = make_tiny_data(tmp_path)
    for kind, script in (("ar", train_ar), ("diffusion", train_diffusion)):
        run_training(script, tiny_args(data_dir, str(tmp_path / kind), "--max_iters=200", "--eval_interval=100", "--elbo_samples=2",
                      "--lr=3e-3"))
    ref = model_from_checkpoint(load_checkpoint(str(tmp_path / "ar")))
    train = torch.from_numpy(load_tokens(f"{data_dir}/tiny", "train")[:16 * 24]
                             .astype(np.int64)).view(16, 24)
    shuffled = train.flatten()[torch.randperm(train.numel(), generator=torch.Generator().manual_seed(0))].view(16, 24)
    learned = sample_quality.gen_ppl(ref, train[:, :8], train[:, 8:])
    assert learned < 0.5 * sample_quality.gen_ppl(ref, train[:, :8], shuffled[:, 8:])
    assert sample_quality.unigram_entropy_bits(torch.arange(8).repeat(5)) == pytest.approx(3.0)
    assert sample_quality.unigram_entropy_bits(torch.full((40,), 7)) == 0.0
    rows = sample_quality.main([f"--ref={tmp_path / 'ar'}", f"--runs={tmp_path / 'ar'},{tmp_path / 'diffusion'}",
                                "--samples=4", "--new_tokens=16", "--fractions=0.25,1", "--block_length=8"])
    assert [(r["decoder"], r["steps"]) for r in rows] == [("AR, KV cache", 16), ("diffusion", 4), ("diffusion", 16)]
    # each row's gen-PPL is the reference's perplexity of that decoder's samples: AR's greedy-ish samples from the
    # reference itself are the likeliest under it
    assert rows[0]["gen_ppl"] < min(r["gen_ppl"] for r in rows[1:])
    with pytest.raises(ValueError, match="must be AR"):
        sample_quality.main([f"--ref={tmp_path / 'diffusion'}", f"--runs={tmp_path / 'ar'}"])


def test_zero_items_means_every_non_overlapping_item_inside_its_file():
    val = val_tokens()
    files = [(0, 300), (300, 650), (650, len(val))]
    items = downstream.build_items(val, 0, 16, 8, seed=1, files=files)
    # each file cut into 16 + 8 token pieces, in order; a file's tail shorter than a piece gives none
    tiles = [(f, p) for f, (s, e) in enumerate(files) for p in range(s, e - 23, 24)]
    assert len(items.answers) == len(tiles) == sum((e - s) // 24 for s, e in files)
    for (f, p), ctx, choices, answer, file in zip(tiles, items.contexts.numpy(), items.choices.numpy(),
                                                  items.answers.numpy(), items.files.numpy()):
        assert file == f and np.array_equal(ctx, val[p:p + 16]) and np.array_equal(choices[answer], val[p + 16:p + 24])

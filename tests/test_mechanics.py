"""Tests that fail for the bugs that matter: samplers checked on a model whose outputs depend on the whole context
and as distributions, the training mechanics (schedule, accumulation, clipping, weight decay, causality), and the
scores evaluation reports."""
import json
import math
import os

import pytest

from lab import launch
import torch
import torch.nn as nn

import sample
import train_ar
import train_diffusion
import trainer
from config import TrainConfig
from conftest import eval_args, tiny_args, run_training
from model import ModelConfig, Transformer
from prepare_data import prepare
from sample import ar_generate, diffusion_generate
from test_training import read_log, train


def sharp_model(causal=True, block_size=24, seed=0):
    """A random model of a useful scale: weights large enough that its next-token choice depends on the whole
    context (an untrained model at the usual 0.02 just echoes its input token through the tied embedding)."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_vocab=60, block_size=block_size, n_layer=2, n_head=2, n_embd=32, causal=causal))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1.0 if name == "embed.weight" else 0.3)
    return model.eval()


class Recorder(nn.Module):
    """The model, recording the last position's logits of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.embed, self.calls = model, model.config, model.embed, []

    def forward(self, idx, cache=None):
        logits = self.model(idx, cache=cache)
        self.calls.append(logits[:, -1].clone())
        return logits


def test_the_sharp_model_is_one_a_cache_bug_would_change():
    model = sharp_model()
    prompts = torch.randint(0, 60, (8, 6), generator=torch.Generator().manual_seed(1))
    greedy = model(prompts)[:, -1].argmax(-1)
    assert (greedy != prompts[:, -1]).sum() >= 6  # not an echo of the last token
    shifted = prompts.clone()
    shifted[:, 0] = (shifted[:, 0] + 1) % 60
    assert not torch.allclose(model(prompts)[:, -1], model(shifted)[:, -1], atol=1e-3)  # the first token counts


@pytest.mark.parametrize("prompt_len", [1, 7])
def test_ar_cached_logits_equal_uncached_logits_at_every_step(prompt_len):
    prompt = torch.randint(0, 60, (3, prompt_len), generator=torch.Generator().manual_seed(2))
    new = 24 - prompt_len  # within the context: every step's logits come from one call in both modes
    cached, uncached = Recorder(sharp_model()), Recorder(sharp_model())
    out_cached = ar_generate(cached, prompt, new, temperature=0)
    out_uncached = ar_generate(uncached, prompt, new, temperature=0, use_cache=False)
    assert len(cached.calls) == len(uncached.calls) == new
    for step, (a, b) in enumerate(zip(cached.calls, uncached.calls)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {step}")
    assert torch.equal(out_cached, out_uncached)


def test_ar_past_the_context_equals_a_direct_recomputation_from_the_last_half():
    """Past the context the cache restarts from the last block_size // 2 tokens: each greedy token must be the
    argmax of the full model over exactly the tokens since that restart."""
    model, block = sharp_model(block_size=16), 16
    prompt = torch.randint(0, 60, (2, 5), generator=torch.Generator().manual_seed(3))
    out = ar_generate(model, prompt, 40, temperature=0)
    idx, start = prompt, 0
    with torch.no_grad():
        for _ in range(40):
            if idx.shape[1] - start >= block:
                start = idx.shape[1] - block // 2
            idx = torch.cat([idx, model(idx[:, start:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, idx)


def frequencies(draws, n_vocab):
    return torch.bincount(draws.flatten(), minlength=n_vocab).double() / draws.numel()


def test_ar_draws_follow_the_softmax_their_temperature_top_k_and_top_p_define():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    rows = logits.repeat(40000, 1)
    gen = torch.Generator().manual_seed(0)
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.softmax(logits.double() / temperature, -1)
        got = frequencies(sample.sample_next(rows, temperature, generator=gen), 5)
        assert (got - expected).abs().max() < 0.01, (temperature, got, expected)
    top2 = torch.softmax(logits[:2].double(), -1)
    got = frequencies(sample.sample_next(rows, 1.0, top_k=2, generator=gen), 5)
    assert got[2:].sum() == 0 and (got[:2] - top2).abs().max() < 0.01
    p = torch.softmax(logits.double(), -1)  # 0.55, 0.20, 0.12, ...: top_p 0.7 keeps the first two only
    got = frequencies(sample.sample_next(rows, 1.0, top_p=0.7, generator=gen), 5)
    assert p[0] < 0.7 <= p[0] + p[1] and got[2:].sum() == 0 and (got[:2] - p[:2] / p[:2].sum()).abs().max() < 0.01


class FixedLogits(nn.Module):
    """A stand-in model whose logits are the same at every position: the diffusion sampler's draws are then
    plain draws from one distribution."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.config = ModelConfig(n_vocab=len(logits), block_size=4)

    def forward(self, x):
        return self.logits.expand(*x.shape, -1)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_the_diffusion_samplers_draws_follow_softmax_over_temperature(temperature):
    logits = torch.tensor([1.5, 1.0, 0.0, -0.5])
    model = FixedLogits(logits)
    x = torch.full((30000, 1), model.config.mask_id)  # one masked position a row, one step
    out = diffusion_generate(model, x, prompt_length=0, steps=1, temperature=temperature,
                             generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(logits.double() / temperature, -1)
    assert (frequencies(out, 4) - expected).abs().max() < 0.012


class PositionLogits(nn.Module):
    """A stand-in model with one fixed distribution per position (logits (T, V)), whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.config = ModelConfig(n_vocab=logits.shape[1], block_size=logits.shape[0])

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1)


def test_low_confidence_scores_a_position_by_the_probability_of_the_token_it_drew():
    """Position 0 draws token 0 (p = 0.6) or token 1 (p = 0.4); position 1 draws either of two tokens at 0.5. The
    first of two steps commits the position whose drawn token is the more probable: position 1 exactly in the rows
    where position 0 drew its 0.4 token. Scored by each position's largest probability instead, position 0 (0.6)
    would always go first."""
    probs = torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    model = PositionLogits(probs.clamp_min(1e-12).log())
    after_first_step = []
    x = torch.full((400, 2), model.config.mask_id)
    diffusion_generate(model, x, prompt_length=0, steps=2, block_length=2, temperature=1.0,
                       generator=torch.Generator().manual_seed(0),
                       on_step=lambda state, step: after_first_step.append(state.clone()) if step == 1 else None)
    state = after_first_step[0]
    first_was_0 = state[:, 0] != model.config.mask_id
    assert (first_was_0 != (state[:, 1] != model.config.mask_id)).all()  # one position committed per row
    assert (state[first_was_0, 0] == 0).all()  # position 0 went first only with its 0.6 token
    assert 0.3 < (~first_was_0).float().mean() < 0.5  # and position 1 first in the rows where it drew the 0.4 one


# ----------------------------------------------------------------------------- training mechanics

def test_the_learning_rate_schedule_at_known_iterations():
    config = TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_iters=10)
    lr = [trainer.lr_at(it, config, 110) for it in range(111)]
    assert lr[0] == pytest.approx(1e-4) and lr[4] == pytest.approx(5e-4) and lr[9] == pytest.approx(1e-3)  # linear
    assert lr[10] == pytest.approx(1e-3)  # the cosine starts at the peak
    assert lr[60] == pytest.approx(1e-4 + 0.5 * 0.9e-3)  # half way through the cosine: the midpoint
    assert lr[110] == pytest.approx(1e-4) and min(lr) == pytest.approx(1e-4)  # the floor, at the end
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert trainer.lr_at(5, TrainConfig(lr=1e-3, warmup_fraction=0.1), 100) == pytest.approx(6e-4)
    assert trainer.lr_at(0, TrainConfig(lr=1e-3, warmup_iters=100), 50) == pytest.approx(2e-4)  # <= 10%


def test_grad_accum_k_equals_one_batch_k_times_as_large(data_dir, tmp_path):
    one, accumulated = str(tmp_path / "one"), str(tmp_path / "accum")
    train("ar", data_dir, one, "--max_iters=12", "--eval_interval=6", "--batch_size=8")
    train("ar", data_dir, accumulated, "--max_iters=12", "--eval_interval=6", "--batch_size=4", "--grad_accum=2")
    a, b = read_log(one), read_log(accumulated)
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], abs=1e-5)
        if ra["train_loss"] is not None:  # the logged loss is the mean over the step's windows, not k times it
            assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-5)
    wa = torch.load(one + "/ckpt.pt", weights_only=True)["model"]
    wb = torch.load(accumulated + "/ckpt.pt", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_gradients_are_clipped_to_grad_clip_before_the_step(data_dir, tmp_path, monkeypatch):
    norms = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return real_step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    train("ar", data_dir, str(tmp_path / "clipped"), "--max_iters=5", "--eval_interval=5", "--grad_clip=0.05")
    assert len(norms) == 5 and all(n <= 0.05 * (1 + 1e-4) for n in norms)
    norms.clear()
    train("ar", data_dir, str(tmp_path / "free"), "--max_iters=5", "--eval_interval=5", "--grad_clip=1000")
    assert max(norms) > 0.05  # the clip above was doing something


def test_weight_decay_on_matrices_only_and_every_parameter_once():
    model = sharp_model()
    groups = trainer.make_optimizer(model, TrainConfig(weight_decay=0.3), "cpu").param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.3 for p in g["params"]}
    free = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in free} == {n for n, p in model.named_parameters() if n.endswith("norm.weight")}
    assert decayed | free == set(names) and not decayed & free
    assert "embed.weight" in {names[i] for i in decayed}


def test_the_ar_script_trains_a_model_that_cannot_see_the_future(tmp_path):
    """On random letters nothing is predictable: a causal model stays near ln(16) per letter, while one that sees
    the next token (bidirectional attention) learns to copy it and its loss falls far below."""
    letters = torch.randint(0, 16, (12000,), generator=torch.Generator().manual_seed(0))
    text = "".join(chr(ord("a") + int(i)) for i in letters)
    prepare(text[:11000], text[11000:], str(tmp_path / "data" / "noise"), "bytes", "test")
    losses = {}
    for causal in (train_ar.CAUSAL, not train_ar.CAUSAL):
        out = str(tmp_path / f"causal_{causal}")
        args = [a for a in tiny_args(str(tmp_path / "data"), out, "--max_iters=300", "--eval_interval=300",
                                     "--lr=1e-2") if a != "--dataset=tiny"] + ["--dataset=noise"]
        run_training(train_ar, args, CAUSAL=causal)
        losses[causal] = read_log(out)[-1]["val_loss"]
    assert train_ar.CAUSAL and losses[True] > 0.95 * math.log(16) > 2 * losses[False], losses


# ----------------------------------------------------------------------------- scores

def test_the_conditional_elbo_never_masks_or_scores_the_context(monkeypatch):
    model = sharp_model(causal=False)
    mask_id = model.config.mask_id
    config = TrainConfig(elbo_samples=8, eval_batch_size=64)
    contexts = torch.randint(0, 60, (3, 9), generator=torch.Generator().manual_seed(4))
    continuations = torch.randint(0, 60, (3, 5), generator=torch.Generator().manual_seed(5))
    seen = []
    real_forward = Transformer.forward

    def forward(self, idx, cache=None, positions=None):
        seen.append(idx.clone())
        return real_forward(self, idx, cache, positions)
    monkeypatch.setattr(Transformer, "forward", forward)
    nll = train_diffusion.continuation_nll(model, contexts, continuations, [0, 1, 2], *eval_args(config))
    inputs = torch.cat(seen)
    assert not (inputs[:, :9] == mask_id).any() and (inputs[:, 9:] == mask_id).any()

    def scrambled(self, idx, cache=None, positions=None):  # garbage logits at context positions: the score stays
        logits = real_forward(self, idx, cache)
        logits[:, :9] = torch.randn(logits[:, :9].shape)
        return logits if positions is None else logits[positions]
    monkeypatch.setattr(Transformer, "forward", scrambled)
    again = train_diffusion.continuation_nll(model, contexts, continuations, [0, 1, 2], *eval_args(config))
    torch.testing.assert_close(nll, again)


def test_evaluate_scores_the_items_a_run_logged_with_the_logged_accuracy(data_dir, tmp_path, capsys):
    out = str(tmp_path / "ar")
    args = [a for a in tiny_args(data_dir, out, "--max_iters=30", "--eval_interval=10") if a != "--mc_items=0"]
    run_training(train_ar, args + ["--mc_items=60"])
    log = read_log(out)
    best = min(log, key=lambda r: r["val_loss"])
    # best.pt, the run's own items (its eval_seed, its selection files)
    result = launch.evaluate_run([f"--ckpt={out}", "--mc_items=60", "--mc_set=selection"])
    assert result["mc_accuracy"] == best["mc_accuracy"] and len({r["mc_accuracy"] for r in log}) > 1
    assert json.load(open(os.path.join(data_dir, "tiny", "meta.json")))["tokenizer"] == "bytes"


@pytest.mark.parametrize("temperature", [1e-300, 1e-30, 1.0, 1e30, 1e300])
def test_no_temperature_makes_a_sampler_emit_mask_or_padding(temperature):
    """[MASK] and the padding ids have no output column: neither sampler may ever choose one, at any temperature."""
    model = sharp_model(causal=False, block_size=16)
    n_vocab = model.config.n_vocab
    gen = torch.Generator().manual_seed(0)
    x = torch.full((64, 16), model.config.mask_id)
    out = diffusion_generate(model, x, prompt_length=0, steps=16, temperature=temperature, generator=gen)
    assert (out < n_vocab).all()
    logits = sharp_model()(torch.randint(0, n_vocab, (64, 8), generator=gen))[:, -1]
    for top_k, top_p in ((0, 1.0), (3, 1.0), (0, 0.5)):
        assert (sample.sample_next(logits, temperature, top_k, top_p, generator=gen) < n_vocab).all()

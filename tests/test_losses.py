import math
import torch


import train_ar
from trainer import Noise
import train_diffusion
from model import ModelConfig, Transformer
from config import TrainConfig


def tiny_model(causal):
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_vocab=50, block_size=12, n_layer=2, n_head=2, n_embd=32, causal=causal)).eval()


def test_ar_loss_against_direct_computation():
    model = tiny_model(True)
    windows = torch.randint(0, 50, (3, 13))
    loss = train_ar.training_loss(model, windows, None)
    total = 0.0
    for b in range(3):
        for i in range(12):
            logp = torch.log_softmax(model(windows[b:b + 1, :i + 1])[0, -1], -1)  # prefix only: no cache, no future
            total -= logp[windows[b, i + 1]].item()
    assert math.isclose(loss.item(), total / 36, rel_tol=1e-5)


def test_diffusion_loss_against_direct_computation():
    model = tiny_model(False)
    B, T = 4, 12
    windows = torch.randint(0, 50, (B, T + 1))
    loss = train_diffusion.training_loss(model, windows, Noise(torch.Generator().manual_seed(3), 50))
    # the draws the docstring promises: one u for the batch, then one uniform per token
    gen = torch.Generator().manual_seed(3)
    u, token = torch.rand(1, generator=gen).item(), torch.rand(B, T, generator=gen)
    total = 0.0
    for b in range(B):
        t = 1e-3 + (1 - 1e-3) * ((u + b / B) % 1.0)  # stratified: one t in each quarter of [0, 1)
        x_t = windows[b, :T].clone()
        masked = [i for i in range(T) if token[b, i].item() < t]
        x_t[masked] = 50
        logp = torch.log_softmax(model(x_t[None])[0], -1)
        total += sum(-logp[i, windows[b, i]].item() for i in masked) / t
    # normalised by B*T, never by the number of masked tokens
    assert math.isclose(loss.item(), total / (B * T), rel_tol=1e-5)


def val_config(**kw):
    return TrainConfig(eval_batch_size=kw.pop("eval_batch_size", 7), elbo_samples=kw.pop("elbo_samples", 32), **kw)


def test_validation_elbo_is_deterministic_by_its_mask_seed_whatever_the_batching_or_split():
    model = tiny_model(False)
    windows = torch.randint(0, 50, (5, 13))
    ids = torch.arange(5)
    with torch.no_grad():
        a = train_diffusion.evaluate_loss(model, windows, ids, val_config())
        b = train_diffusion.evaluate_loss(model, windows, ids, val_config())
        # batching must not change the number: masks are seeded per window
        c = train_diffusion.evaluate_loss(model, windows, ids, val_config(eval_batch_size=64))
        # and a split of the windows (as DDP does) sums to the whole
        d1 = train_diffusion.evaluate_loss(model, windows[::2], ids[::2], val_config())
        d2 = train_diffusion.evaluate_loss(model, windows[1::2], ids[1::2], val_config())
        other_seed = train_diffusion.evaluate_loss(model, windows, ids, val_config(eval_seed=7))
    assert a == b and other_seed[0] != a[0]  # the same masks each time, and they come from the seed
    assert math.isclose(a[0], c[0], rel_tol=1e-6) and a[1] == c[1] == 5 * 12
    assert math.isclose(d1[0] + d2[0], a[0], rel_tol=1e-6)


def test_conditional_elbo_against_direct_computation_from_the_full_logits():
    """masked_elbo scores only the masked positions; the same number from every position's logits, by its formula:
    K stratified t_k = EPS + (1 - EPS) (k + u) / K from the row's seeded generator, then one uniform per token."""
    model, K, T = tiny_model(False), 4, 12
    x = torch.randint(0, 50, (3, T), generator=torch.Generator().manual_seed(5))
    maskable = torch.zeros(3, T, dtype=torch.bool)
    maskable[:, 4:] = True  # a context of 4, a continuation of 8
    with torch.no_grad():
        nats = train_diffusion.masked_elbo(model, x, maskable, [11, 12, 13], K, 5)
        for row, seed in enumerate([11, 12, 13]):
            gen = torch.Generator().manual_seed(seed)
            u = torch.rand(1, generator=gen).item()
            uniforms = torch.rand(K, T, generator=gen)
            total = 0.0
            for k in range(K):
                t = 1e-3 + (1 - 1e-3) * (k + u) / K
                masked = (uniforms[k] < t) & maskable[row]
                logp = torch.log_softmax(model(torch.where(masked, 50, x[row])[None])[0], -1)
                total += -logp[masked, x[row][masked]].sum().item() / t
            assert math.isclose(nats[row].item(), total / K, rel_tol=1e-5)


def test_validation_elbo_is_an_unbiased_estimate_of_the_training_loss():
    """The ELBO's estimate from many stratified t must agree with the mean training loss on the same window."""
    model = tiny_model(False)
    windows = torch.randint(0, 50, (1, 13))
    with torch.no_grad():
        config = val_config(elbo_samples=512, eval_batch_size=512)
        nats, count = train_diffusion.evaluate_loss(model, windows, torch.arange(1), config)
        losses = [train_diffusion.training_loss(model, windows.expand(256, 13),
                                                Noise(torch.Generator().manual_seed(i), 50)).item() for i in range(64)]
    mc = sum(losses) / len(losses)
    assert abs(nats / count - mc) / mc < 0.02


def test_ar_validation_is_exact_mean_nll():
    model = tiny_model(True)
    windows = torch.randint(0, 50, (4, 13))
    with torch.no_grad():
        nats, count = train_ar.evaluate_loss(model, windows, torch.arange(4), val_config(eval_batch_size=3))
        direct = train_ar.training_loss(model, windows, None).item()
    assert count == 48 and math.isclose(nats / count, direct, rel_tol=1e-5)


def test_the_readme_shows_the_losses_as_the_files_have_them():
    """Each Python block of the README's losses section is made of lines of the script named just before it, so the
    formula a reader sees is the one that runs."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    section = readme.split("## The two losses")[1].split("\n## ")[0]
    blocks = re.findall(r"\(`(train_\w+\.py)`[^\n]*\n(?:[^\n]*\n)*?```python\n(.*?)```", section, re.S)
    assert [script for script, _ in blocks] == ["train_ar.py", "train_diffusion.py"]
    for script, code in blocks:
        with open(os.path.join(root, script)) as f:
            lines = {line.strip() for line in f}
        for line in code.strip().splitlines():
            assert line.strip() in lines, f"README line not in {script}: {line.strip()}"

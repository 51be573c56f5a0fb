import pytest
import torch

from model import KVCache, ModelConfig, RMSNorm, Transformer


def tiny_model(causal, seed=0, **kw):
    torch.manual_seed(seed)
    config = ModelConfig(n_vocab=100, block_size=16, n_layer=2, n_head=2, n_embd=32, causal=causal, **kw)
    return Transformer(config).eval()


def test_causal_logits_ignore_future_tokens_bidirectional_do_not():
    idx = torch.randint(0, 100, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 100
    for causal in (True, False):
        model = tiny_model(causal)
        a, b = model(idx), model(changed)
        same_prefix = torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
        assert same_prefix == causal
        assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_the_input_vocab_is_padded_and_the_output_has_no_column_for_mask_or_padding():
    model = tiny_model(False)
    config = model.config
    assert config.mask_id == 100 and config.vocab_size % 64 == 0 and config.vocab_size >= 101
    assert model.embed.weight.shape[0] == config.vocab_size  # [MASK] and padding are inputs
    logits = model(torch.randint(0, 101, (3, 10)))
    assert logits.shape == (3, 10, 100) and torch.isfinite(logits).all()  # ... but never an output


@pytest.mark.parametrize("causal", [True, False])
def test_logits_at_chosen_positions_equal_the_full_logits_there(causal):
    model = tiny_model(causal)
    idx = torch.randint(0, 101, (3, 12), generator=torch.Generator().manual_seed(1))
    chosen = torch.rand(3, 12, generator=torch.Generator().manual_seed(2)) < 0.4
    full, some = model(idx), model(idx, positions=chosen)
    assert some.shape == (int(chosen.sum()), 100)
    torch.testing.assert_close(some, full[chosen], atol=1e-6, rtol=1e-6)
    assert model(idx, positions=torch.zeros_like(chosen)).shape == (0, 100)


def test_kv_cache_matches_full_forward_chunk_by_chunk():
    model = tiny_model(True)
    idx = torch.randint(0, 100, (2, 16))
    full = model(idx)
    cache = KVCache(model.config, 2, 16, idx.device, torch.float32)
    pieces = [model(idx[:, :5], cache=cache), model(idx[:, 5:6], cache=cache), model(idx[:, 6:11], cache=cache),
              model(idx[:, 11:], cache=cache)]
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_parameter_count_matches_the_architecture():
    model = tiny_model(True)
    c = model.config
    d, h, L = c.n_embd, c.mlp_hidden, c.n_layer
    # tied embedding + per layer (qkv, out proj, SwiGLU's three matrices, two norm gains) + final norm
    expected = c.vocab_size * d + L * (4 * d * d + 3 * d * h + 2 * d) + d
    assert model.num_params() == expected
    # training FLOPs per token (PaLM's count): 6 per non-embedding parameter, counted here from the modules (the
    # matrices and the norm gains), plus the tied output projection's n_vocab x d; attention's scores and weighted sum,
    # 2 x T x d FLOPs each per layer forward, times 3 for the backward
    matrices = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    gains = sum(m.weight.numel() for m in model.modules() if isinstance(m, RMSNorm))
    assert model.flops_per_token() == 6 * (matrices + gains + c.n_vocab * d) + 3 * 2 * 2 * L * c.block_size * d


def test_longer_than_context_is_an_error():
    model = tiny_model(True)
    try:
        model(torch.zeros(1, 17, dtype=torch.long))
    except ValueError as e:
        assert "context" in str(e)
    else:
        raise AssertionError("expected an error")


def test_rms_norm_and_its_hand_written_gradient_match_the_formula():
    """The forward is x / sqrt(mean(x^2) + eps) * weight; the backward, written out by hand for both x and the
    weight, is checked against finite differences in float64, over a batch of rows (the weight's gradient sums them)."""
    from model import RMSNormFunction
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    norm = RMSNorm(8).double()
    norm.weight.data.copy_(weight.detach())
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight
    torch.testing.assert_close(norm(x), expected)
    assert torch.autograd.gradcheck(lambda z, w: RMSNormFunction.apply(z, w, 1e-6), (x, weight))


def test_rope_rotates_each_channel_pair_by_its_positions_angle_so_scores_depend_on_distance_only():
    from model import apply_rope, rope_rotations
    T, H, hd, theta = 6, 2, 8, 10000.0
    x = torch.randn(1, T, H, hd)
    rotated = apply_rope(x, rope_rotations(hd, T, theta))
    for pos in range(T):
        for j in range(hd // 2):
            angle = torch.tensor(pos * theta ** (-2 * j / hd))
            a, b = x[0, pos, :, 2 * j], x[0, pos, :, 2 * j + 1]
            torch.testing.assert_close(rotated[0, pos, :, 2 * j], a * angle.cos() - b * angle.sin())
            torch.testing.assert_close(rotated[0, pos, :, 2 * j + 1], a * angle.sin() + b * angle.cos())
    # the same q and k at positions (1, 3) and (2, 4): the same score
    q, k = torch.randn(hd), torch.randn(hd)
    same = torch.stack([q, k, q, k])[None, None].expand(1, T, 4, hd).contiguous()  # q and k at every position
    rows = apply_rope(same, rope_rotations(hd, T, theta))
    assert torch.allclose(rows[0, 1, 0] @ rows[0, 3, 1], rows[0, 2, 2] @ rows[0, 4, 3], atol=1e-5)


def test_every_norm_gain_is_trained():
    model = tiny_model(True)
    model(torch.randint(0, 100, (2, 10))).sum().backward()
    gains = [m.weight for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(gains) == 2 * model.config.n_layer + 1
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gains)


@pytest.mark.parametrize("option", ["attn_dropout", "embd_dropout", "dropout"])
def test_each_dropout_acts_in_training_only(option):
    torch.manual_seed(0)
    config = ModelConfig(n_vocab=100, block_size=16, n_layer=2, n_head=2, n_embd=32, causal=False, **{option: 0.5})
    model, plain = Transformer(config), Transformer(ModelConfig(n_vocab=100, block_size=16, n_layer=2, n_head=2,
                                                                n_embd=32, causal=False))
    plain.load_state_dict(model.state_dict())
    x = torch.randint(0, 100, (2, 16))
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x))  # evaluation: no dropout anywhere
    model.train(), plain.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, plain(x))  # training: drawn afresh, and applied

"""
One Llama-style transformer for both objectives, as in the papers' code.

RoPE, RMSNorm, SwiGLU MLP, no biases, tied input/output embeddings, attention through
scaled_dot_product_attention. The only switch between the autoregressive and the masked-diffusion
model is `config.causal`. The input vocabulary is the tokenizer's tokens plus one [MASK] id (= n_vocab),
padded to a multiple of 64; the output layer covers the tokenizer's tokens only, so [MASK] and padding
can never be predicted.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


def shape_problem(n_embd, n_head):
    """Why n_embd and n_head cannot make attention heads (None if they can): RoPE rotates channel pairs, so each
    head needs a whole, even number of channels."""
    if n_embd % n_head or (n_embd // n_head) % 2:
        return (f"--n_embd {n_embd} / --n_head {n_head}: each head needs a whole, even number of channels "
                f"(n_embd = n_head x an even number, e.g. --n_embd {n_head * max(2, n_embd // n_head // 2 * 2)})")
    return None


@dataclass
class ModelConfig:
    n_vocab: int = 256  # tokenizer tokens; ids >= n_vocab are [MASK] and padding
    block_size: int = 128  # context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    causal: bool = True
    dropout: float = 0.0  # residual branches' outputs
    attn_dropout: float = 0.0  # attention weights
    embd_dropout: float = 0.0  # token embeddings
    rope_theta: float = 10000.0

    def __post_init__(self):
        problem = shape_problem(self.n_embd, self.n_head)
        if problem:
            raise ValueError(problem)

    @property
    def mask_id(self):
        return self.n_vocab

    @property
    def vocab_size(self):
        # +1 for [MASK], padded to a multiple of 64 for fast matmuls
        return (self.n_vocab + 1 + 63) // 64 * 64

    @property
    def mlp_hidden(self):
        # Llama's SwiGLU width: 2/3 of 4*d, rounded up to a multiple of 32
        return (int(8 * self.n_embd / 3) + 31) // 32 * 32


class RMSNorm(nn.Module):
    """RMSNorm, as in Llama: y = x / rms(x) * weight, rms(x) = sqrt(mean(x^2) + eps) over the last dim, in float32
    at least. Its gradient is written out (rms_norm_function): half the CPU kernels of autograd's graph for it."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return RMSNormFunction.apply(x, self.weight, self.eps)


class RMSNormFunction(torch.autograd.Function):
    """y = x_hat * w with x_hat = x / rms(x); backward: dw = sum over rows of g x_hat, and with gw = g * w,
    dx = (gw - x_hat mean(gw x_hat)) / rms(x)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        inv_rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        x_hat = xf * inv_rms
        ctx.save_for_backward(x_hat, inv_rms, weight)
        return (x_hat * weight).type_as(x)

    @staticmethod
    def backward(ctx, grad):
        x_hat, inv_rms, weight = ctx.saved_tensors
        g = grad.to(x_hat.dtype)
        g_x_hat = g * x_hat
        grad_weight = g_x_hat.flatten(0, -2).sum(0).type_as(weight)
        mean_gw_x_hat = (g_x_hat @ weight.to(g.dtype)).unsqueeze(-1) / x_hat.shape[-1]  # mean(g w x_hat), a matvec
        grad_x = torch.addcmul(g * weight, x_hat, mean_gw_x_hat, value=-1) * inv_rms
        return grad_x.type_as(grad), grad_weight, None


def rope_rotations(head_dim, max_len, theta):
    """RoPE's rotation of each channel pair at each position, as unit complex numbers e^(i * pos * theta^(-2j/d)),
    shape (max_len, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x, rotations):
    """Rotate each channel pair (2j, 2j + 1) of x (B, T, ..., head_dim) by its position's angle: one complex
    multiplication (as in Llama's code), a tenth of the CPU time of rotating the halves with real arithmetic."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    rotations = rotations.view(rotations.shape[0], *[1] * (x.dim() - 3), rotations.shape[1])
    return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, preallocated for `max_len` positions."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        hd = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, max_len, hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0  # positions filled


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.causal = config.causal
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, rotations, cache=None, layer=0):
        B, T, C = x.shape
        qk, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).split([2, 1], dim=2)
        q, k = apply_rope(qk, rotations).unbind(2)  # q and k rotated in one go
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.squeeze(2).transpose(1, 2)  # (B, H, T, hd)
        mask, is_causal = None, self.causal
        if cache is not None:
            # append this chunk's keys/values, attend to everything cached so far
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
            if T == 1:
                is_causal = False  # a single new query may see every cached key
            elif start > 0:
                # a chunk after a cached prefix: query i sees keys up to start + i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                is_causal = False
        # dropout on the attention weights comes from each process's own stream (SDPA draws it), unlike
        # shared_dropout's global masks below: the one draw a DDP run does not share with a single process
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=p)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))  # SwiGLU


def shared_dropout(x, p, share):
    """Dropout whose mask is drawn for the whole global batch and then sliced to this process's rows: share =
    (rank, world_size), x holds rows rank * B ... (rank + 1) * B - 1 of it. Every process draws the same global mask
    from the same seeded stream, so N processes drop exactly what one process with N times the batch drops."""
    rank, world_size = share
    B = x.shape[0]
    keep = torch.empty((B * world_size, *x.shape[1:]), device=x.device, dtype=x.dtype).bernoulli_(1 - p).div_(1 - p)
    return x * keep[rank * B:(rank + 1) * B]


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x, rotations, cache=None, layer=0, share=(0, 1)):
        x = x + self.drop(self.attn(self.attn_norm(x), rotations, cache, layer), share)
        return x + self.drop(self.mlp(self.mlp_norm(x)), share)

    def drop(self, y, share):
        return shared_dropout(y, self.dropout, share) if self.training and self.dropout else y


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd)  # the final one, before the output layer
        rotations = rope_rotations(config.n_embd // config.n_head, config.block_size, config.rope_theta)
        self.register_buffer("rope_rotations", rotations, persistent=False)
        self.dropout_share = (0, 1)  # (rank, world_size) of a DDP run: see shared_dropout
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                # residual projections scaled down with depth, as in GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, cache=None, positions=None):
        """idx (B, T) token ids -> logits (B, T, n_vocab) in float32, over the tokenizer's tokens only.

        positions: a bool (B, T) mask; then only the logits there, (N, n_vocab) in the order of idx[positions]
        (diffusion scores its masked tokens only, so the output layer skips the rest).
        With a KVCache, idx holds the next tokens after the cache's `length` positions.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context ({self.config.block_size})")
        rotations = self.rope_rotations[start:start + T]
        x = self.embed(idx)
        if self.training and self.config.embd_dropout:
            x = shared_dropout(x, self.config.embd_dropout, self.dropout_share)
        for i, block in enumerate(self.blocks):
            x = block(x, rotations, cache, i, self.dropout_share)
        if cache is not None:
            cache.length += T
        x = self.norm(x if positions is None else x[positions])
        # tied input/output embeddings, the tokenizer's rows only: [MASK] and padding are never a prediction
        return F.linear(x, self.embed.weight[:self.config.n_vocab]).float()

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward): 6 N plus attention's 12 L d T (PaLM appendix B)."""
        c = self.config
        seq_len = seq_len or c.block_size
        n_non_embedding = self.num_params() - self.embed.weight.numel()
        # the tied output projection is a real matmul of n_vocab x n_embd per token (diffusion's training and
        # evaluation run it at the masked positions only: about half of this term)
        return 6 * (n_non_embedding + c.n_vocab * c.n_embd) + 12 * c.n_layer * c.n_embd * seq_len

    def model_args(self):
        return asdict(self.config)

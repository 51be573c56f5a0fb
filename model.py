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
    dropout: float = 0.0
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
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_dim, max_len, theta):
    """cos and sin of the rotation angles, shape (max_len, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each (first half, second half) channel pair of x (B, H, T, hd) by its position's angle."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[None, None], sin[None, None]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


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
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cos, sin, cache=None, layer=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
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
        # no dropout on the attention weights: SDPA draws it from each process's own stream, and a DDP run must
        # draw exactly the masks of one process (shared_dropout below, on the residual branches, can)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
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

    def forward(self, x, cos, sin, cache=None, layer=0, share=(0, 1)):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, cache, layer), share)
        return x + self.drop(self.mlp(self.mlp_norm(x)), share)

    def drop(self, y, share):
        return shared_dropout(y, self.dropout, share) if self.training and self.dropout else y


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd)
        cos, sin = rope_tables(config.n_embd // config.n_head, config.block_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
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
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, self.dropout_share)
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

"""
Sample from a trained checkpoint: left to right with a KV cache (AR) or by iterative unmasking (diffusion).

    python sample.py --ckpt out/ar --start "The "                  # streams text as it is produced
    python sample.py --ckpt out/diffusion --start "The " --show    # watch the masks turn into text
    python sample.py --ckpt out/diffusion --start "def [MASK*12](x):"   # infilling (diffusion only)

In a prompt, `[MASK]` stands for one unknown token and `[MASK*N]` for N of them. `--start FILE:path` reads the
prompt from a file. The checkpoint's kind picks the decoder; its tokenizer decodes the text.
The functions are importable: ar_generate and diffusion_generate take a model and token tensors.
"""
import codecs
import re
from dataclasses import dataclass

import torch

from config import option
from model import KVCache
from runtime import load_checkpoint, mixed_precision, model_from_checkpoint, pick_device, pick_dtype
from tokenizer import tokenizer_from_meta

MASK_GLYPH = "\u2591"  # drawn for a still-masked token in --show


@dataclass
class SampleConfig:
    ckpt: str = "out/ar"  # a run folder (best.pt, else ckpt.pt) or a checkpoint file
    start: str = "\n"  # prompt text, or FILE:path
    num_samples: int = option(2, low=1)
    seed: int = option(1337, low=0)
    device: str = "auto"
    temperature: float = option(0.8, low=0)  # 0: greedy (AR) / argmax (diffusion)
    # AR
    max_new_tokens: int = option(300, low=0)
    top_k: int = option(0, low=0)  # keep the k most likely tokens (0: all)
    top_p: float = option(1.0, above=0, high=1)  # keep the smallest set of tokens whose probability reaches p
    # diffusion
    # tokens after the prompt (-1: the prompt's [MASK]s only when it has some, else the rest of the context in whole
    # blocks; 0: only fill the prompt's [MASK]s)
    gen_length: int = option(-1, low=-1)
    steps: int = option(0, low=0)  # denoising steps (0: one token per step)
    # semi-autoregressive block size (0: one block): small blocks keep weak models from committing runs of their
    # most confident token first
    block_length: int = option(8, low=0)
    remasking: str = option("low_confidence", choices=("low_confidence", "random"))
    show: bool = False  # print the denoising trajectory, one line per step


# ----------------------------------------------------------------------------- AR

def sample_next(logits, temperature, top_k=0, top_p=1.0, generator=None):
    """One token id per row from logits (B, V): argmax at temperature 0, else a draw after top-k / top-p."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # shifted so the largest is 0 before dividing: no temperature, however small, overflows to inf, and a -inf
    # of top-k / top-p never meets an inf
    logits = (logits.double() - logits.max(dim=-1, keepdim=True).values.double()) / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep tokens until the mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.inference_mode()
def ar_generate(model, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, generator=None,
                use_cache=True, on_token=None):
    """Extend idx (B, T) by max_new_tokens tokens. With the cache, the prompt is prefilled once and each step
    runs one token. Past the context, the cache is rebuilt from the last block_size // 2 tokens (without the
    cache: the last block_size tokens), so generation can go on for any length."""
    block_size = model.config.block_size
    if idx.shape[1] > block_size:
        raise ValueError(f"the prompt has {idx.shape[1]} tokens but the context is {block_size}: shorten it")
    cache, logits = None, None
    for n in range(max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -block_size:])[:, -1]
        elif cache is None or cache.length == block_size:
            # (re)fill the cache with the prompt, or with the last half context once the window is full
            context = idx if cache is None else idx[:, -(block_size // 2):]
            cache = KVCache(model.config, idx.shape[0], block_size, idx.device, model.embed.weight.dtype)
            logits = model(context, cache=cache)[:, -1]
        next_token = sample_next(logits, temperature, top_k, top_p, generator)
        idx = torch.cat([idx, next_token[:, None]], dim=1)
        if on_token is not None:
            on_token(next_token)
        if use_cache and cache.length < block_size and n < max_new_tokens - 1:
            logits = model(next_token[:, None], cache=cache)[:, -1]
    return idx


# ----------------------------------------------------------------------------- diffusion

def num_transfer_tokens(masked, steps):
    """How many masked positions each step commits (B, steps): each row's count spread evenly, the remainder
    going to the first steps (the linear schedule of LLaDA's reference sampler)."""
    count = masked.sum(dim=1, keepdim=True)
    schedule = (count // steps).repeat(1, steps)
    schedule += torch.arange(steps, device=masked.device)[None] < count % steps
    return schedule


@torch.inference_mode()
def diffusion_generate(model, x, prompt_length, steps, block_length=0, temperature=0.0,
                       remasking="low_confidence", generator=None, on_step=None):
    """Fill every [MASK] of x (B, L): positions >= prompt_length are generated in blocks of block_length, left to
    right, steps split evenly between blocks; masks inside the prompt (infilling) are filled with the first
    block. Each step predicts all positions, draws a candidate per masked position (argmax at temperature 0,
    a float64 Gumbel-max draw from softmax(logits / temperature) otherwise), scores candidates by their
    probability (low_confidence) or at random, and commits the best-scoring ones as the schedule says.
    Known tokens never change. on_step(x, step) is called after every step."""
    mask_id = model.config.mask_id
    gen_length = x.shape[1] - prompt_length
    block_length = block_length or gen_length or x.shape[1]
    if x.shape[1] > model.config.block_size:
        raise ValueError(f"prompt + generation is {x.shape[1]} tokens but the context is {model.config.block_size}: "
                        f"shorten the prompt or --gen_length")
    if gen_length % block_length:
        raise ValueError(f"--gen_length {gen_length} must be a multiple of --block_length {block_length}")
    num_blocks = max(gen_length // block_length, 1)
    if steps % num_blocks:
        raise ValueError(f"--steps {steps} must be a multiple of the number of blocks ({num_blocks})")
    steps_per_block = steps // num_blocks
    x = x.clone()
    position = torch.arange(x.shape[1], device=x.device)
    step = 0
    for block in range(num_blocks):
        block_end = prompt_length + (block + 1) * block_length if gen_length else x.shape[1]
        block_start = 0 if block == 0 else block_end - block_length  # the first block also takes the prompt's masks
        in_block = (position >= block_start) & (position < block_end)
        schedule = num_transfer_tokens((x == mask_id) & in_block, steps_per_block)
        for i in range(steps_per_block):
            masked = x == mask_id
            logits = model(x)
            if temperature > 0:
                # Gumbel-max in float64: argmax of exp(logits) / (-log u)^T (LLaDA's form) samples softmax(logits / T);
                # taken in logs, (logits - max) / T - log(-log u), so that no temperature makes 0 / 0 of a -inf logit
                u = torch.rand(logits.shape, dtype=torch.float64, generator=generator).to(x.device)
                shifted = logits.double() - logits.max(dim=-1, keepdim=True).values.double()
                candidates = (shifted / temperature - torch.log(-torch.log(u))).argmax(dim=-1)
            else:
                candidates = logits.argmax(dim=-1)
            if remasking == "low_confidence":
                score = torch.gather(logits.softmax(dim=-1), -1, candidates[..., None]).squeeze(-1)
            elif remasking == "random":
                score = torch.rand(x.shape, dtype=torch.float64, generator=generator).to(x.device)
            else:
                raise ValueError(f"--remasking {remasking}: choose low_confidence or random")
            score = torch.where(masked & in_block, score, float("-inf"))
            commit = torch.zeros_like(masked)
            for row in range(x.shape[0]):  # each row commits its own number of tokens
                commit[row, torch.topk(score[row], int(schedule[row, i])).indices] = True
            x = torch.where(commit, candidates, x)
            step += 1
            if on_step is not None:
                on_step(x, step)
    return x


# ----------------------------------------------------------------------------- text

def encode_prompt(enc, text, mask_id):
    """Token ids of text, with each [MASK] one mask id and each [MASK*N] N of them."""
    ids = []
    for piece in re.split(r"(\[MASK(?:\*\d+)?\])", text):
        if piece.startswith("[MASK"):
            ids += [mask_id] * (int(piece[6:-1]) if "*" in piece else 1)
        elif piece:
            ids += enc.encode_ordinary(piece)
    return ids


def render(enc, ids, mask_id):
    """Text of ids with masks drawn as MASK_GLYPH and newlines as a visible mark, on one line."""
    out, run = [], []
    for token in list(ids) + [None]:
        if token is None or token == mask_id:
            out.append(b"".join(enc.decode_single_token_bytes(t) for t in run).decode("utf-8", errors="replace"))
            run = []
            if token is not None:
                out.append(MASK_GLYPH)
        else:
            run.append(token)
    return "".join(out).replace("\n", "\u23ce")


def read_prompt(start):
    if start.startswith("FILE:"):
        with open(start[5:], encoding="utf-8") as f:
            return f.read()
    return start


def main(config):
    """num_samples samples from config.ckpt; the model's attention picks the decoder (causal: left to right)."""
    ckpt = load_checkpoint(config.ckpt)
    device = pick_device(config.device)
    model = model_from_checkpoint(ckpt, device)
    if ckpt.get("trained_ids") is not None:
        trained_only(model, ckpt["trained_ids"])
    enc = tokenizer_from_meta(ckpt["meta"])
    prompt = encode_prompt(enc, read_prompt(config.start), model.config.mask_id)
    if len(prompt) > model.config.block_size:
        raise ValueError(f"the prompt has {len(prompt)} tokens but the context is {model.config.block_size}: "
                         f"shorten it")
    generator = torch.Generator().manual_seed(config.seed)
    autocast, _ = mixed_precision(device, pick_dtype(device))  # as training: bf16 on recent GPUs, fp16 on older
    with autocast:
        (sample_ar if model.config.causal else sample_diffusion)(model, enc, prompt, config, generator)


def trained_only(model, trained_ids):
    """Make the model's logits -inf at every token its training never held (a hook on its output): such a token's
    embedding row was never trained as an input, and one drawn by chance derails everything decoded after it."""
    never = torch.ones(model.config.n_vocab, dtype=torch.bool, device=model.embed.weight.device)
    never[trained_ids.to(never.device)] = False
    return model.register_forward_hook(lambda module, args, logits: logits.masked_fill(never, float("-inf")))


def sample_ar(model, enc, prompt, config, generator):
    """num_samples continuations of the prompt, each streamed to the terminal token by token."""
    if not prompt:
        raise ValueError("--start is empty: the AR model needs at least one prompt token")
    if model.config.mask_id in prompt:
        raise ValueError("an AR model cannot infill: [MASK] in the prompt needs a diffusion checkpoint")
    for _ in range(config.num_samples):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        print(enc.decode(prompt), end="", flush=True)

        def stream(token):
            print(decoder.decode(enc.decode_single_token_bytes(int(token[0]))), end="", flush=True)

        idx = torch.tensor([prompt], device=model.embed.weight.device)
        ar_generate(model, idx, config.max_new_tokens, config.temperature, config.top_k, config.top_p,
                    generator, on_token=stream)
        print(decoder.decode(b"", final=True))
        print("-" * 60)


def sample_diffusion(model, enc, prompt, config, generator):
    """num_samples fills of the prompt's masks and of gen_length new tokens, printed when done (and every step
    of the first with --show)."""
    mask_id, block_size = model.config.mask_id, model.config.block_size
    gen_length = config.gen_length
    if gen_length < 0 and mask_id in prompt:  # infilling: the holes, and nothing after them
        gen_length = 0
    if gen_length < 0:  # the rest of the context, in whole blocks
        gen_length = block_size - len(prompt)
        gen_length -= gen_length % config.block_length if config.block_length else 0
    if len(prompt) + gen_length > block_size:
        raise ValueError(f"prompt ({len(prompt)}) + --gen_length ({gen_length}) is longer than the context "
                        f"({block_size}): shorten one")
    if gen_length == 0 and mask_id not in prompt:
        raise ValueError("--gen_length=0 only fills [MASK]s in the prompt, and the prompt has none")
    steps = config.steps or gen_length or prompt.count(mask_id)
    x = torch.tensor([prompt + [mask_id] * gen_length] * config.num_samples, device=model.embed.weight.device)

    def show(x, step):
        print(f"step {step:3d} | {render(enc, x[0].tolist(), mask_id)}")

    out = diffusion_generate(model, x, len(prompt), steps, config.block_length, config.temperature,
                             config.remasking, generator, on_step=show if config.show else None)
    for row in out.tolist():
        print(enc.decode(row))
        print("-" * 60)


if __name__ == "__main__":  # the command line: lab/ checks the options, the checkpoint and the prompt, then main
    from lab import launch
    launch.sample()

"""
How well each kind writes: generative perplexity (MDLM's gen-PPL) of samples, scored by a reference AR model you
name, with each sample set's unigram entropy beside it (a low entropy flags degenerate repetition) and its
decoding speed. Diffusion is sampled at several step counts, to show the trade: fewer steps, faster and worse.

    python experiments/sample_quality.py --ref=out/ar_all --runs=out/ar,out/diffusion
    python experiments/sample_quality.py --ref=out/ar_all --runs=out/diffusion --fractions=0.125,0.5,1 --samples=32

Every sample continues a prompt of `prompt_tokens` validation tokens by `new_tokens` tokens; AR samples at
temperature 1 with its KV cache, diffusion at temperature 1 with `steps = fraction x new_tokens`. gen-PPL =
exp(mean NLL of the new tokens given everything before them, under the reference). The reference should be strong:
for example an AR run trained on all the train tokens.
"""
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import train_ar  # noqa: E402
from lab.checks import checked_tokens, load_run_data  # noqa: E402
from runtime import load_checkpoint, model_from_checkpoint  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import list_items, parse_checked as parse_args  # noqa: E402
from sample import ar_generate, diffusion_generate  # noqa: E402
from tokenizer import same_tokenizer  # noqa: E402


@dataclass
class QualityConfig:
    ref: str = "out/ar"  # the reference AR run that scores every sample
    runs: str = "out/ar,out/diffusion"  # the runs to sample from, comma-separated
    samples: int = option(16, low=1)  # samples per setting
    prompt_tokens: int = option(8, low=1)
    new_tokens: int = option(64, low=1)
    fractions: str = option("0.125,0.25,0.5,1", items=float, above=0, high=1)  # diffusion steps / new_tokens
    block_length: int = option(8, low=0)  # diffusion's semi-autoregressive blocks (0: one block)
    seed: int = option(1337, low=0)
    device: str = "auto"


def gen_ppl(ref, prompts, generated, batch_size=64):
    """exp of the reference's mean NLL per generated token, each given its prompt and the tokens before it."""
    with torch.no_grad():  # AR's NLL is exact: no K, no seed
        nats = train_ar.continuation_nll(ref, prompts, generated, torch.arange(len(prompts)), 1, batch_size, 0)
    return math.exp(nats.sum().item() / generated.numel())


def unigram_entropy_bits(tokens):
    """Entropy of the token frequencies of a sample set, in bits (log2 of the vocabulary it really uses)."""
    counts = Counter(tokens.flatten().tolist())
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def load_runs(config, device):
    """The reference model and (name, kind, model) per run, all on the same tokenizer."""
    ref_ckpt = load_checkpoint(config.ref)
    if ref_ckpt["kind"] != "ar":
        raise UserError(f"--ref {config.ref} is a diffusion run: the reference must be AR, to score exactly")
    runs = []
    for path in [p for p in config.runs.split(",") if p]:
        ckpt = load_checkpoint(path)
        if not same_tokenizer(ckpt["meta"], ref_ckpt["meta"]):
            raise UserError(f"{path} and the reference {config.ref} use different tokenizers: give runs on one data")
        runs.append((path, ckpt["kind"], model_from_checkpoint(ckpt, device)))
    if not runs:
        raise UserError("--runs names no run: give run folders separated by commas")
    return ref_ckpt, model_from_checkpoint(ref_ckpt, device), runs


def val_prompts(ref_ckpt, config):
    """config.samples prompts: prompt_tokens val tokens each, from evenly spread places of the reference's val."""
    _, data_dir, meta = load_run_data(ref_ckpt)
    val = torch.from_numpy(checked_tokens(data_dir, "val", meta).astype("int64"))
    starts = torch.linspace(0, len(val) - config.prompt_tokens - 1, config.samples).long()
    return torch.stack([val[s:s + config.prompt_tokens] for s in starts])


def sample_sets(kind, model, prompts, config, device):
    """(decoder, steps, generated tokens (N, new_tokens), seconds) for each setting of a run."""
    generator = torch.Generator().manual_seed(config.seed)
    P, L, mask_id = prompts.shape[1], config.new_tokens, model.config.mask_id
    if P + L > model.config.block_size:
        raise UserError(f"--prompt_tokens {P} + --new_tokens {L} is longer than the context "
                        f"({model.config.block_size})")
    if kind == "ar":
        t0 = time.perf_counter()
        out = ar_generate(model, prompts.to(device), L, temperature=1.0, generator=generator)
        return [("AR, KV cache", L, out[:, P:].cpu(), time.perf_counter() - t0)]
    sets = []
    block = config.block_length or L
    if L % block:
        raise UserError(f"--new_tokens {L} must be a multiple of --block_length {block}")
    for fraction in list_items("fractions", config.fractions, float):
        steps = max(round(fraction * L / (L // block)), 1) * (L // block)  # whole steps per block
        x = torch.cat([prompts, torch.full((len(prompts), L), mask_id)], dim=1).to(device)
        t0 = time.perf_counter()
        out = diffusion_generate(model, x, P, steps, block, temperature=1.0, generator=generator)
        sets.append(("diffusion", steps, out[:, P:].cpu(), time.perf_counter() - t0))
    return sets


def main(argv=None):
    config = QualityConfig()
    parse_args(sys.argv[1:] if argv is None else argv, config, doc=__doc__)
    device = pick_device(config.device)
    ref_ckpt, ref, runs = load_runs(config, device)
    prompts = val_prompts(ref_ckpt, config)
    print(f"reference: {config.ref} | {config.samples} samples of {config.new_tokens} tokens after "
          f"{config.prompt_tokens} val tokens | temperature 1")
    print(f"{'run':<24} {'decoder':<14} {'steps':>5} {'gen-PPL':>9} {'entropy':>8} {'tokens/s':>9}")
    rows = []
    for name, kind, model in runs:
        for decoder, steps, generated, seconds in sample_sets(kind, model, prompts, config, device):
            row = {"run": name, "decoder": decoder, "steps": steps, "gen_ppl": gen_ppl(ref, prompts.to(device),
                                                                                       generated.to(device)),
                   "entropy_bits": unigram_entropy_bits(generated), "tokens_per_s": generated.numel() / seconds}
            rows.append(row)
            print(f"{os.path.basename(os.path.normpath(name)):<24} {decoder:<14} {steps:>5} {row['gen_ppl']:>9.1f} "
                  f"{row['entropy_bits']:>8.2f} {row['tokens_per_s']:>9,.0f}")
    print("gen-PPL: lower is better, but a degenerate sample (low entropy) can score well; entropy in bits")
    return rows


if __name__ == "__main__":
    run_cli(main)

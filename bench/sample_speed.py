"""
Decoding speed on this device: AR tokens/s with and without the KV cache, and diffusion tokens/s at several step
counts. A model with random weights of the given shape (speed does not depend on what it learned).

    python bench/sample_speed.py                       # 4 layers x 128, context 1024, 512 new tokens
    python bench/sample_speed.py --n_layer=12 --n_head=12 --n_embd=768 --device=cuda
"""
import os
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
from shape import ModelShape, random_model  # noqa: E402
from sample import ar_generate, diffusion_generate  # noqa: E402
from lab.errors import run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import list_items, parse_checked as parse_args  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402


@dataclass
class SpeedConfig(ModelShape):
    block_size: int = option(1024, low=2)
    new_tokens: int = option(512, low=1)
    gen_length: int = option(256, low=1)  # diffusion
    steps: str = option("32,64,128,256", items=int, low=1)
    device: str = "auto"


def timed(fn):
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    config = SpeedConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    device = pick_device(config.device)
    torch.manual_seed(0)
    ar = random_model(config, True, device).eval()
    diffusion = random_model(config, False, device).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name} | {config.n_layer} layers x {config.n_embd}, context {config.block_size}, batch 1")
    print(f"{'decoder':<34} {'tokens/s':>10} {'seconds':>8}")
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    results = {}
    for use_cache in (True, False):
        dt = timed(lambda: ar_generate(ar, prompt, config.new_tokens, temperature=0, use_cache=use_cache))
        results[use_cache] = config.new_tokens / dt
        label = f"AR, {config.new_tokens} tokens, {'KV cache' if use_cache else 'no cache'}"
        print(f"{label:<34} {results[use_cache]:>10,.0f} {dt:>8.2f}")
    print(f"{'KV cache speed-up':<34} {results[True] / results[False]:>9.1f}x")
    x = torch.full((1, 1 + config.gen_length), diffusion.config.mask_id, device=device)
    x[0, 0] = 0
    for steps in list_items("steps", config.steps, int):
        dt = timed(lambda: diffusion_generate(diffusion, x, 1, steps))
        label = f"diffusion, {config.gen_length} tokens, {steps} steps"
        print(f"{label:<34} {config.gen_length / dt:>10,.0f} {dt:>8.2f}")


if __name__ == "__main__":
    run_cli(main)

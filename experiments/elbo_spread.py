"""
How much does the diffusion validation ELBO move with the random masks? Evaluates one checkpoint on its run's
validation windows with several mask seeds and K values and prints the mean and spread, to set a margin
between two runs against the noise of the estimate.

    python experiments/elbo_spread.py --ckpt=out/cpu_recipe/diffusion_e300 --seeds=5 --ks=32,128
"""
import dataclasses
import os
import statistics
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch  # noqa: E402

import train_diffusion  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import list_items, parse_checked as parse_args  # noqa: E402
from data import val_windows  # noqa: E402
from lab.checks import checked_tokens, load_run_data  # noqa: E402
from runtime import load_checkpoint, model_from_checkpoint  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402


@dataclass
class SpreadConfig:
    ckpt: str = "out/diffusion"
    seeds: int = option(5, low=2)  # mask seeds per K (a spread needs two)
    ks: str = option("32,128", items=int, low=1)  # K values (stratified t per window)
    device: str = "auto"


def main():
    config = SpreadConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    ckpt = load_checkpoint(config.ckpt)
    if ckpt["kind"] != "diffusion":
        raise UserError(f"{config.ckpt} is an AR checkpoint: its validation NLL is exact, with no spread")
    train_config, data_dir, meta = load_run_data(ckpt)
    windows = val_windows(checked_tokens(data_dir, "val", meta), train_config.block_size, train_config.eval_windows)
    device = pick_device(config.device)
    model = model_from_checkpoint(ckpt, device)
    print(f"{config.ckpt}: iter {ckpt['iter']}, epoch {ckpt['epoch']:.1f}, {len(windows)} val windows")
    for k in list_items("ks", config.ks, int):
        values = []
        for seed in range(config.seeds):
            with torch.no_grad():
                scoring = dataclasses.replace(train_config, elbo_samples=k, eval_seed=1234 + seed)
                nats, count = train_diffusion.evaluate_loss(model, windows.to(device), torch.arange(len(windows)),
                                                            scoring)
            values.append(nats / count)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"K = {k:4d}: ELBO {statistics.mean(values):.4f} +- {spread:.4f} nats/token (std over {len(values)} "
              f"mask seeds; min {min(values):.4f}, max {max(values):.4f})")


if __name__ == "__main__":
    run_cli(main)

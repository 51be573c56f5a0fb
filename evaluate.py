"""
Score a checkpoint on the validation loss and the multiple-choice continuation test (downstream.py).

    python evaluate.py --ckpt out/ar                       # a run folder (best.pt, else ckpt.pt) or a file
    python evaluate.py --ckpt out/diffusion --mc_items=1000 --elbo_samples=128 --eval_windows=256

The validation loss is the run's own (AR: exact NLL; diffusion: ELBO with K = the run's --elbo_samples, or the K
given) on the run's validation windows; the test uses the same K for diffusion's conditional ELBO. Its items come
from the val files the run's own per-evaluation items did not (downstream.split_files).
"""
import importlib
import math
import os
import sys
from dataclasses import dataclass

import torch

import downstream
from config import TrainConfig, option
from data import load_meta, load_tokens, val_windows
from runtime import load_checkpoint, model_from_checkpoint, pick_device


@dataclass
class EvalConfig:
    ckpt: str = "out/ar"
    data_dir: str = ""  # default: the run's
    dataset: str = ""  # default: the run's
    eval_windows: int = option(-1, low=-1)  # validation windows (-1: the run's; 0: all)
    mc_items: int = option(500, low=1)
    # context tokens of an item (0: 64 for bytes, 48 for BPE, fewer when the model's context is shorter)
    mc_context: int = option(0, low=0)
    # continuation tokens of an item (0: 24 for bytes, 16 for BPE, as above)
    mc_continuation: int = option(0, low=0)
    mc_choices: int = option(4, low=2)
    mc_seed: int = option(-1, low=-1)  # which items (-1: the run's eval_seed)
    # which val files the items come from: test (held out from the run's own selection items), selection (those
    # the run's log scored, its eval_seed and mc_items giving the very items), or all
    mc_set: str = option("test", choices=("test", "selection", "all"))
    # K of diffusion's ELBOs (0: the run's --elbo_samples)
    elbo_samples: int = option(0, low=0)
    device: str = "auto"


def show_progress(done, total):
    print(f"\r  multiple choice: {done}/{total} items", end="" if done < total else "\n", file=sys.stderr, flush=True)


def objective_of(ckpt):
    """The training script's module that wrote a checkpoint (its losses score it): the name the checkpoint records."""
    return importlib.import_module(ckpt.get("objective") or f"train_{ckpt['kind']}")


def loaded(path, device, data_dir="", dataset=""):
    """(checkpoint, its training config, its data folder's meta, val tokens, model on device) of a checkpoint; the
    run's own data folder unless data_dir or dataset say otherwise."""
    ckpt = load_checkpoint(path)
    train = TrainConfig(**ckpt["config"])
    folder = os.path.join(data_dir or train.data_dir, dataset or train.dataset)
    meta = load_meta(folder)
    return ckpt, train, meta, load_tokens(folder, "val"), model_from_checkpoint(ckpt, device)


def val_score(ckpt, model, val_tokens, train):
    """Validation loss in nats/token on train.eval_windows fixed val windows (0: all), with the run's options (K =
    train.elbo_samples for diffusion's ELBO)."""
    device = model.embed.weight.device
    rows = val_windows(val_tokens, train.block_size, train.eval_windows)
    with torch.no_grad():
        nats, count = objective_of(ckpt).evaluate_loss(model, rows.to(device), torch.arange(len(rows)), train)
    return nats / count, len(rows)


def choice_correct(ckpt, model, items, samples, batch_size, seed, progress=None):
    """A bool per multiple-choice item (downstream.correct_choices), diffusion's conditional ELBO at K = samples."""
    device = model.embed.weight.device
    nll = objective_of(ckpt).continuation_nll
    with torch.no_grad():
        return downstream.correct_choices(items, lambda c, x, ids: nll(model, c.to(device), x.to(device), ids,
                                                                       samples, batch_size, seed), progress=progress)


def main(config):
    """The checkpoint's validation loss and multiple-choice accuracy, printed and returned."""
    device = pick_device(config.device)
    ckpt, train, meta, val_tokens, model = loaded(config.ckpt, device, config.data_dir, config.dataset)
    lengths = downstream.item_lengths(meta, train.block_size, config.mc_context, config.mc_continuation)
    train.eval_windows = train.eval_windows if config.eval_windows < 0 else config.eval_windows
    train.elbo_samples = samples = config.elbo_samples or train.elbo_samples
    print(f"{config.ckpt} ({ckpt['kind']}, {model.num_params() / 1e6:.2f}M parameters, iteration {ckpt['iter']}, "
          f"epoch {ckpt['epoch']:.1f})")

    loss, n_windows = val_score(ckpt, model, val_tokens, train)
    kind_of_loss = "exact NLL" if model.config.causal else f"ELBO, K = {samples}"
    print(f"val loss: {loss:.4f} nats/token ({n_windows} windows; {kind_of_loss})"
          + (f", {loss / math.log(2):.4f} bits/byte" if meta["tokenizer"] == "bytes" else ""))
    items = downstream.build_items(val_tokens, config.mc_items, *lengths, config.mc_choices,
                                   train.eval_seed if config.mc_seed < 0 else config.mc_seed,
                                   files=downstream.item_set(val_tokens, meta, config.mc_set))
    correct = choice_correct(ckpt, model, items, samples, train.eval_batch_size, train.eval_seed, show_progress)
    acc, chance = correct.double().mean().item(), 1 / config.mc_choices
    se = math.sqrt(acc * (1 - acc) / len(correct))
    print(f"multiple choice ({config.mc_set} files): {acc:.3f} +- {se:.3f} ({config.mc_items} items, "
          f"{config.mc_choices} choices: chance {chance:.3f}; context {lengths[0]}, continuation {lengths[1]} tokens)")
    return {"val_loss": loss, "mc_accuracy": acc, "mc_se": se, "chance": chance}


if __name__ == "__main__":  # the command line: lab/ checks the options, the checkpoint and its data, then main
    from lab import launch
    launch.evaluate()

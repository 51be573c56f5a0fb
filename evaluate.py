"""
Score a checkpoint on the validation loss and the multiple-choice continuation test (downstream.py).

    python evaluate.py --ckpt out/ar                       # a run folder (best.pt, else ckpt.pt) or a file
    python evaluate.py --ckpt out/diffusion --mc_items=1000

The validation loss is the run's own (AR: exact NLL; diffusion: ELBO with K = the run's --elbo_samples) on the
run's validation windows; the test uses the same K for diffusion's conditional ELBO.
"""
import math
import sys
from dataclasses import dataclass

import torch

import downstream
import train_ar
import train_diffusion
from data import load_run_data, load_tokens, val_windows
from runtime import load_checkpoint, model_from_checkpoint, pick_device
from cli import option, parse_args, run_cli

SCRIPTS = {"ar": train_ar, "diffusion": train_diffusion}


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
    mc_seed: int = option(-1, low=-1)  # which items (-1: the run's eval_seed, as in its log)
    device: str = "auto"


def show_progress(done, total):
    print(f"\r  multiple choice: {done}/{total} items", end="" if done < total else "\n", file=sys.stderr, flush=True)


def main(argv=None):
    config = EvalConfig()
    parse_args(sys.argv[1:] if argv is None else argv, config, doc=__doc__)
    ckpt = load_checkpoint(config.ckpt)
    train, data_dir, meta = load_run_data(ckpt, config.data_dir, config.dataset)
    context_len, continuation_len = downstream.item_lengths(meta, train.block_size, config.mc_context,
                                                            config.mc_continuation)
    if config.eval_windows >= 0:
        train.eval_windows = config.eval_windows
    device = pick_device(config.device)
    model = model_from_checkpoint(ckpt, device)
    script = SCRIPTS[ckpt["kind"]]
    val_tokens = load_tokens(data_dir, "val", meta)
    print(f"{config.ckpt} ({ckpt['kind']}, {model.num_params() / 1e6:.2f}M parameters, iteration {ckpt['iter']}, "
          f"epoch {ckpt['epoch']:.1f})")

    with torch.no_grad():
        windows = val_windows(val_tokens, train.block_size, train.eval_windows)
        nats, count = script.validation_loss(model, windows.to(device), torch.arange(len(windows)),
                                             train.elbo_samples, train.eval_batch_size, train.eval_seed)
        kind_of_loss = "exact NLL" if ckpt["kind"] == "ar" else f"ELBO, K = {train.elbo_samples}"
        print(f"val loss: {nats / count:.4f} nats/token ({len(windows)} windows; {kind_of_loss})"
              + (f", {nats / count / math.log(2):.4f} bits/byte" if meta["tokenizer"] == "bytes" else ""))
        items = downstream.build_items(val_tokens, config.mc_items, context_len, continuation_len,
                                       config.mc_choices, train.eval_seed if config.mc_seed < 0 else config.mc_seed)
        acc, se, chance = downstream.accuracy(
            items, lambda c, x, ids: script.continuation_nll(
                model, c.to(device), x.to(device), ids, train.elbo_samples, train.eval_batch_size, train.eval_seed),
            progress=show_progress)
    print(f"multiple choice: {acc:.3f} +- {se:.3f} ({config.mc_items} items, {config.mc_choices} choices: chance "
          f"{chance:.3f}; context {context_len}, continuation {continuation_len} tokens)")
    return {"val_loss": nats / count, "mc_accuracy": acc, "mc_se": se, "chance": chance}


if __name__ == "__main__":
    run_cli(main)

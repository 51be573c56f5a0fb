"""
Train the autoregressive model: causal attention, next-token loss.

    python train_ar.py                                    # small model on the default corpus, CPU, minutes
    python train_ar.py --unique_tokens=50000 --epochs=100 --out_dir=out/ar_u50k

The loop, data, schedule and checkpoints live in trainer.py; this file holds only what makes the model AR: causal
attention, the next-token loss, and that loss's two evaluations (the exact validation NLL and the exact NLL of a
continuation). `diff train_ar.py train_diffusion.py` shows everything that differs between the two.
"""
import torch
import torch.nn.functional as F

KIND = "ar"
CAUSAL = True


def training_loss(model, batch, noise):
    """AR loss: mean over b, i of -log p(x[b, i+1] | x[b, :i+1]). AR masks nothing: it draws no `noise`."""
    x, targets = batch[:, :-1], batch[:, 1:]
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def log_fields(config):
    """What this objective adds to every line of log.jsonl: AR's validation loss is exact, it draws no samples."""
    return {"elbo_samples": None}


def evaluate_loss(model, windows, window_ids, config):
    """Exact NLL: (sum of -log p over every next token of `windows`, number of tokens), eval_batch_size windows at
    a time. Exact, so it draws nothing: `window_ids` (diffusion seeds its masks by them) is unused."""
    nats = 0.0
    for i in range(0, len(windows), config.eval_batch_size):
        batch = windows[i:i + config.eval_batch_size]
        logits = model(batch[:, :-1])
        nats += F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
    return nats, windows[:, 1:].numel()


def continuation_nll(model, contexts, continuations, item_ids, samples, batch_size, seed):
    """Exact -log p(continuation | context) per row, in nats: the chain rule over the continuation's tokens
    (`item_ids`, `samples` and `seed`: diffusion draws masks, AR does not)."""
    if contexts.shape[1] == 0:
        raise ValueError("an AR model needs at least one context token to score a continuation")
    x = torch.cat([contexts, continuations], dim=1)
    C, nats = contexts.shape[1], []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size]
        logits = model(batch[:, :-1])[:, C - 1:]  # the predictions of the continuation's tokens
        nll = F.cross_entropy(logits.flatten(0, 1), batch[:, C:].flatten(), reduction="none")
        nats.append(nll.view(len(batch), -1).sum(dim=1).double().cpu())
    return torch.cat(nats)


if __name__ == "__main__":  # the command line: lab/ checks the options and guards the run folder, then trainer.run
    import sys
    from lab import launch
    launch.train(sys.modules[__name__])

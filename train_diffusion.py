"""
Train the masked-diffusion model: bidirectional attention, masked-token loss weighted by 1/t.

    python train_diffusion.py                             # small model on the default corpus, CPU, minutes
    python train_diffusion.py --unique_tokens=50000 --epochs=100 --out_dir=out/diffusion_u50k

The loop, data, schedule and checkpoints live in trainer.py; this file holds only what makes the model diffusion:
bidirectional attention, the masked-token loss, and that loss's two evaluations (the ELBO bound on the validation
NLL and on a continuation's NLL). `diff train_ar.py train_diffusion.py` shows everything that differs between the two.
"""
import torch
import torch.nn.functional as F

KIND = "diffusion"
CAUSAL = False
EPS = 1e-3  # t ~ U(EPS, 1): the 1/t weight stays finite


def draw_masks(x, noise):
    """t (B,) and the masked positions (B, T) of this process's rows of x. Drawn for the whole global batch of
    B * world_size rows from noise.generator (seeded by seed, iteration and micro-step: the same in every process),
    then sliced to this process's rows: N processes, and a resumed run, see exactly the masks of one uninterrupted
    process."""
    (B, T), world_size = x.shape, noise.world_size
    u = torch.rand(1, generator=noise.generator)
    u_rows = (u + torch.arange(B * world_size) / (B * world_size)) % 1.0  # stratified over the batch, as in MDLM
    u_tokens = torch.rand(B * world_size, T, generator=noise.generator)
    rows = slice(noise.rank * B, (noise.rank + 1) * B)
    t = EPS + (1 - EPS) * u_rows[rows].to(x.device)
    masked = u_tokens[rows].to(x.device) < t[:, None]  # each token masked independently with probability t
    return t, masked


def training_loss(model, batch, noise):
    """Masked diffusion loss (MDLM / SMDM / LLaDA and paper 1: absorbing state, linear schedule):
    loss = 1/(B*T) * sum_b 1/t_b * sum_{i masked} -log p(x[b, i] | x_t[b])."""
    x = batch[:, :-1]
    t, masked = draw_masks(x, noise)
    x_t = torch.where(masked, noise.mask_id, x)  # absorbing state: a masked token becomes [MASK]
    logits = model(x_t, positions=masked)  # predictions at the masked positions only, in x[masked]'s order
    nll = F.cross_entropy(logits, x[masked], reduction="none")
    # linear schedule alpha(t) = 1 - t: the ELBO's weight -alpha'(t) / (1 - alpha(t)) is 1/t (MDLM, eq. 10)
    return (nll / t[:, None].expand_as(x)[masked]).sum() / x.numel()  # over B*T, never over the masked count too


def masked_elbo(model, x, maskable, seeds, samples, batch_size):
    """Per-row ELBO bound on -log p of the maskable tokens of x (B, T) given the rest, in nats: K = `samples`
    stratified t_k = EPS + (1 - EPS) * (k + u) / K, each maskable token masked with probability t_k by a generator
    seeded by the row's seed, loss sum_{masked} -log p / t_k averaged over k; run `batch_size` rows at a time."""
    K, (B, T), mask_id = samples, x.shape, model.config.mask_id
    rows_t, rows_mask = [], []
    for seed, row_maskable in zip(seeds, maskable.cpu()):
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(1, generator=gen)
        rows_t.append(EPS + (1 - EPS) * (torch.arange(K) + u) / K)
        rows_mask.append((torch.rand(K, T, generator=gen) < rows_t[-1][:, None]) & row_maskable)
    t, masked = torch.cat(rows_t).to(x.device), torch.cat(rows_mask).to(x.device)
    x = x.repeat_interleave(K, dim=0)  # row r's K samples are rows r * K ... r * K + K - 1
    nats = torch.zeros(B * K, dtype=torch.float64)
    for i in range(0, B * K, batch_size):
        part = slice(i, i + batch_size)
        x_t, m = torch.where(masked[part], mask_id, x[part]), masked[part]
        nll = F.cross_entropy(model(x_t, positions=m), x[part][m], reduction="none")  # masked positions only
        row = m.nonzero()[:, 0]  # each masked token's row in this part
        nats[part] = torch.zeros(len(x_t), device=x.device).index_add_(0, row, nll / t[part][row]).double().cpu()
    return nats.view(B, K).mean(dim=1)


def log_fields(config):
    """What this objective adds to every line of log.jsonl: the K of its validation ELBO."""
    return {"elbo_samples": config.elbo_samples}


def evaluate_loss(model, windows, window_ids, config):
    """ELBO bound on the NLL (the training loss's formula, no gradient, K = elbo_samples) over every token of each
    window, with masks seeded by eval_seed and the window's id, so the same checkpoint always gives the same number.
    Returns (nats summed over windows, tokens)."""
    x = windows[:, :-1]
    seeds = [config.eval_seed * 1_000_003 + int(w) for w in window_ids]
    nats = masked_elbo(model, x, torch.ones_like(x, dtype=torch.bool), seeds, config.elbo_samples,
                       config.eval_batch_size)
    return nats.sum().item(), x.numel()


def continuation_nll(model, contexts, continuations, item_ids, samples, batch_size, seed):
    """Bound on -log p(continuation | context) per row, in nats: the conditional ELBO (K = `samples`), only the
    continuation's positions masked. The masks are seeded by `seed` and the item's id, so every choice of an item
    sees the same masks and a checkpoint always gives the same answer. With an empty context it is
    evaluate_loss's formula."""
    x = torch.cat([contexts, continuations], dim=1)
    maskable = torch.zeros_like(x, dtype=torch.bool)
    maskable[:, contexts.shape[1]:] = True
    seeds = [seed * 1_000_003 + int(i) for i in item_ids]
    return masked_elbo(model, x, maskable, seeds, samples, batch_size)


if __name__ == "__main__":  # the command line: lab/ checks the options and guards the run folder, then trainer.run
    import sys
    from lab import launch
    launch.train(sys.modules[__name__])

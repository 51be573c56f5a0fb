"""
Train the masked-diffusion model: bidirectional attention, masked-token loss weighted by 1/t.

    python train_diffusion.py                             # small model on the default corpus, CPU, minutes
    python train_diffusion.py --unique_tokens=50000 --epochs=100 --out_dir=out/diffusion_u50k

The loop, data, schedule and checkpoints live in trainer.py; this file holds only what makes the model diffusion.
`diff train_ar.py train_diffusion.py` shows everything that differs between the two.
"""
import torch
import torch.nn.functional as F

from trainer import main

KIND = "diffusion"
CAUSAL = False
EPS = 1e-3  # t ~ U(EPS, 1): the 1/t weight stays finite


def training_loss(model, windows, noise, mask_id):
    """Masked diffusion loss (MDLM / SMDM / LLaDA and paper 1: absorbing state, linear schedule):
    loss = 1/(B*T) * sum_b 1/t_b * sum_{i masked} -log p(x[b, i] | x_t[b]), t_b = EPS + (1 - EPS) * u_b."""
    x = windows[:, :-1]
    t = EPS + (1 - EPS) * noise.row  # (B,) stratified over the batch
    masked = noise.token < t[:, None]  # each token masked independently with probability t
    x_t = torch.where(masked, mask_id, x)
    logits = model(x_t)
    nll = F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="none").view_as(x)
    return (nll * masked / t[:, None]).sum() / x.numel()


def validation_loss(model, windows, window_ids, config, mask_id):
    """ELBO bound on the NLL (same formula, no gradient): K = config.elbo_samples stratified t per window,
    t_k = EPS + (1 - EPS) * (k + u) / K, masks from a generator seeded by the window's id, so the same
    checkpoint always gives the same number. Returns (K-averaged weighted nats summed over windows, tokens)."""
    K, T = config.elbo_samples, windows.shape[1] - 1
    rows_x, rows_t, rows_mask = [], [], []
    for x, window_id in zip(windows[:, :-1], window_ids.tolist()):
        gen = torch.Generator().manual_seed(config.eval_seed * 1_000_003 + window_id)
        u = torch.rand(1, generator=gen)
        rows_t.append(EPS + (1 - EPS) * (torch.arange(K) + u) / K)
        rows_mask.append(torch.rand(K, T, generator=gen) < rows_t[-1][:, None])
        rows_x.append(x.expand(K, T))
    x, t, masked = torch.cat(rows_x), torch.cat(rows_t).to(windows.device), torch.cat(rows_mask).to(windows.device)
    nats = 0.0
    for i in range(0, len(x), config.eval_batch_size):
        part = slice(i, i + config.eval_batch_size)
        logits = model(torch.where(masked[part], mask_id, x[part]))
        nll = F.cross_entropy(logits.flatten(0, 1), x[part].flatten(), reduction="none").view_as(x[part])
        nats += (nll * masked[part] / t[part, None]).sum().item()
    return nats / K, windows.shape[0] * T


if __name__ == "__main__":
    main(KIND, CAUSAL, training_loss, validation_loss)

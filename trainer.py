"""
The training loop shared by train_ar.py and train_diffusion.py: the schedule, the evaluations, the checkpoints and
the logs live here once, so the two objectives are compared on equal terms. A training script passes in only its
kind, its attention (causal or not) and its loss functions. Read `run` top to bottom: set-up in a few named steps,
then the loop.

Around it: config.py (the options), data.py (token files and epoch orders), model.py (the transformer) and
runtime.py (devices, number formats, DDP, checkpoint files and folder locks: a first reading may skip it).
"""
import contextlib
import dataclasses
import math
import os
import sys
import time

import numpy as np
import torch

import downstream
import folders
import runtime
from cli import UserError, fmt_time, parse_args, run_cli
from config import TrainConfig
from data import tokenizer_name, training_data, val_windows
from model import ModelConfig, Transformer, shape_problem


# ----------------------------------------------------------------------------- schedule and optimizer

def lr_at(it, config, total_iters):
    """Linear warmup, then cosine from lr to lr * min_lr_ratio over the rest of the run (paper 1's schedule)."""
    warmup = max(round(config.warmup_fraction * total_iters), 1) if config.warmup_fraction \
        else min(config.warmup_iters, max(total_iters // 10, 1))
    if it < warmup:
        return config.lr * (it + 1) / warmup
    progress = min((it - warmup) / max(total_iters - warmup, 1), 1.0)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - min_lr)


def make_optimizer(model, config, device_type):
    # weight decay on matrices (linear and embedding weights) only, not on norms' gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel (one per step, not a dozen per parameter) on GPUs and CPUs: a step's optimizer time /5 on a CPU
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             fused=device_type in ("cuda", "cpu"))


def step_generator(seed, it, micro):
    """The random numbers of one micro-step (diffusion's t and masks), from a generator keyed by (seed, iteration,
    micro-step): every process draws the same, and a resumed run draws what the uninterrupted run drew."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, it, micro]).generate_state(1)[0]))


# ----------------------------------------------------------------------------- set-up steps

def configure(kind, argv):
    """The run's config from the command line, and with --resume the checkpoint it continues; every check that
    needs no data, before anything is read or written."""
    config = TrainConfig()
    given = parse_args(argv, config, doc=sys.modules["__main__"].__doc__)
    config.out_dir = config.out_dir or os.path.join("out", kind)
    folders.finish_switch(config.out_dir, folders.run_is_whole)  # before anything reads the folder
    ckpt = None
    if config.resume:
        config, ckpt = runtime.checkpoint_to_resume(config, given, kind)
    if shape_problem(config.n_embd, config.n_head):
        raise UserError(shape_problem(config.n_embd, config.n_head))
    return config, ckpt, given


def build_model(config, meta, causal, device, ckpt):
    """The model, its optimizer and, with --resume, their saved states (the weights start from config.seed)."""
    torch.manual_seed(config.seed)  # the initial weights, and dropout's stream
    model = Transformer(ModelConfig(n_vocab=meta["n_vocab"], block_size=config.block_size, n_layer=config.n_layer,
                                    n_head=config.n_head, n_embd=config.n_embd, causal=causal,
                                    dropout=config.dropout, attn_dropout=config.attn_dropout,
                                    embd_dropout=config.embd_dropout)).to(device)
    optimizer = make_optimizer(model, config, device.type)
    if ckpt is not None:
        runtime.load_weights(model, ckpt, os.path.join(config.out_dir, "ckpt.pt"))
        optimizer.load_state_dict(ckpt["optimizer"])
    return model, optimizer


def wrap_model(model, config, rank, world_size, device):
    """The model the steps run: compiled if asked, DDP-wrapped with several processes; dropout masks drawn for the
    whole global batch and sliced by rank (model.py), so N processes equal one."""
    model.dropout_share = (rank, world_size)
    wrapped = torch.compile(model) if config.compile else model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


def choice_items(val_tokens, meta, config):
    """The multiple-choice items scored at every evaluation (downstream.py), from the val split's selection files
    (evaluate.py's held-out test set is the other files), or None with --mc_items=0."""
    if not config.mc_items:
        return None
    return downstream.build_items(val_tokens, config.mc_items, *downstream.item_lengths(meta, config.block_size),
                                  seed=config.eval_seed, files=downstream.item_set(val_tokens, meta, "selection"))


# ----------------------------------------------------------------------------- evaluation

def validation_loss(validation_fn, model, val, config, autocast, rank, world_size):
    """Mean validation loss in nats/token over the val windows, each process taking every world_size-th one
    (diffusion: its ELBO at K = elbo_samples)."""
    model.eval()
    ids = torch.arange(rank, len(val), world_size)
    device = model.embed.weight.device
    with torch.no_grad(), autocast:
        nats, count = validation_fn(model, val[ids].to(device), ids, config.elbo_samples, config.eval_batch_size,
                                    config.eval_seed)
    totals = runtime.all_reduce_sum(torch.tensor([float(nats), float(count)], dtype=torch.float64, device=device),
                                    world_size)
    model.train()
    return (totals[0] / totals[1]).item()


def choice_accuracy(continuation_nll, model, items, config, autocast):
    """(accuracy, standard error) on the multiple-choice items; diffusion scores them at K = mc_samples, to keep
    the cost near a tenth of training."""
    device = model.embed.weight.device
    model.eval()
    with torch.no_grad(), autocast:
        acc, se, _ = downstream.accuracy(items, lambda c, x, ids: continuation_nll(
            model, c.to(device), x.to(device), ids, config.mc_samples, config.eval_batch_size, config.eval_seed))
    model.train()
    return acc, se


def weights_at(model, state, record, val_loss):
    """A copy of the weights on the CPU, with where they were (a checkpoint saves them to best.pt or best_choice.pt)."""
    return {"model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "iter": state.iter, "epoch": record["epoch"], "best_val": val_loss,
            "mc_accuracy": record.get("mc_accuracy")}


def check_finite(first_nonfinite_iter, model, out_dir):
    """Stop (UserError) before a log or a save if a training loss so far, or a weight, is NaN or infinite: nothing
    non-finite reaches a file. A sync with the device, so only at logs and saves."""
    bad = int(first_nonfinite_iter)
    weights_finite = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())  # one sync
    if bad >= 0 or not weights_finite:
        where = f"loss is not finite at iteration {bad}" if bad >= 0 else "the weights are not finite"
        raise UserError(f"{where}: stopped; the last good checkpoint in {out_dir} is kept (try a lower --lr)")


def progress_line(it, total_iters, epoch, loss, lr, tokens_per_s, mfu, eta_s):
    mfu = "" if mfu is False else " | mfu unknown" if mfu is None else f" | mfu {mfu:.1f}%"
    return (f"iter {it}/{total_iters} | epoch {epoch:.2f} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} "
            f"tok/s{mfu} | eta {fmt_time(eta_s)}")


# ----------------------------------------------------------------------------- the loop's state and its decisions

@dataclasses.dataclass
class LoopState:
    """What the loop carries from one iteration to the next: a checkpoint saves it, so --resume continues exactly."""
    iter: int = 0
    windows_seen: int = 0  # training windows consumed by all processes: the position in the epoch orders
    best_val: float = float("inf")
    best_iter: int = -1
    best_choice: float = -1.0  # the best multiple-choice accuracy so far (its weights go to best_choice.pt)
    evaluated_iter: int = -1  # a resumed run does not evaluate its checkpoint's iteration again
    train_loss_sum: float = 0.0  # since the last evaluation; a tensor on the device while the loop runs
    train_loss_count: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process started (a resumed run)


def iteration_plan(config, n_windows, world_size):
    """(windows per micro-step over all processes, windows per optimizer step, iterations, iterations between
    evaluations)."""
    micro_rows = config.batch_size * world_size
    global_batch = micro_rows * config.grad_accum
    total_iters = config.max_iters or math.ceil(config.epochs * n_windows / global_batch)
    eval_interval = max(round(config.eval_epochs * n_windows / global_batch), 1) if config.eval_epochs \
        else config.eval_interval
    return micro_rows, global_batch, total_iters, eval_interval


def start_state(ckpt, scaler, rank, device):
    """A fresh LoopState, or a resumed run's with its generators and loss scale restored. Its train_loss_sum lives on
    the device between evaluations, so the CPU runs ahead of the GPU instead of waiting at every step."""
    state = LoopState(**ckpt["state"]) if ckpt is not None else LoopState()
    if ckpt is not None:
        runtime.restore_random_state(ckpt, scaler, rank, device)
    state.train_loss_sum = torch.tensor(state.train_loss_sum, dtype=torch.float64, device=device)
    return state


def eval_due(state, eval_interval, total_iters):
    """Every eval_interval iterations and at the end; a resumed run's first evaluation was logged before its
    checkpoint."""
    return (state.iter % eval_interval == 0 or state.iter == total_iters) and state.iter != state.evaluated_iter


def checkpoint_due(state, saved_iter, evaluated_now, total_iters, config):
    """At every evaluation (or every ckpt_interval iterations) and at the end, except where the checkpoint on disk
    already is (a resumed run's first iteration)."""
    scheduled = (state.iter % config.ckpt_interval == 0 or state.iter == total_iters) if config.ckpt_interval \
        else evaluated_now
    return scheduled and state.iter != saved_iter


def out_of_time(state, start_iter, t_start, total_iters, config, device, world_size):
    """--stop_after_s has run out: checked by rank 0 and broadcast, so all processes stop together (with several
    processes only at progress lines, to spare a broadcast per step)."""
    if state.iter >= total_iters or config.stop_after_s <= 0:
        return False
    if world_size > 1 and (state.iter - start_iter) % config.log_interval:
        return False
    return runtime.rank0_says(time.time() - t_start >= config.stop_after_s, device, world_size)


def eval_record(state, val_loss, grad_norm, kind, meta, config, total_iters, train_windows, n_params, seconds):
    """One line of log.jsonl: the evaluation at state.iter (before the state takes it in); grad_norm is the last
    step's gradient norm before clipping (None before the first step of this process)."""
    count = state.train_loss_count
    record = {"iter": state.iter, "epoch": round(state.windows_seen / train_windows.n, 4),
              "tokens": state.windows_seen * config.block_size,
              "train_loss": float(state.train_loss_sum) / count if count else None, "val_loss": val_loss,
              "grad_norm": None if grad_norm is None else float(grad_norm),
              "lr": lr_at(max(state.iter - 1, 0), config, total_iters), "best_val": min(state.best_val, val_loss),
              "kind": kind, "tokenizer": tokenizer_name(meta),
              "elbo_samples": config.elbo_samples if kind == "diffusion" else None,
              "unique_tokens": len(train_windows.tokens), "n_params": n_params, "done": state.iter == total_iters,
              "elapsed_s": round(seconds, 1)}
    if meta["tokenizer"] == "bytes" and meta.get("eot_id") is None:  # one token is one byte of text
        record["val_bits_per_byte"] = val_loss / math.log(2)
    return record


def eval_line(record, is_best):
    train, bpb = record["train_loss"], record.get("val_bits_per_byte")
    return (f"eval iter {record['iter']} | epoch {record['epoch']:.2f} | "
            f"train {'-' if train is None else f'{train:.4f}'} | val {record['val_loss']:.4f} nats/token"
            + (f" ({bpb:.4f} bits/byte)" if bpb is not None else "")
            + (f" | choice acc {record['mc_accuracy']:.3f}" if "mc_accuracy" in record else "")
            + (" | best" if is_best else ""))


def start_line(kind, n_params, device, dtype, world_size, train_windows, config, global_batch, total_iters):
    return (f"{kind}: {n_params / 1e6:.2f}M parameters on {device} ({str(dtype).replace('torch.', '')}), "
            f"{world_size} process(es) | U = {len(train_windows.tokens):,} tokens = {train_windows.n:,} windows of "
            f"{config.block_size + 1} | {global_batch} windows/iter | {total_iters:,} iters = "
            f"{total_iters * global_batch / train_windows.n:.2f} epochs | out: {config.out_dir}")


def end_line(state, stopped, total_iters, t_start, out_dir):
    took = fmt_time(time.time() - t_start)
    if stopped:
        return (f"stopped after {took} at iteration {state.iter} of {total_iters} (--stop_after_s): continue with "
                f"--resume")
    return (f"done: best val {state.best_val:.4f} nats/token at iter {state.best_iter} ({took}); checkpoints in "
            f"{out_dir}")


# ----------------------------------------------------------------------------- the run

def run(kind, causal, training_loss, validation_fn, argv=None, continuation_nll=None):
    """Train a model of `kind` ('ar' | 'diffusion') with the given losses; see config.py for the options. With the
    kind's continuation_nll, every evaluation also logs the multiple-choice accuracy (downstream.py)."""
    # set-up: options, data, processes, model; nothing is written before every check has passed
    config, ckpt, given = configure(kind, sys.argv[1:] if argv is None else argv)
    meta, train_windows, val_tokens = training_data(config, ckpt)
    val = val_windows(val_tokens, config.block_size, config.eval_windows)
    items = choice_items(val_tokens, meta, config) if continuation_nll else None
    rank, world_size, device = runtime.setup_distributed(runtime.pick_device(config.device))
    master = rank == 0
    resuming = ckpt is not None
    # a resumed run keeps its saved format unless --dtype is given (or this device cannot run it)
    dtype = runtime.number_format(device, None if resuming and "dtype" not in given else config.dtype,
                                  ckpt["dtype"] if resuming else None)
    autocast, scaler = runtime.mixed_precision(device, dtype)
    raw_model, optimizer = build_model(config, meta, causal, device, ckpt)
    model = wrap_model(raw_model, config, rank, world_size, device)
    mask_id, n_params, peak = raw_model.config.mask_id, raw_model.num_params(), runtime.peak_flops(device)
    micro_rows, global_batch, total_iters, eval_interval = iteration_plan(config, train_windows.n, world_size)
    my_rows = slice(rank * config.batch_size, (rank + 1) * config.batch_size)  # this process's rows of a micro-step
    header = {"kind": kind, "model_args": raw_model.model_args(), "config": dataclasses.asdict(config), "meta": meta}

    state = start_state(ckpt, scaler, rank, device)
    start_iter, saved_iter = state.iter, state.iter if resuming else -1
    first_nonfinite_iter = torch.tensor(-1, device=device)  # the first non-finite step, kept on the device (no sync)
    best = best_choice = None  # the best weights (by loss, by accuracy), in memory until the next checkpoint
    grad_norm = None  # the last step's, on the device until an evaluation logs it
    t_start = t_log = time.time()
    iters_since_log = 0
    with folders.RunFolder(config.out_dir, os.path.join(config.data_dir, config.dataset),
                           start_iter if resuming else None,
                           config.overwrite, writer=master) as folder:  # the first writes: every check has passed
        if master:
            print(start_line(kind, n_params, device, dtype, world_size, train_windows, config, global_batch,
                             total_iters), flush=True)
        while True:
            # evaluate: one line in log.jsonl, and the best weights kept in memory
            evaluated_now = eval_due(state, eval_interval, total_iters)
            if evaluated_now:
                check_finite(first_nonfinite_iter, raw_model, config.out_dir)
                val_loss = validation_loss(validation_fn, raw_model, val, config, autocast, rank, world_size)
                record = eval_record(state, val_loss, grad_norm, kind, meta, config, total_iters, train_windows,
                                     n_params, state.elapsed_before + time.time() - t_start)
                if master and items is not None:  # rank 0 scores them; the others wait at the next step
                    record["mc_accuracy"], record["mc_se"] = choice_accuracy(continuation_nll, raw_model, items,
                                                                             config, autocast)
                    if record["mc_accuracy"] > state.best_choice:  # a second rule to choose a checkpoint by
                        state.best_choice = record["mc_accuracy"]
                        best_choice = weights_at(raw_model, state, record, val_loss)
                is_best = val_loss < state.best_val
                state.train_loss_sum.zero_()
                state.train_loss_count, state.evaluated_iter = 0, state.iter
                if is_best:
                    state.best_val, state.best_iter = val_loss, state.iter
                folder.append_log(record)
                if master:
                    print(eval_line(record, is_best), flush=True)
                if master and is_best:
                    best = weights_at(raw_model, state, record, val_loss)
                t_log, iters_since_log = time.time(), 0  # tokens/s counts training time only

            # checkpoint: see checkpoint_due; and whenever --stop_after_s runs out
            stopping = out_of_time(state, start_iter, t_start, total_iters, config, device, world_size)
            if checkpoint_due(state, saved_iter, evaluated_now, total_iters, config) or stopping:
                check_finite(first_nonfinite_iter, raw_model, config.out_dir)
                rngs = runtime.every_rng_state(device, world_size)
                saved = dict(dataclasses.asdict(state), train_loss_sum=float(state.train_loss_sum),
                             elapsed_before=state.elapsed_before + time.time() - t_start)
                if master:  # then --overwrite's new run takes out_dir's place (at its first checkpoint)
                    runtime.save_checkpoint(folder, header, {"best.pt": best, "best_choice.pt": best_choice}, {
                        "model": raw_model.state_dict(), "iter": state.iter,
                        "epoch": state.windows_seen / train_windows.n, "best_val": state.best_val,
                        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "state": saved,
                        "rng": rngs, "dtype": str(dtype)[len("torch."):]})
                best = best_choice = None
                saved_iter = state.iter
            if state.iter >= total_iters or stopping:
                break

            # one optimizer step: grad_accum micro-steps of forward and backward, then clip and step
            lr = lr_at(state.iter, config, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=device)
            for micro in range(config.grad_accum):
                first_slot = state.windows_seen + micro * micro_rows
                batch = train_windows.get(range(first_slot + my_rows.start, first_slot + my_rows.stop))
                batch = batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch
                last_micro = micro == config.grad_accum - 1
                with (model.no_sync() if world_size > 1 and not last_micro else contextlib.nullcontext()), autocast:
                    loss = training_loss(model, batch, mask_id, step_generator(config.seed, state.iter, micro),
                                         (rank, world_size)) / config.grad_accum
                scaler.scale(loss).backward()  # gradients are averaged across processes on the last micro-step
                step_loss += loss.detach()
            step_loss = runtime.all_reduce_sum(step_loss, world_size) / world_size
            first_nonfinite_iter = torch.where((first_nonfinite_iter < 0) & ~torch.isfinite(step_loss), state.iter,
                                               first_nonfinite_iter)
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)  # before clipping
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.iter, state.windows_seen = state.iter + 1, state.windows_seen + global_batch
            state.train_loss_sum += step_loss
            state.train_loss_count += 1
            iters_since_log += 1

            # progress line: loss, tokens/s, MFU against the GPU's peak (none on a CPU), time left
            if state.iter % config.log_interval == 0 or state.iter == total_iters:
                check_finite(first_nonfinite_iter, raw_model, config.out_dir)
                seconds, tokens = time.time() - t_log, iters_since_log * global_batch * config.block_size
                if master:
                    mfu = False if device.type != "cuda" else None if not peak else \
                        100 * raw_model.flops_per_token() * tokens / seconds / (peak * world_size)
                    print(progress_line(state.iter, total_iters, state.windows_seen / train_windows.n,
                                        step_loss.item(), lr, tokens / seconds, mfu,
                                        (total_iters - state.iter) * seconds / iters_since_log), flush=True)
                t_log, iters_since_log = time.time(), 0

        if master:
            print(end_line(state, stopping, total_iters, t_start, config.out_dir))
        runtime.wait_for_all(world_size)
    runtime.leave_if_distributed(world_size)  # the folder's files are closed and its locks released
    return dict(dataclasses.asdict(state), train_loss_sum=float(state.train_loss_sum))


def main(kind, causal, training_loss, validation_fn, continuation_nll):
    """Entry point of a training script: a UserError becomes one line on stderr and exit status 1."""
    run_cli(lambda: run(kind, causal, training_loss, validation_fn, continuation_nll=continuation_nll),
            interrupted="interrupted: the last checkpoint is kept; continue with --resume")

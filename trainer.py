"""
The training loop shared by train_ar.py and train_diffusion.py: the schedule, the evaluations, the checkpoints and
the logs live here once, so the two objectives are compared on equal terms. A training script passes in only its
objective: a module with KIND, CAUSAL and its loss functions. Read `run` top to bottom: set-up, then the loop.

From a notebook: `trainer.run(TrainConfig(...), train_diffusion)` trains with plain saving (torch.save and a log
file); the command line puts lab/ in front of it (locks, one-line errors, --stop_after_s, multiple-choice scores).
"""
import contextlib
import dataclasses
import json
import math
import os
import time

import numpy as np
import torch

import runtime
from data import tokenizer_name, training_data, val_windows
from model import ModelConfig, Transformer


# ----------------------------------------------------------------------------- schedule, optimizer, noise

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


@dataclasses.dataclass
class Noise:
    """What one micro-step's corruption draws from (diffusion's t and masks; AR draws nothing). The generator is
    keyed by (seed, iteration, micro-step), so every process draws the same and a resumed run draws what the
    uninterrupted run drew; each process then keeps its own rows (rank of world_size)."""
    generator: torch.Generator
    mask_id: int
    rank: int = 0
    world_size: int = 1


def step_generator(seed, it, micro):
    """The generator of one micro-step's noise, keyed by (seed, iteration, micro-step) (see Noise)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, it, micro]).generate_state(1)[0]))


def step_noise(run, it, micro):
    return Noise(step_generator(run.config.seed, it, micro), run.model.config.mask_id, run.rank, run.world_size)


# ----------------------------------------------------------------------------- the run and its state

@dataclasses.dataclass
class Run:
    """Everything the loop reads, set up once: options, objective, data, processes, model and optimizer."""
    config: object
    objective: object
    meta: dict
    windows: object  # data.TrainingWindows
    val: torch.Tensor
    device: torch.device
    rank: int
    world_size: int
    dtype: torch.dtype
    autocast: object
    scaler: object
    model: Transformer  # the weights; step_model runs the training steps (compiled, DDP-wrapped)
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    total_iters: int
    eval_interval: int
    global_batch: int  # windows per optimizer step, over all processes
    trained_ids: torch.Tensor = None  # every token id of the U training tokens (sample.py draws only these)
    t_start: float = 0.0
    t_log: float = 0.0  # the progress line's clock: tokens/s counts training time only
    iters_since_log: int = 0

    @property
    def header(self):
        """What every checkpoint file carries: the objective, the model's shape, the options, the data's meta."""
        name = os.path.splitext(os.path.basename(self.objective.__file__))[0]
        return {"kind": self.objective.KIND, "objective": name, "model_args": self.model.model_args(),
                "config": dataclasses.asdict(self.config), "meta": self.meta, "trained_ids": self.trained_ids}


@dataclasses.dataclass
class LoopState:
    """What the loop carries from one iteration to the next: a checkpoint saves it, so --resume continues exactly."""
    iter: int = 0
    windows_seen: int = 0  # training windows consumed by all processes: the position in the epoch orders
    best_val: float = float("inf")
    best_iter: int = -1
    best_choice: float = -1.0  # the best multiple-choice accuracy so far (lab/: its weights go to best_choice.pt)
    evaluated_iter: int = -1  # a resumed run does not evaluate its checkpoint's iteration again
    train_loss_sum: float = 0.0  # since the last evaluation; a tensor on the device while the loop runs
    train_loss_count: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process started (a resumed run)


def set_up(config, objective, ckpt):
    """The Run: data, processes, dtype, the model (its weights from config.seed, or the checkpoint's) and optimizer."""
    meta, windows, val_tokens = training_data(config)
    rank, world_size, device = runtime.setup_distributed(runtime.pick_device(config.device))
    dtype = runtime.pick_dtype(device, config.dtype, ckpt["dtype"] if ckpt else None)
    torch.manual_seed(config.seed)  # the initial weights, and dropout's stream
    model = Transformer(ModelConfig(n_vocab=meta["n_vocab"], block_size=config.block_size, n_layer=config.n_layer,
                                    n_head=config.n_head, n_embd=config.n_embd, causal=objective.CAUSAL,
                                    dropout=config.dropout, attn_dropout=config.attn_dropout,
                                    embd_dropout=config.embd_dropout)).to(device)
    optimizer = make_optimizer(model, config, device.type)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    model.dropout_share = (rank, world_size)  # dropout masks drawn for the global batch, sliced by rank (model.py)
    step_model = torch.compile(model) if config.compile else model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    global_batch = config.batch_size * world_size * config.grad_accum
    total_iters = config.max_iters or math.ceil(config.epochs * windows.n / global_batch)
    eval_interval = max(round(config.eval_epochs * windows.n / global_batch), 1) if config.eval_epochs \
        else config.eval_interval
    return Run(config, objective, meta, windows, val_windows(val_tokens, config.block_size, config.eval_windows),
               device, rank, world_size, dtype, *runtime.mixed_precision(device, dtype), model, step_model,
               optimizer, total_iters, eval_interval, global_batch,
               torch.from_numpy(np.unique(windows.tokens).astype(np.int64)), t_start=time.time(), t_log=time.time())


def start_state(run, ckpt):
    """A fresh LoopState, or a resumed run's with its generators and loss scale restored. Its train_loss_sum lives on
    the device between evaluations, so the CPU runs ahead of the GPU instead of waiting at every step."""
    state = LoopState(**ckpt["state"]) if ckpt is not None else LoopState()
    if ckpt is not None:
        runtime.restore_random_state(ckpt, run.scaler, run.rank, run.device)
    state.train_loss_sum = torch.tensor(state.train_loss_sum, dtype=torch.float64, device=run.device)
    return state


class Hooks:
    """Extra work the loop leaves to whoever runs it (lab/launch.py: non-finite guards, --stop_after_s, the
    multiple-choice scores and best_choice.pt); these defaults do nothing."""

    def guard(self, run, state):  # before anything is logged or saved
        pass

    def after_step(self, run, state, loss):
        pass

    def after_eval(self, run, state, record):  # may add fields to the log line
        pass

    def stop_now(self, run, state):  # checkpoint and stop now
        return False

    def extra_files(self, run, state):  # {file name: weights, or None} saved beside ckpt.pt
        return {}


class RunFiles:
    """Plain saving into out_dir: torch.save and a log.jsonl appended to; a resumed run's log keeps its lines up to
    the checkpoint (lab/folders.py's RunFolder adds locks and whole-file writes)."""

    def __init__(self, out_dir, resume_iter=None):
        self.path = out_dir
        os.makedirs(out_dir, exist_ok=True)
        log = os.path.join(out_dir, "log.jsonl")
        lines = open(log).readlines() if resume_iter is not None and os.path.exists(log) else []
        with open(log, "w") as f:
            f.writelines(line for line in lines if json.loads(line)["iter"] <= resume_iter)

    def append_log(self, record):
        with open(os.path.join(self.path, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self, name, obj):
        torch.save(obj, os.path.join(self.path, name))

    def checkpointed(self):
        pass


# ----------------------------------------------------------------------------- evaluation and checkpoints

def evaluate_loss(run):
    """Mean validation loss in nats/token over the val windows, each process taking every world_size-th one
    (diffusion: its ELBO at K = elbo_samples)."""
    run.model.eval()
    ids = torch.arange(run.rank, len(run.val), run.world_size)
    with torch.no_grad(), run.autocast:
        nats, count = run.objective.evaluate_loss(run.model, run.val[ids].to(run.device), ids, run.config)
    totals = torch.tensor([float(nats), float(count)], dtype=torch.float64, device=run.device)
    totals = runtime.all_reduce_sum(totals, run.world_size)
    run.model.train()
    return (totals[0] / totals[1]).item()


def eval_record(run, state, val_loss, grad_norm):
    """One line of log.jsonl: the evaluation at state.iter (before the state takes it in); grad_norm is the last
    step's gradient norm before clipping (None before the first step of this process)."""
    config, count = run.config, state.train_loss_count
    record = {"iter": state.iter, "epoch": round(state.windows_seen / run.windows.n, 4),
              "tokens": state.windows_seen * config.block_size,
              "train_loss": float(state.train_loss_sum) / count if count else None, "val_loss": val_loss,
              "grad_norm": None if grad_norm is None else float(grad_norm),
              "lr": lr_at(max(state.iter - 1, 0), config, run.total_iters), "best_val": min(state.best_val, val_loss),
              "kind": run.objective.KIND, "tokenizer": tokenizer_name(run.meta), **run.objective.log_fields(config),
              "unique_tokens": len(run.windows.tokens), "unique_from": config.unique_from,
              "n_params": run.model.num_params(),
              "done": state.iter == run.total_iters,
              "elapsed_s": round(state.elapsed_before + time.time() - run.t_start, 1)}
    if run.meta["tokenizer"] == "bytes" and run.meta.get("eot_id") is None:  # one token is one byte of text
        record["val_bits_per_byte"] = val_loss / math.log(2)
    return record


def weights_copy(run, state, record):
    """A copy of the weights on the CPU, with where they were (a checkpoint saves them to best.pt)."""
    return {"model": {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()},
            "iter": state.iter, "epoch": record["epoch"], "best_val": record["val_loss"],
            "mc_accuracy": record.get("mc_accuracy")}


def save_checkpoint(run, state, files, bests):
    """The best weights ({file name: weights, or None where they have not changed since the last save}), then
    ckpt.pt: everything --resume needs to continue exactly. Every process gathers its RNG state; rank 0 writes."""
    rngs = runtime.every_rng_state(run.device, run.world_size)
    saved = dict(dataclasses.asdict(state), train_loss_sum=float(state.train_loss_sum),
                 elapsed_before=state.elapsed_before + time.time() - run.t_start)
    if run.rank != 0:
        return
    for name, weights in bests.items():
        if weights is not None:
            files.save(name, dict(run.header, **weights))
    files.save("ckpt.pt", dict(run.header, model=run.model.state_dict(), iter=state.iter,
                               epoch=state.windows_seen / run.windows.n, best_val=state.best_val,
                               optimizer=run.optimizer.state_dict(), scaler=run.scaler.state_dict(), state=saved,
                               rng=rngs, dtype=str(run.dtype)[len("torch."):]))
    files.checkpointed()  # lab/: an --overwrite's new run takes out_dir's place here


# ----------------------------------------------------------------------------- one optimizer step

def train_step(run, state):
    """grad_accum micro-steps of forward and backward (gradients averaged across processes on the last one), then
    clip and step. Returns (the step's mean loss, the gradient norm before clipping), on the device."""
    config, micro_rows = run.config, run.config.batch_size * run.world_size  # rows of a micro-step, all processes
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(state.iter, config, run.total_iters)
    step_loss = torch.zeros((), device=run.device)
    for micro in range(config.grad_accum):
        first = state.windows_seen + micro * micro_rows + run.rank * config.batch_size  # this process's rows
        batch = run.windows.get(range(first, first + config.batch_size))
        batch = batch.pin_memory().to(run.device, non_blocking=True) if run.device.type == "cuda" else batch
        last_micro = micro == config.grad_accum - 1
        sync = run.step_model.no_sync() if run.world_size > 1 and not last_micro else contextlib.nullcontext()
        with sync, run.autocast:
            loss = run.objective.training_loss(run.step_model, batch, step_noise(run, state.iter, micro))
        run.scaler.scale(loss / config.grad_accum).backward()
        step_loss += loss.detach() / config.grad_accum
    step_loss = runtime.all_reduce_sum(step_loss, run.world_size) / run.world_size
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.step_model.parameters(), config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


# ----------------------------------------------------------------------------- lines on the terminal

def fmt_time(seconds):
    """A duration as 1h05m or 3m07s."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def start_line(run):
    c, n = run.config, run.windows.n
    return (f"{run.objective.KIND}: {run.model.num_params() / 1e6:.2f}M parameters on {run.device} "
            f"({str(run.dtype).replace('torch.', '')}), {run.world_size} process(es) | U = {len(run.windows.tokens):,}"
            f" tokens = {n:,} windows of {c.block_size + 1} | {run.global_batch} windows/iter | "
            f"{run.total_iters:,} iters = {run.total_iters * run.global_batch / n:.2f} epochs | out: {c.out_dir}")


def eval_line(record, is_best):
    train, bpb = record["train_loss"], record.get("val_bits_per_byte")
    return (f"eval iter {record['iter']} | epoch {record['epoch']:.2f} | "
            f"train {'-' if train is None else f'{train:.4f}'} | val {record['val_loss']:.4f} nats/token"
            + (f" ({bpb:.4f} bits/byte)" if bpb is not None else "")
            + (f" | choice acc {record['mc_accuracy']:.3f}" if "mc_accuracy" in record else "")
            + (" | best" if is_best else ""))


def progress_line(run, state, loss, lr):
    """Loss, tokens/s, MFU against the GPU's peak (none on a CPU) and time left, since the last line."""
    seconds = time.time() - run.t_log
    tokens = run.iters_since_log * run.global_batch * run.config.block_size
    peak = runtime.peak_flops(run.device)
    mfu = "" if run.device.type != "cuda" else " | mfu unknown" if not peak else \
        f" | mfu {100 * run.model.flops_per_token() * tokens / seconds / (peak * run.world_size):.1f}%"
    eta = (run.total_iters - state.iter) * seconds / run.iters_since_log
    return (f"iter {state.iter}/{run.total_iters} | epoch {state.windows_seen / run.windows.n:.2f} | loss {loss:.4f} "
            f"| lr {lr:.2e} | {tokens / seconds:,.0f} tok/s{mfu} | eta {fmt_time(eta)}")


# ----------------------------------------------------------------------------- the run

def run(config, objective, files=None, hooks=None):
    """Train `objective` (a module like train_ar.py) with `config`; returns the final LoopState as a dict. files:
    where rank 0 writes (default: plain RunFiles in config.out_dir); hooks: see Hooks."""
    # set-up: with --resume, everything from the run's ckpt.pt
    ckpt = runtime.load_checkpoint(os.path.join(config.out_dir, "ckpt.pt")) if config.resume else None
    run = set_up(config, objective, ckpt)
    state, hooks, master = start_state(run, ckpt), hooks or Hooks(), run.rank == 0
    files = files or (RunFiles(config.out_dir, state.iter if ckpt else None) if master else None)
    saved_iter = state.iter if ckpt else -1  # where the checkpoint on disk is
    best, grad_norm, stopping = None, None, False  # best: the best weights, in memory until the next checkpoint
    if master:
        print(start_line(run), flush=True)
    while True:
        # evaluate: one line in log.jsonl (every eval_interval iterations and at the end)
        evaluated_now = (state.iter % run.eval_interval == 0 or state.iter == run.total_iters) \
            and state.iter != state.evaluated_iter
        if evaluated_now:
            hooks.guard(run, state)
            record = eval_record(run, state, evaluate_loss(run), grad_norm)
            hooks.after_eval(run, state, record)
            is_best = record["val_loss"] < state.best_val
            state.train_loss_sum.zero_()
            state.train_loss_count, state.evaluated_iter = 0, state.iter
            if is_best:
                state.best_val, state.best_iter = record["val_loss"], state.iter
                best = weights_copy(run, state, record) if master else None
            if master:
                files.append_log(record)
                print(eval_line(record, is_best), flush=True)
            run.t_log, run.iters_since_log = time.time(), 0

        # checkpoint: at every evaluation (or every ckpt_interval iterations), at the end, and at a stop
        stopping = state.iter < run.total_iters and hooks.stop_now(run, state)
        due = (state.iter % config.ckpt_interval == 0 or state.iter == run.total_iters) if config.ckpt_interval \
            else evaluated_now
        if (due and state.iter != saved_iter) or stopping:
            hooks.guard(run, state)
            save_checkpoint(run, state, files, dict(hooks.extra_files(run, state), **{"best.pt": best}))
            best, saved_iter = None, state.iter
        if state.iter >= run.total_iters or stopping:
            break

        # one optimizer step
        step_loss, grad_norm = train_step(run, state)
        hooks.after_step(run, state, step_loss)
        state.iter, state.windows_seen = state.iter + 1, state.windows_seen + run.global_batch
        state.train_loss_sum += step_loss
        state.train_loss_count += 1
        run.iters_since_log += 1
        if state.iter % config.log_interval == 0 or state.iter == run.total_iters:
            hooks.guard(run, state)
            if master:
                print(progress_line(run, state, step_loss.item(), lr_at(state.iter - 1, config, run.total_iters)),
                      flush=True)
            run.t_log, run.iters_since_log = time.time(), 0

    if master:
        took = fmt_time(time.time() - run.t_start)
        print(f"stopped after {took} at iteration {state.iter} of {run.total_iters} (--stop_after_s): continue with "
              "--resume"
              if stopping else f"done: best val {state.best_val:.4f} nats/token at iter {state.best_iter} ({took}); "
              f"checkpoints in {config.out_dir}")
    runtime.wait_for_all(run.world_size)
    return dict(dataclasses.asdict(state), train_loss_sum=float(state.train_loss_sum))


"""
The training loop shared by train_ar.py and train_diffusion.py: config and CLI, data, schedule, evaluation
cadence, checkpoints, logging, resume and DDP live here once, so the two objectives are compared on equal terms.
A training script passes in only its kind, its attention (causal or not) and its two loss functions.
"""
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

import downstream
from checkpoint import atomic_save, load_checkpoint, load_weights, pick_device, pick_dtype, release_lock, take_lock
from model import ModelConfig, Transformer, shape_problem
from cli import UserError, option, parse_args, run_cli
from tokenizer import portable_meta, same_tokenizer


@dataclass
class TrainConfig:
    # data (prepare_data.py writes data_dir/dataset)
    dataset: str = "default"
    data_dir: str = "data"
    unique_tokens: int = option(0, low=0)  # U: train only on the first U train tokens, repeated (0: the whole split)
    epochs: float = option(16.0, above=0)  # training tokens = epochs x U; the schedule spans them all
    max_iters: int = option(0, low=0)  # if > 0, train this many iterations instead of `epochs`
    epoch_order: str = option("fixed", choices=("fixed", "documents"))  # fixed: the same windows every epoch,
    # shuffled; documents: the papers' loader, a fresh seeded document order every epoch cut into windows (window
    # boundaries move; needs data with documents)
    random_offsets: bool = False  # nanoGPT-style random windows (augments AR); default: exact epochs
    # model
    n_layer: int = option(4, low=1)
    n_head: int = option(4, low=1)
    n_embd: int = option(128, low=2)
    block_size: int = option(128, low=1)
    dropout: float = option(0.0, low=0, below=1)
    # optimisation: AdamW, linear warmup then cosine to lr * min_lr_ratio at the end of the run
    batch_size: int = option(16, low=1)  # sequences per micro-batch, per process
    grad_accum: int = option(1, low=1)
    lr: float = option(2e-3, above=0)
    min_lr_ratio: float = option(0.1, low=0, high=1)
    warmup_iters: int = option(100, low=0)  # at most 10% of the run
    warmup_fraction: float = option(0.0, low=0, below=1)  # if > 0: warm up over this share of the run instead
    weight_decay: float = option(0.1, low=0)
    beta1: float = option(0.9, low=0, below=1)
    beta2: float = option(0.95, low=0, below=1)
    grad_clip: float = option(1.0, above=0)
    # evaluation
    eval_interval: int = option(250, low=1)  # iterations between evaluations (and one at the start and the end)
    eval_epochs: float = option(0.0, low=0)  # if > 0: evaluate every this many epochs instead of eval_interval
    eval_windows: int = option(64, low=0)  # validation windows evaluated (0: all); the same windows every time
    eval_batch_size: int = option(64, low=1)
    elbo_samples: int = option(32, low=1)  # K stratified t values per window for the diffusion ELBO
    eval_seed: int = option(1234, low=0)
    mc_items: int = option(200, low=0)  # multiple-choice continuation items scored at every evaluation (0: off)
    mc_samples: int = option(4, low=1)  # K for diffusion's conditional ELBO there (evaluate.py uses elbo_samples)
    mc_context: int = option(0, low=0)  # context tokens of an item (0: 64 for bytes, 48 for BPE, less if the
    # context length needs it)
    mc_continuation: int = option(0, low=0)  # continuation tokens (0: 24 for bytes, 16 for BPE)
    # output
    out_dir: str = ""  # default: out/<kind>
    # iterations between checkpoints (0: at every evaluation); there is always one at the end and at a stop. best.pt
    # is written beside each checkpoint when the run has improved since the last (the best weights wait in memory)
    ckpt_interval: int = option(0, low=0)
    log_interval: int = option(25, low=1)
    resume: bool = False
    stop_after_s: float = option(0.0, low=0)  # if > 0: checkpoint and stop after this many seconds (then --resume)
    overwrite: bool = False  # replace the run in out_dir (its files are replaced only once the new run starts)
    # system
    seed: int = option(1337, low=0)
    device: str = "auto"  # auto: cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16", "float16"))  # auto: bf16 on GPUs with
    # native bf16, float16 on older ones, float32 on cpu
    compile: bool = False


# fields a resumed run may change when the command line gives them; everything else must match the checkpoint's
# config, and whatever the command line does not give keeps its saved value
RESUME_MAY_CHANGE = {"resume", "overwrite", "out_dir", "device", "dtype", "compile", "log_interval", "stop_after_s"}


# ----------------------------------------------------------------------------- data

def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise UserError(f"no prepared data in {data_dir}/ (meta.json missing): run `python prepare_data.py` first")
    try:
        with open(path) as f:
            meta = json.load(f)
    except ValueError:
        raise UserError(f"{path} is not valid JSON: re-run prepare_data.py") from None
    expected = {"tokenizer": str, "n_vocab": int, "mask_id": int, "train_tokens": int, "val_tokens": int}
    wrong = [key for key, kind in expected.items() if not isinstance(meta, dict) or not isinstance(meta.get(key), kind)]
    if wrong:
        raise UserError(f"{path} lacks {', '.join(wrong)} (or holds the wrong type): it was not written by this "
                        f"project's prepare_data.py; re-run it")
    return meta


def saved_config(ckpt, path):
    """The TrainConfig a checkpoint was trained with; one that names options this version lacks is a UserError."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(ckpt["config"]) - known)
    if unknown:
        raise UserError(f"{path} was written by another version of this project (options {', '.join(unknown)} are "
                        f"unknown here): use that version, or start the run again")
    return TrainConfig(**ckpt["config"])


def load_tokens(data_dir, split, meta):
    """A split as a read-only uint16 memmap, checked against meta.json."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: re-run `python prepare_data.py`")
    expected = meta.get(f"{split}_tokens")
    if meta.get("dtype", "uint16") != "uint16" or os.path.getsize(path) != 2 * expected:
        raise UserError(f"{path} holds {os.path.getsize(path)} bytes but meta.json says {expected} uint16 tokens: "
                        f"the files are from different runs or truncated; re-run prepare_data.py")
    return np.memmap(path, dtype=np.uint16, mode="r")


class Windows:
    """Windows of block_size + 1 tokens over the first U tokens (window j of an epoch starts at j * block_size, so
    consecutive windows share one token: AR predicts every token but the first exactly once per epoch).

    Window slot g (a count over the whole run) is epoch g // n and position g % n of that epoch's seeded
    shuffle, so an epoch visits every window once and any slot can be recomputed on resume. With
    `document_ends` (the epoch order of the papers' loader) each epoch first lays the documents out in a fresh
    seeded order, so the windows' boundaries move between epochs while every token is still seen once.
    """

    def __init__(self, tokens, block_size, seed, random_offsets=False, document_ends=None):
        self.tokens, self.block_size, self.seed = tokens, block_size, seed
        self.random_offsets = random_offsets
        self.documents = None if document_ends is None else list(zip([0, *document_ends[:-1]], document_ends))
        self.n = (len(tokens) - 1) // block_size
        self._epoch, self._starts, self._epoch_tokens = None, None, tokens

    def epoch_layout(self, epoch):
        """(token array, window starts in visiting order) of an epoch, computed once per epoch."""
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.documents is not None:
                order = rng.permutation(len(self.documents))
                self._epoch_tokens = np.concatenate([self.tokens[self.documents[i][0]:self.documents[i][1]]
                                                     for i in order])
            if self.random_offsets:
                self._starts = rng.integers(0, len(self.tokens) - self.block_size, size=self.n)
            else:
                self._starts = rng.permutation(self.n) * self.block_size
            self._epoch = epoch
        return self._epoch_tokens, self._starts

    def get(self, slots):
        """Token windows for the given global slots, as an int64 tensor (len(slots), block_size + 1)."""
        rows = []
        for g in slots:
            tokens, starts = self.epoch_layout(int(g) // self.n)
            start = int(starts[int(g) % self.n])
            rows.append(tokens[start:start + self.block_size + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def check_run_data(ckpt, meta, data_dir, own_data=True):
    """A checkpoint continues or is scored only on data of its own tokenizer; and, where the folder is the run's own
    (not one given to score it on), only on the very data it was trained on: a folder prepared again since (other
    text, other files) changes the unique tokens under the run."""
    if not same_tokenizer(ckpt["meta"], meta):
        raise UserError(f"the checkpoint's tokenizer ({ckpt['meta']['tokenizer']}, {ckpt['meta']['n_vocab']} "
                        f"tokens) differs from {data_dir}'s ({meta['tokenizer']}, {meta['n_vocab']}): give the "
                        f"run's own data")
    saved, now = data_fingerprint(ckpt["meta"]), data_fingerprint(meta)
    if own_data and saved and now and saved != now:
        raise UserError(f"{data_dir} was prepared again since the run started: the run's data is {saved}, the "
                        f"folder's is {now}; prepare the run's data again, or start the run afresh")


def data_fingerprint(meta):
    """A data folder's identity in a few characters: its text's sha256 and its token counts (None for data
    prepared before meta.json recorded them)."""
    if "sha256" not in meta:
        return None
    return f"sha256 {meta['sha256'][:12]}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens"


def run_data(ckpt, data_dir=None, dataset=None):
    """(the run's training config, its data folder, that folder's meta) for a checkpoint, checked against it;
    data_dir and dataset replace the run's own."""
    config = saved_config(ckpt, "the checkpoint")
    folder = os.path.join(data_dir or config.data_dir, dataset or config.dataset)
    meta = load_meta(folder)
    check_run_data(ckpt, meta, folder, own_data=not (data_dir or dataset))
    return config, folder, meta


def check_token_ids(tokens, meta, path):
    """Every id must be one of the tokenizer's: [MASK] (= n_vocab) and the padding above it are never data."""
    largest = int(np.max(tokens)) if len(tokens) else 0
    if largest >= meta["n_vocab"]:
        what = "the [MASK] id" if largest == meta["mask_id"] else "an id past the vocabulary"
        raise UserError(f"{path} holds token id {largest}, {what} ({meta['tokenizer']} has {meta['n_vocab']} "
                        f"tokens): the file does not match meta.json; re-run prepare_data.py")


def document_ends(tokens, eot_id):
    """End positions (exclusive) of the documents in tokens: after each end-of-text id, and at the end."""
    ends = (np.flatnonzero(np.asarray(tokens) == eot_id) + 1).tolist()
    return ends if ends and ends[-1] == len(tokens) else ends + [len(tokens)]


def val_windows(tokens, block_size, max_windows):
    """`max_windows` fixed windows spread evenly over the val split (all if 0): the same ones at every eval."""
    n = (len(tokens) - 1) // block_size
    chosen = np.linspace(0, n - 1, min(n, max_windows)).round().astype(int) if max_windows else np.arange(n)
    rows = [tokens[j * block_size:j * block_size + block_size + 1] for j in chosen]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


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
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2),
                             fused=device_type == "cuda")


# ----------------------------------------------------------------------------- devices and processes

# dense bf16 tensor-core peak FLOP/s with float32 accumulation (fp16 on a T4), from the vendors' data sheets, by the
# exact name torch reports, for MFU; a GPU not listed (an H100 NVL, an A10G...) gets no MFU rather than a wrong one
PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12,
              "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-PCIE-40GB": 312e12,
              "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA L4": 121e12, "NVIDIA L40S": 362e12, "NVIDIA A10": 125e12,
              "Tesla T4": 65e12, "NVIDIA GeForce RTX 4090": 82.6e12, "NVIDIA GeForce RTX 3090": 35.6e12}


def peak_flops(device):
    return PEAK_FLOPS.get(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def setup_distributed(device):
    """(rank, world_size, local_rank); a torchrun launch starts DDP: NCCL when the run's device is a GPU, gloo
    when it is the CPU (also on a host with GPUs)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    import torch.distributed as dist
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def all_reduce_sum(values, world_size):
    if world_size == 1:
        return values
    import torch.distributed as dist
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def out_of_time(job, iters_done):
    """Whether rank 0 has run for --stop_after_s seconds. In DDP every process gets rank 0's answer, so all stop
    together; that costs a sync, so they ask only every log_interval iterations."""
    late = time.time() - job.t_start >= job.config.stop_after_s
    if job.world_size == 1:
        return late
    if iters_done % job.config.log_interval:
        return False
    import torch.distributed as dist
    late = torch.tensor([float(late)], device=job.device)
    dist.broadcast(late, src=0)
    return bool(late.item())


def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- checkpoints

def rng_state(device):
    # torch's generators only: dropout draws from them; the data order and the diffusion noise come from
    # generators seeded per epoch and per step, so they need no saved state. On a GPU, only the run's own
    # device's generator: a host with fewer GPUs can resume it
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device):
    """Restore rng_state's generators; the GPU's only when the run was saved on a GPU and continues on one."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # checkpoints before this version: every visible GPU's state
        cuda = cuda[min(device.index or 0, len(cuda) - 1)] if cuda else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(job):
    """ckpt.pt: everything --resume needs to continue exactly (weights, optimizer, scaler, loop state, every
    process's RNG state, the number format). Before it, best.pt when the run has improved since the last save (its
    weights waited in memory). Nothing non-finite is ever saved: the NaN check runs first. Rank 0 writes."""
    check_finite(job)
    fold_train_loss(job)
    rngs = [rng_state(job.device)]
    if job.world_size > 1:
        import torch.distributed as dist
        rngs = [None] * job.world_size
        dist.all_gather_object(rngs, rng_state(job.device))
    if not job.master:
        return
    common = {"kind": job.kind, "model_args": job.raw_model.model_args(), "config": dataclasses.asdict(job.config),
              "meta": job.meta}
    if job.best is not None:
        atomic_save(dict(common, **job.best), os.path.join(job.config.out_dir, "best.pt"))
        job.best = None
    state = dict(job.state, elapsed_before=job.state["elapsed_before"] + time.time() - job.t_start)
    atomic_save(dict(common, model=job.raw_model.state_dict(), iter=state["iter"],
                     epoch=state["windows_seen"] / job.windows.n, best_val=state["best_val"],
                     optimizer=job.optimizer.state_dict(), scaler=job.scaler.state_dict(), state=state, rng=rngs,
                     dtype=str(job.dtype).replace("torch.", "")),
                os.path.join(job.config.out_dir, "ckpt.pt"))


def tokenizer_name(meta):
    """The tokenizer in a few characters, for logs: its kind, size and (a BPE's) ranks hash."""
    ranks = meta.get("ranks_sha256")
    return f"{meta['tokenizer']}-{meta['n_vocab']}" + (f"-{ranks[:10]}" if ranks else "")


def fold_train_loss(job):
    """Add the training losses summed on the device since the last fold to the run's state (a sync: logs and saves
    only)."""
    job.state["train_loss_sum"] += float(job.pending_loss)
    job.pending_loss.zero_()


def check_finite(job):
    """Stop (UserError) if any training loss so far was NaN or infinite; a sync, so only at logs and saves."""
    bad = int(job.first_nonfinite_iter)
    if bad >= 0:
        raise UserError(f"loss is not finite at iteration {bad}: stopped; the last good checkpoint in "
                        f"{job.config.out_dir} is kept (try a lower --lr)")


# ----------------------------------------------------------------------------- the diffusion noise

class TrainingNoise:
    """Uniform random numbers for one micro-batch: `row` (B,) stratified, (u + b / B) mod 1 as in MDLM, and
    `token` (B, T), one per token. They are drawn for the whole global micro-batch from a generator seeded by
    (seed, iteration, micro-step) and then sliced, so N processes see what one process with N times the batch
    sees, and a resumed run sees what the uninterrupted run saw. Drawn on first use: AR never asks."""

    def __init__(self, seed, it, micro, total_rows, rows, seq_len, device):
        self.key, self.total_rows, self.rows, self.seq_len, self.device = (seed, it, micro), total_rows, rows, \
            seq_len, device
        self._drawn = None

    def _draw(self):
        if self._drawn is None:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence(list(self.key)).generate_state(1)[0]))
            u = torch.rand(1, generator=gen)
            row = ((u + torch.arange(self.total_rows) / self.total_rows) % 1.0)[self.rows].to(self.device)
            token = torch.rand(self.total_rows, self.seq_len, generator=gen)[self.rows].to(self.device)
            self._drawn = row, token
        return self._drawn

    @property
    def row(self):
        return self._draw()[0]

    @property
    def token(self):
        return self._draw()[1]


# ----------------------------------------------------------------------------- the run, step by step

def configure(kind, argv):
    """The run's config from the command line and, with --resume, the checkpoint to continue: the saved config
    is kept, and only the options in RESUME_MAY_CHANGE may differ from it."""
    config = TrainConfig()
    given = parse_args(argv, config, doc=sys.modules["__main__"].__doc__)
    config.out_dir = config.out_dir or os.path.join("out", kind)
    if not config.resume:
        return config, None, given
    ckpt_path = os.path.join(config.out_dir, "ckpt.pt")
    if not os.path.isfile(ckpt_path):
        raise UserError(f"--resume: {config.out_dir} holds no checkpoint to continue (no ckpt.pt): start the run "
                        f"without --resume")
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["kind"] != kind:
        script = "train_ar.py" if ckpt["kind"] == "ar" else "train_diffusion.py"
        raise UserError(f"{ckpt_path} holds {'an AR' if ckpt['kind'] == 'ar' else 'a diffusion'} run: "
                        f"resume it with {script}")
    saved = saved_config(ckpt, ckpt_path)
    changed = [k for k in given - RESUME_MAY_CHANGE if getattr(saved, k) != getattr(config, k)]
    if changed:
        raise UserError(f"--resume continues the saved config; these options differ from it: "
                        f"{', '.join('--' + k for k in sorted(changed))}")
    for k in given | {"resume", "overwrite", "out_dir"}:  # the folder it was found in, not the one it was saved in
        setattr(saved, k, getattr(config, k))
    return saved, ckpt, given


def check_config(config):
    if shape_problem(config.n_embd, config.n_head):
        raise UserError(shape_problem(config.n_embd, config.n_head))
    if config.epoch_order == "documents" and config.random_offsets:
        raise UserError("--random_offsets and --epoch_order=documents exclude each other: choose one")


def load_data(config, ckpt):
    """meta (with a BPE's ranks, for the checkpoints), the training windows over the first U train tokens, and
    the fixed validation windows; every size checked against the options and the checkpoint."""
    data_dir = os.path.join(config.data_dir, config.dataset)
    meta = portable_meta(load_meta(data_dir), data_dir)
    train_tokens = load_tokens(data_dir, "train", meta)
    val_tokens = load_tokens(data_dir, "val", meta)
    unique_tokens = config.unique_tokens or len(train_tokens)
    if unique_tokens > len(train_tokens):
        raise UserError(f"--unique_tokens {unique_tokens:,} is more than the {len(train_tokens):,} train tokens "
                        f"in {data_dir}")
    if unique_tokens < config.block_size + 1:
        raise UserError(f"--unique_tokens {unique_tokens:,} is less than one window (block_size + 1 = "
                        f"{config.block_size + 1})")
    if len(val_tokens) < config.block_size + 1:
        raise UserError(f"--block_size {config.block_size} is larger than the {len(val_tokens):,} val tokens "
                        f"in {data_dir}: use a smaller block_size or more data")
    if config.epoch_order == "documents" and meta.get("eot_id") is None:
        raise UserError(f"--epoch_order=documents needs data with document boundaries, and {data_dir} has none: "
                        f"prepare it with `python prepare_data.py --dataset python`")
    if ckpt is not None:
        check_run_data(ckpt, meta, data_dir)
    tokens = train_tokens[:unique_tokens]
    check_token_ids(tokens, meta, os.path.join(data_dir, "train.bin"))
    check_token_ids(val_tokens, meta, os.path.join(data_dir, "val.bin"))
    ends = document_ends(tokens, meta["eot_id"]) if config.epoch_order == "documents" else None
    windows = Windows(tokens, config.block_size, config.seed, config.random_offsets, ends)
    items = None
    if config.mc_items:
        context_len, continuation_len = downstream.item_lengths(meta, config)
        items = downstream.build_items(val_tokens, config.mc_items, context_len, continuation_len, seed=config.eval_seed)
    return meta, windows, val_windows(val_tokens, config.block_size, config.eval_windows), items


def runs_natively(dtype, device):
    """Whether a number format is native on a device: bf16 needs compute capability 8.0 (a T4 only emulates it),
    and a CPU trains in float32."""
    if device.type != "cuda":
        return dtype == torch.float32
    return dtype != torch.bfloat16 or torch.cuda.get_device_capability(device) >= (8, 0)


def number_format(config, ckpt, given, device):
    """The run's dtype. A resumed run keeps the format it was saved in unless --dtype says otherwise or this
    device cannot run it natively; any change is said in one line (the numbers then differ slightly from an
    uninterrupted run's)."""
    saved = ckpt.get("dtype") if ckpt is not None else None
    if saved is None or "dtype" in given:
        dtype = pick_dtype(config.dtype, device)
    else:
        dtype = getattr(torch, saved)
        if not runs_natively(dtype, device):
            dtype = pick_dtype("auto", device)
    if saved is not None and str(dtype) != f"torch.{saved}":
        print(f"note: the run was saved in {saved} and continues in {str(dtype).replace('torch.', '')} on "
              f"{device.type}: from here on it differs slightly from an uninterrupted run")
    return dtype


def setup_processes(config, ckpt, given):
    """This process's place in a DDP job, its device, and the mixed-precision pieces: autocast and grad scaler."""
    device = pick_device(config.device)
    rank, world_size, local_rank = setup_distributed(device)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dtype = number_format(config, ckpt, given, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return SimpleNamespace(rank=rank, world_size=world_size, local_rank=local_rank, master=rank == 0, device=device,
                           dtype=dtype, autocast=autocast, scaler=scaler)


def check_output_folder(config, ckpt):
    """Refuse a folder that holds a resumable run (a ckpt.pt) unless --resume or --overwrite; touches nothing. A
    folder without ckpt.pt (a start that failed or was killed before its first checkpoint) holds nothing to
    continue, so a plain start reuses it."""
    if ckpt is not None or config.overwrite:
        return
    if os.path.exists(os.path.join(config.out_dir, "ckpt.pt")):
        raise UserError(f"{config.out_dir} already holds a run: continue it with --resume, start over with "
                        f"--overwrite, or choose another --out_dir")
    if os.path.exists(os.path.join(config.out_dir, "log.jsonl")):
        print(f"{config.out_dir} holds no checkpoint (an earlier start stopped before its first one): starting "
              f"afresh there")


def start_output(config, ckpt):
    """The run's first write, once every check has passed: a fresh run empties log.jsonl (its best.pt and ckpt.pt
    follow at iteration 0, replacing an old run's); a resumed run keeps its log up to its checkpoint (evaluations
    logged after it, and a line torn by the kill, are dropped: they are redone)."""
    os.makedirs(config.out_dir, exist_ok=True)
    log_path, kept = os.path.join(config.out_dir, "log.jsonl"), []
    if ckpt is not None and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                try:
                    if json.loads(line)["iter"] <= ckpt["state"]["iter"]:
                        kept.append(line)
                except ValueError:
                    break
    with open(log_path, "w") as f:
        f.writelines(kept)


def build_model(config, meta, causal, env, ckpt):
    """(model to train: compiled and DDP-wrapped as asked, the plain model, optimizer, loop state)."""
    model_config = ModelConfig(n_vocab=meta["n_vocab"], block_size=config.block_size, n_layer=config.n_layer,
                               n_head=config.n_head, n_embd=config.n_embd, causal=causal, dropout=config.dropout)
    torch.manual_seed(config.seed)  # the initial weights, and dropout's stream
    raw_model = Transformer(model_config).to(env.device)
    optimizer = make_optimizer(raw_model, config, env.device.type)
    state = {"iter": 0, "windows_seen": 0, "best_val": float("inf"), "best_iter": -1, "evaluated_iter": -1,
             "train_loss_sum": 0.0, "train_loss_count": 0, "elapsed_before": 0.0}
    if ckpt is not None:
        load_weights(raw_model, ckpt, os.path.join(config.out_dir, "ckpt.pt"))
        optimizer.load_state_dict(ckpt["optimizer"])
        if env.scaler.is_enabled() and ckpt["scaler"]:  # a float16 run's loss scale (empty in other formats)
            env.scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        set_rng_state(ckpt["rng"][min(env.rank, len(ckpt["rng"]) - 1)], env.device)
    raw_model.dropout_share = (env.rank, env.world_size)
    model = torch.compile(raw_model) if config.compile else raw_model
    if env.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    return model, raw_model, optimizer, state


def evaluate(job):
    """Mean validation loss in nats/token over the val windows, each process taking every world_size-th one."""
    model = job.raw_model
    model.eval()
    ids = torch.arange(job.rank, len(job.val), job.world_size)
    with torch.no_grad(), job.autocast:
        nats, count = job.validation_loss(model, job.val[ids].to(job.device), ids, job.config, model.config.mask_id)
    totals = all_reduce_sum(torch.tensor([float(nats), float(count)], dtype=torch.float64, device=job.device),
                            job.world_size)
    model.train()
    return (totals[0] / totals[1]).item()


def multiple_choice(job):
    """(accuracy, standard error) on the multiple-choice items, scored on rank 0 (the others wait at the next
    step); diffusion uses K = mc_samples here, to keep the cost near a tenth of training."""
    model, config = job.raw_model, dataclasses.replace(job.config, elbo_samples=job.config.mc_samples)
    model.eval()
    with torch.no_grad(), job.autocast:
        acc, se, _ = downstream.accuracy(job.items, lambda c, x, ids: job.continuation_nll(
            model, c.to(job.device), x.to(job.device), ids, config, model.config.mask_id))
    model.train()
    return acc, se


def evaluate_and_log(job):
    """Evaluate, append one line to log.jsonl, print it, and keep best.pt when the run improved."""
    state, it = job.state, job.state["iter"]
    check_finite(job)
    val_loss = evaluate(job)
    fold_train_loss(job)
    train_loss = state["train_loss_sum"] / state["train_loss_count"] if state["train_loss_count"] else None
    state.update(train_loss_sum=0.0, train_loss_count=0, evaluated_iter=it)
    is_best = val_loss < state["best_val"]
    if is_best:
        state.update(best_val=val_loss, best_iter=it)
    epoch = state["windows_seen"] / job.windows.n
    record = {"iter": it, "epoch": round(epoch, 4), "tokens": state["windows_seen"] * job.config.block_size,
              "train_loss": train_loss, "val_loss": val_loss, "lr": lr_at(max(it - 1, 0), job.config, job.total_iters),
              "best_val": state["best_val"], "kind": job.kind, "tokenizer": tokenizer_name(job.meta),
              "elbo_samples": job.config.elbo_samples if job.kind == "diffusion" else None,
              "unique_tokens": len(job.windows.tokens), "n_params": job.n_params, "done": it == job.total_iters,
              "elapsed_s": round(time.time() - job.t_start + state["elapsed_before"], 1)}
    if job.bits_per_byte:
        record["val_bits_per_byte"] = val_loss / math.log(2)
    if job.items is not None and job.master:
        record["mc_accuracy"], record["mc_se"] = multiple_choice(job)
    if job.master:
        with open(os.path.join(job.config.out_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        unit = f" ({val_loss / math.log(2):.4f} bits/byte)" if job.bits_per_byte else ""
        mc = f" | choice acc {record['mc_accuracy']:.3f}" if "mc_accuracy" in record else ""
        print(f"eval iter {it} | epoch {epoch:.2f} | train {'-' if train_loss is None else f'{train_loss:.4f}'} | "
              f"val {val_loss:.4f} nats/token{unit}{mc}{' | best' if is_best else ''}", flush=True)
    if is_best and job.master:  # written to best.pt with the next checkpoint
        job.best = {"model": {k: v.detach().to("cpu", copy=True) for k, v in job.raw_model.state_dict().items()},
                    "iter": it, "epoch": epoch, "best_val": val_loss}


def train_step(job):
    """One optimizer step over grad_accum micro-batches (gradients synced across processes on the last one);
    returns the mean training loss over all processes."""
    config, it = job.config, job.state["iter"]
    for group in job.optimizer.param_groups:
        group["lr"] = lr_at(it, config, job.total_iters)
    loss_sum = torch.zeros((), device=job.device)
    rows = slice(job.rank * config.batch_size, (job.rank + 1) * config.batch_size)  # this process's share
    for micro in range(config.grad_accum):
        first_slot = job.state["windows_seen"] + micro * job.micro_rows
        batch = job.windows.get(range(first_slot + rows.start, first_slot + rows.stop))
        batch = batch.pin_memory().to(job.device, non_blocking=True) if job.device.type == "cuda" else batch
        noise = TrainingNoise(config.seed, it, micro, job.micro_rows, rows, config.block_size, job.device)
        sync = micro == config.grad_accum - 1 or job.world_size == 1
        with (contextlib.nullcontext() if sync else job.model.no_sync()), job.autocast:
            loss = job.training_loss(job.model, batch, noise, job.raw_model.config.mask_id) / config.grad_accum
        job.scaler.scale(loss).backward()
        loss_sum += loss.detach()
    loss = all_reduce_sum(loss_sum, job.world_size) / job.world_size
    # remember the first non-finite step on the device: no sync here, check_finite reads it before any log or save
    job.first_nonfinite_iter = torch.where((job.first_nonfinite_iter < 0) & ~torch.isfinite(loss), it,
                                           job.first_nonfinite_iter)
    job.scaler.unscale_(job.optimizer)
    torch.nn.utils.clip_grad_norm_(job.model.parameters(), config.grad_clip)
    job.scaler.step(job.optimizer)
    job.scaler.update()
    job.optimizer.zero_grad(set_to_none=True)
    return loss


def print_progress(job, loss, seconds, iters):
    """The progress line: iteration, epoch, loss, lr, tokens/s (and MFU on a GPU of known peak), ETA."""
    global_batch = job.micro_rows * job.config.grad_accum
    tokens_per_s = iters * global_batch * job.config.block_size / seconds
    mfu = " | mfu unknown" if job.device.type == "cuda" else ""  # a GPU missing from PEAK_FLOPS
    if job.peak:
        flops = job.raw_model.flops_per_token() * global_batch * job.config.block_size * iters
        mfu = f" | mfu {100 * flops / seconds / (job.peak * job.world_size):.1f}%"
    eta = (job.total_iters - job.state["iter"]) * seconds / iters
    print(f"iter {job.state['iter']}/{job.total_iters} | epoch {job.state['windows_seen'] / job.windows.n:.2f} | "
          f"loss {loss:.4f} | lr {lr_at(job.state['iter'] - 1, job.config, job.total_iters):.2e} | "
          f"{tokens_per_s:,.0f} tok/s{mfu} | eta {fmt_time(eta)}", flush=True)


def run(kind, causal, training_loss, validation_loss, argv=None, continuation_nll=None):
    """Train a model of `kind` ('ar' | 'diffusion') with the given losses; see TrainConfig for the options.
    With the kind's continuation_nll, every evaluation also logs the multiple-choice accuracy (downstream.py)."""
    config, ckpt, given = configure(kind, sys.argv[1:] if argv is None else argv)
    check_config(config)
    meta, windows, val, items = load_data(config, ckpt)
    env = setup_processes(config, ckpt, given)
    if env.master:
        check_output_folder(config, ckpt)
    model, raw_model, optimizer, state = build_model(config, meta, causal, env, ckpt)
    micro_rows = config.batch_size * env.world_size  # one micro-step's windows across all processes
    global_batch = micro_rows * config.grad_accum
    total_iters = config.max_iters or math.ceil(config.epochs * windows.n / global_batch)
    eval_interval = max(round(config.eval_epochs * windows.n / global_batch), 1) if config.eval_epochs \
        else config.eval_interval
    job = SimpleNamespace(**vars(env), kind=kind, config=config, meta=meta, windows=windows, val=val, model=model,
                          raw_model=raw_model, optimizer=optimizer, state=state, training_loss=training_loss,
                          validation_loss=validation_loss, continuation_nll=continuation_nll,
                          items=items if continuation_nll else None, micro_rows=micro_rows, total_iters=total_iters,
                          n_params=raw_model.num_params(), peak=peak_flops(env.device), t_start=time.time(),
                          bits_per_byte=meta["tokenizer"] == "bytes" and meta.get("eot_id") is None, best=None,
                          pending_loss=torch.zeros((), dtype=torch.float64, device=env.device),
                          first_nonfinite_iter=torch.tensor(-1, device=env.device))
    if env.master:
        print(f"{kind}: {job.n_params / 1e6:.2f}M parameters on {env.device} "
              f"({str(env.dtype).replace('torch.', '')}), {env.world_size} process(es) | U = {len(windows.tokens):,} "
              f"tokens = {windows.n:,} windows of {config.block_size + 1} | {global_batch} windows/iter | "
              f"{total_iters:,} iters = {total_iters * global_batch / windows.n:.2f} epochs | out: {config.out_dir}",
              flush=True)

    lock = None
    if env.master:
        lock = take_lock(config.out_dir)  # one writer per run folder: the first write, after every check
        start_output(config, ckpt)
    start_iter, t_log, iters_since_log = state["iter"], time.time(), 0
    while True:
        it = state["iter"]
        evaluated = (it % eval_interval == 0 or it == total_iters) and it != state["evaluated_iter"]
        if evaluated:
            evaluate_and_log(job)
            t_log, iters_since_log = time.time(), 0  # tokens/s counts training time only
        ckpt_due = it % config.ckpt_interval == 0 or it == total_iters if config.ckpt_interval else evaluated
        if (it > start_iter or ckpt is None) and ckpt_due:  # a fresh run saves at iteration 0: a run from here on
            save_checkpoint(job)
        if it >= total_iters:
            break
        if config.stop_after_s and out_of_time(job, it - start_iter):
            save_checkpoint(job)
            if env.master:
                print(f"stopped after {fmt_time(time.time() - job.t_start)} at iteration {it} of {total_iters} "
                      f"(--stop_after_s): continue with --resume")
            break

        loss = train_step(job)
        state["iter"] += 1
        state["windows_seen"] += global_batch
        job.pending_loss += loss  # on the device: the CPU runs ahead of the GPU until the next log
        state["train_loss_count"] += 1
        iters_since_log += 1
        if state["iter"] % config.log_interval == 0 or state["iter"] == total_iters:
            check_finite(job)
            if env.master:
                print_progress(job, loss.item(), time.time() - t_log, iters_since_log)
            t_log, iters_since_log = time.time(), 0

    if env.master and state["iter"] == total_iters:
        print(f"done: best val {state['best_val']:.4f} nats/token at iter {state['best_iter']} "
              f"({fmt_time(time.time() - job.t_start)}); checkpoints in {config.out_dir}")
    if env.world_size > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    if lock:
        release_lock(lock)
    return state


def main(kind, causal, training_loss, validation_loss, continuation_nll):
    """Entry point of a training script: a UserError becomes one line on stderr and exit status 1."""
    run_cli(lambda: run(kind, causal, training_loss, validation_loss, continuation_nll=continuation_nll),
            interrupted="interrupted: the last checkpoint is kept; continue with --resume")

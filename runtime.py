"""
The machinery under a run, which a first reading may skip: the device and number format, DDP processes, RNG state,
checkpoints (saved whole, loaded with checks) and --resume's rules. Shared by training, sampling and the
experiment scripts.
"""
import contextlib
import ctypes
import errno
import os
import shutil
import sys

import torch
import torch.distributed as dist

from cli import UserError
from config import RESUME_MAY_CHANGE, saved_config
from folders import replace_whole
from model import ModelConfig, Transformer
from tokenizer import meta_problem


# ----------------------------------------------------------------------------- device, number format, processes

def pick_device(name):
    """'auto': cuda, then mps, then cpu; anything else as torch names it. Choosing the CPU also keeps freed memory
    for reuse (keep_freed_cpu_memory)."""
    device = named_device(name) if name != "auto" else torch.device(
        "cuda" if torch.cuda.is_available() else
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    if device.type == "cpu":
        keep_freed_cpu_memory()
    return device


def named_device(name):
    """The device --device names, or a one-line UserError if this machine has none such."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name: use auto, cpu, cuda, cuda:N or mps") from None
    missing = not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    if device.type == "cuda" and missing:
        raise UserError(f"--device {name}: this machine has no such CUDA GPU: use --device=auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {name}: MPS is not available here: use --device=auto or cpu")
    return device


KEPT_MMAP_THRESHOLD = 32 << 20  # blocks up to 32 MB (glibc's largest setting) come from the heap, not mmap
KEPT_TRIM_THRESHOLD = 1 << 30  # and up to 1 GB of freed heap stays with the process


def keep_freed_cpu_memory():
    """glibc hands freed blocks of 128 KB and more back to the system and the next step's activations fault them in
    again, zeroed page by page: thousands of page faults a step, ~12% of a small model's CPU training time. Keep
    freed memory in the process for reuse instead. Only where glibc's mallopt exists, and not over a user's own
    MALLOC_* or GLIBC_TUNABLES setting."""
    if any(name.startswith("MALLOC_") or name == "GLIBC_TUNABLES" for name in os.environ):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, TypeError, AttributeError):  # not glibc (macOS, Windows, musl without it)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, KEPT_MMAP_THRESHOLD)
    mallopt(m_trim_threshold, KEPT_TRIM_THRESHOLD)


def kept_memory_environment():
    """The environment variables that make keep_freed_cpu_memory's setting in another program (glibc reads them)."""
    return {"MALLOC_MMAP_THRESHOLD_": str(KEPT_MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(KEPT_TRIM_THRESHOLD)}


def number_format(device, requested="auto", saved=None):
    """The dtype a run (or sampling) computes in, decided here once. 'auto': bfloat16 on GPUs with native bf16
    (compute capability 8.0 and up: A100, L4, H100, RTX 30xx...), float16 (with a grad scaler in training) on older
    ones such as a T4, where torch.cuda.is_bf16_supported() says yes but bf16 is emulated and slow; float32
    elsewhere. A resumed run passes the format it was saved in (`saved`, with requested=None unless --dtype was
    given): it keeps it unless this device cannot run it natively, and a change is said in one line (the numbers
    then differ slightly from an uninterrupted run's)."""
    bf16_native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    native = {"float32": True, "bfloat16": bf16_native, "float16": device.type == "cuda"}
    name = requested or (saved if native[saved] else "auto")
    if name == "auto":
        name = "bfloat16" if bf16_native else "float16" if device.type == "cuda" else "float32"
    if saved is not None and name != saved:
        print(f"note: the run was saved in {saved} and continues in {name} on {device.type}: from here on it "
              f"differs slightly from an uninterrupted run")
    return getattr(torch, name)


def mixed_precision(device, dtype):
    """(autocast context, grad scaler): autocast in the run's format (none in float32), and a loss scaler that
    only a float16 run uses."""
    if device.type == "cuda":  # TF32 for the float32 matmuls left under autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 \
        else contextlib.nullcontext()
    return autocast, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)


def setup_distributed(device):
    """(rank, world_size, device): a torchrun launch starts DDP, NCCL when the run's device is a GPU and gloo when
    it is the CPU (also on a host with GPUs); each process then takes the GPU of its local rank."""
    if "RANK" not in os.environ:
        return 0, 1, device
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def all_reduce_sum(values, world_size):
    """values summed over the processes, in place (itself with one process)."""
    if world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def rank0_says(flag, device, world_size):
    """Rank 0's boolean, on every process (so that all of them stop together)."""
    if world_size == 1:
        return flag
    flag = torch.tensor([float(flag)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def wait_for_all(world_size):
    """The processes of a DDP run end together: one that left while another was still saving made gloo abort it."""
    if world_size > 1:
        dist.barrier()


def leave_if_distributed(world_size):
    """A DDP process exits here, its work done and its files closed, without tearing gloo down: the teardown (in
    destroy_process_group or at interpreter exit) now and then aborted a process ('terminate called without an
    active exception', exit -6) after a run that had finished whole."""
    if world_size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# dense bf16 tensor-core peak FLOP/s with float32 accumulation (fp16 on a T4), from the vendors' data sheets, by the
# exact name torch reports, for MFU; a GPU not listed (an H100 NVL, an A10G...) gets no MFU rather than a wrong one
PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12,
              "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100-PCIE-40GB": 312e12,
              "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA L4": 121e12, "NVIDIA L40S": 362e12, "NVIDIA A10": 125e12,
              "Tesla T4": 65e12, "NVIDIA GeForce RTX 4090": 82.6e12, "NVIDIA GeForce RTX 3090": 35.6e12}


def peak_flops(device):
    return PEAK_FLOPS.get(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


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
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_random_state(ckpt, scaler, rank, device):
    """A resumed run's generators (this process's own; a process beyond the saved ones takes the last) and a
    float16 run's loss scale (empty in other formats)."""
    if scaler.is_enabled() and ckpt["scaler"]:
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"][min(rank, len(ckpt["rng"]) - 1)], device)


def every_rng_state(device, world_size):
    """Every process's rng_state, in rank order (a collective: all processes call it)."""
    if world_size == 1:
        return [rng_state(device)]
    states = [None] * world_size
    dist.all_gather_object(states, rng_state(device))
    return states


def atomic_save(obj, path):
    """Write to a temporary file, then rename: a kill mid-save leaves the previous file intact. The temporary name
    is this process's own, and an error or Ctrl-C mid-save removes it; a full disk is one line (a UserError)."""
    try:
        replace_whole(path, lambda tmp: torch.save(obj, tmp))
    except BaseException as e:
        if not isinstance(e, (OSError, RuntimeError)):  # Ctrl-C and the like: nothing to say about the disk
            raise
        needed, free = tensor_bytes(obj), shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        if getattr(e, "errno", None) == errno.ENOSPC or (isinstance(e, RuntimeError) and free < needed):
            raise UserError(f"{path}: the disk is full (the file needs about {needed / 2**20:,.1f} MB, "
                            f"{free / 2**20:,.1f} MB are free): free some space or choose another --out_dir; the "
                            f"previous {os.path.basename(path)} is kept") from None
        raise


def tensor_bytes(obj):
    """The bytes of every tensor in a nest of dicts, lists and tuples (what torch.save writes, near enough)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path):
    """A checkpoint dict written by this project (a run folder: its best.pt, else ckpt.pt; or a file)."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt") if os.path.isfile(os.path.join(path, "best.pt")) \
            else os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first (python train_ar.py or train_diffusion.py)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint of this project ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in ("ar", "diffusion") or "model" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project (no kind/model entries)")
    missing = [key for key, kind in (("model_args", dict), ("config", dict), ("meta", dict), ("iter", int))
               if not isinstance(ckpt.get(key), kind)]
    problem = f"lacks {', '.join(missing)}" if missing else meta_problem(ckpt["meta"])
    if not problem and ckpt["meta"]["tokenizer"] == "bpe" and not isinstance(ckpt["meta"].get("ranks_text"), str):
        problem = "lacks its BPE ranks (meta's ranks_text)"
    if problem:
        raise UserError(f"{path} is not a whole checkpoint of this version ({'its meta ' if not missing else ''}"
                        f"{problem}): use the run's other checkpoint, or train it again")
    return ckpt


def model_from_checkpoint(ckpt, device="cpu"):
    try:
        model = Transformer(ModelConfig(**ckpt["model_args"]))
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model_args do not describe a model of this version ({e})") from None
    load_weights(model, ckpt, "the checkpoint")
    return model.to(device).eval()


def load_weights(model, ckpt, path):
    """The checkpoint's weights into model, or a UserError when they do not fit its shapes (a foreign file)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{path}: its weights do not fit its model ({first.rstrip('.')})") from None


def save_checkpoint(folder, header, bests, training):
    """The best weights ({file name: weights, or None where the run has not improved since the last save: they
    waited in memory}), then ckpt.pt: everything --resume needs to continue exactly, into the folders.RunFolder's
    current folder; then folder.checkpointed(), where an --overwrite's new run takes out_dir's place. `header`
    (kind, model_args, config, meta) goes into every file."""
    for name, best in bests.items():
        if best is not None:
            atomic_save(dict(header, **best), os.path.join(folder.path, name))
    atomic_save(dict(header, **training), os.path.join(folder.path, "ckpt.pt"))
    folder.checkpointed()


def checkpoint_to_resume(config, given, kind):
    """(config, checkpoint) of the run --resume continues: the saved config is kept, the options the command line
    gives replace it only where RESUME_MAY_CHANGE allows, and the folder is the one it was found in."""
    path = os.path.join(config.out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume: {config.out_dir} holds no checkpoint to continue (no ckpt.pt): start the run "
                        f"without --resume")
    ckpt = load_checkpoint(path)
    if ckpt["kind"] != kind:
        script = "train_ar.py" if ckpt["kind"] == "ar" else "train_diffusion.py"
        raise UserError(f"{path} holds {'an AR' if ckpt['kind'] == 'ar' else 'a diffusion'} run: resume it with "
                        f"{script}")
    saved = saved_config(ckpt, path)
    changed = [k for k in given - RESUME_MAY_CHANGE if getattr(saved, k) != getattr(config, k)]
    if changed:
        raise UserError(f"--resume continues the saved config; these options differ from it: "
                        f"{', '.join('--' + k for k in sorted(changed))}")
    for k in given | {"resume", "overwrite", "out_dir"}:
        setattr(saved, k, getattr(config, k))
    return saved, ckpt

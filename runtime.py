"""
What a run stands on: the device and dtype, DDP processes, RNG state and checkpoint files. Shared by training,
sampling and the experiment scripts.
"""
import contextlib
import os

import torch
import torch.distributed as dist

from model import ModelConfig, Transformer


# ----------------------------------------------------------------------------- device, number format, processes

def pick_device(name="auto"):
    """'auto': cuda, then mps, then cpu; anything else as torch names it."""
    if name != "auto":
        return torch.device(name)
    mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")


def pick_dtype(device, requested="auto", saved=None):
    """The dtype a run (or sampling) computes in, decided here once. 'auto': bfloat16 on GPUs with native bf16
    (compute capability 8.0 and up: A100, L4, H100, RTX 30xx...), float16 (with a grad scaler in training) on older
    ones such as a T4, where torch.cuda.is_bf16_supported() says yes but bf16 is emulated and slow; float32
    elsewhere. A resumed run passes the dtype it was saved in (`saved`): with requested 'auto' it keeps it unless
    this device cannot run it natively (then its numbers differ slightly from an uninterrupted run's)."""
    bf16_native = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    native = {"float32": True, "bfloat16": bf16_native, "float16": device.type == "cuda"}
    name = saved if requested == "auto" and saved is not None and native[saved] else requested
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


def wait_for_all(world_size):
    """The processes of a DDP run end together: one that left while another was still saving made gloo abort it."""
    if world_size > 1:
        dist.barrier()


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


def load_checkpoint(path):
    """A checkpoint dict: a run folder's best.pt (else its ckpt.pt), or a file."""
    if os.path.isdir(path):
        best = os.path.join(path, "best.pt")
        path = best if os.path.isfile(best) else os.path.join(path, "ckpt.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(ckpt, device="cpu"):
    model = Transformer(ModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()

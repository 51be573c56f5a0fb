"""
Loading what training wrote, and choosing the device and number format: shared by training, sampling and the
experiment scripts, so none of them needs another's code.
"""
import atexit
import json
import os
import socket
import time

import torch

from cli import UserError
from model import ModelConfig, Transformer


def pick_device(name):
    """'auto': cuda, then mps, then cpu; anything else as torch names it."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name}: not a device name: use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
            raise UserError(f"--device {name}: this machine has no such CUDA GPU: use --device=auto or cpu")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {name}: MPS is not available here: use --device=auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name, device):
    """'auto': bfloat16 on GPUs with native bf16 (compute capability 8.0 and up: A100, L4, H100, RTX 30xx...),
    float16 (with a grad scaler in training) on older ones such as a T4, float32 elsewhere.
    torch.cuda.is_bf16_supported() says yes on a T4 too, where bf16 is emulated and slow."""
    if name == "auto":
        if device.type == "cuda":
            name = "bfloat16" if torch.cuda.get_device_capability(device) >= (8, 0) else "float16"
        else:
            name = "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype {name}: choose auto, float32, bfloat16 or float16")
    return getattr(torch, name)


def atomic_save(obj, path):
    """Write to a temporary file, then rename: a kill mid-save leaves the previous file intact. The temporary name
    is this process's own, and an error or Ctrl-C mid-save removes it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


LOCK_FILE = ".lock"


def take_lock(folder):
    """Make this process the one writer of folder: a lock file with its pid and host, created atomically, removed by
    release_lock or at exit. A lock whose process has ended (on this host) is taken over, with a note; a live one is
    a UserError that names it. The folder is created if need be."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = lock_holder(path)
            if holder is not None:
                raise UserError(f"{folder} is in use by process {holder['pid']} on {holder['host']} (since "
                                f"{holder.get('since', '?')}): wait for it to end, or stop it first")
            print(f"note: {folder} was locked by a process that has ended: taking the lock over")
            try:
                os.remove(path)
            except FileNotFoundError:  # another process took it over first: try again
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(release_lock, path)
        return path


def lock_holder(path):
    """The live process that holds a lock file ({pid, host, since}), or None when it is stale: its process ended,
    or it is this process's own (a run before, in the same Python), or it was left empty by a kill mid-write."""
    try:
        with open(path) as f:
            holder = json.load(f)
        pid, host = int(holder["pid"]), holder["host"]
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return None if time.time() - os.path.getmtime(path) > 10 else {"pid": "?", "host": "?"}
        except OSError:
            return None
    if host != socket.gethostname():
        return holder  # another machine's process: it cannot be checked, so it is taken to be alive
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's
        pass
    return holder


def release_lock(path):
    """Remove a lock this process holds (nothing if it is gone or another process's)."""
    try:
        with open(path) as f:
            if json.load(f).get("pid") != os.getpid():
                return
        os.remove(path)
    except (OSError, ValueError):
        pass

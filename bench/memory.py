"""
Peak memory per window of one training step (forward, loss, backward) of each kind, on this device.

    python bench/memory.py                                    # the GPU recipe's 6 x 384, context 512, BPE 8192
    python bench/memory.py --n_layer=6 --n_head=6 --n_embd=384 --device=cuda --batches=16,64

Each batch size runs in a fresh process, so one peak cannot hide another; the figure per window is the slope between
the smallest and the largest batch (what the model, optimizer and the Python process hold cancels out). On a CPU the
peak is the process's resident set (ru_maxrss), on a GPU torch's peak allocation. `saved/window` is exact on any
device: the bytes autograd keeps for the backward (the activations), the same slope; the resident set is noisy.
"""
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
from shape import ModelShape, random_model  # noqa: E402
from lab.errors import run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import list_items, parse_checked as parse_args  # noqa: E402
from runtime import mixed_precision, pick_dtype  # noqa: E402
from lab.launch import checked_device as pick_device  # noqa: E402


@dataclass
class MemoryConfig(ModelShape):
    n_layer: int = option(6, low=1)
    n_head: int = option(6, low=1)
    n_embd: int = option(384, low=2)
    n_vocab: int = option(8193, low=1, high=65535)
    block_size: int = option(512, low=1)
    # windows per step, each measured in its own process
    batches: str = option("2,8", items=int, low=1)
    device: str = "auto"
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16", "float16"))
    kinds: str = option("ar,diffusion", choices=("ar,diffusion", "ar", "diffusion"))


def one_step_peak(config, kind, batch):
    """Peak bytes of one training step at `batch` windows (run in a child process)."""
    import train_ar
    import train_diffusion
    from trainer import Noise, step_generator
    script = {"ar": train_ar, "diffusion": train_diffusion}[kind]
    device = pick_device(config.device)
    dtype = pick_dtype(device, config.dtype)
    model = random_model(config, script.CAUSAL, device)
    windows = torch.randint(0, config.n_vocab, (batch, config.block_size + 1), device=device)
    autocast, _ = mixed_precision(device, dtype)  # as training runs it
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    saved = {}  # what autograd keeps for the backward: each storage once (views share one)

    def keep(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with autocast, torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        loss = script.training_loss(model, windows, Noise(step_generator(0, 0, 0), model.config.mask_id))
    loss.backward()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), sum(saved.values())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sum(saved.values())  # ru_maxrss: kB on Linux


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # one measurement, in a fresh process
        config = MemoryConfig(**json.loads(sys.argv[2]))
        print(*one_step_peak(config, sys.argv[3], int(sys.argv[4])))
        return
    config = MemoryConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    batches = sorted(list_items("batches", config.batches, int))
    device = pick_device(config.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name} | dtype {str(pick_dtype(device, config.dtype)).replace('torch.', '')} | "
          f"{config.n_layer} layers x {config.n_embd}, context {config.block_size}, vocab {config.n_vocab} | "
          f"peak of one training step at {', '.join(map(str, batches))} windows")
    print(f"{'kind':<10} " + " ".join(f"{f'peak @{b}':>11}" for b in batches) + f" {'per window':>11}"
          f" {'saved/window':>13}")
    for kind in config.kinds.split(","):
        runs = [subprocess.run([sys.executable, __file__, "--child", json.dumps(asdict(config)), kind, str(b)],
                               capture_output=True, text=True, check=True).stdout.split() for b in batches]
        peaks, saved = [int(r[0]) for r in runs], [int(r[1]) for r in runs]
        span = max(batches[-1] - batches[0], 1)
        print(f"{kind:<10} " + " ".join(f"{p / 2**20:>9.0f}MB" for p in peaks) +
              f" {(peaks[-1] - peaks[0]) / span / 2**20:>9.1f}MB {(saved[-1] - saved[0]) / span / 2**20:>11.1f}MB")


if __name__ == "__main__":
    run_cli(main)

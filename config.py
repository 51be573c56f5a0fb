"""
Every option of a training run, with its default and its allowed values: `python train_ar.py --n_layer=6` (or
`--n_layer 6`) overrides a field. The same config is saved in every checkpoint, so evaluate.py and the experiments
read a run's options from here too. `parse_args` turns any such dataclass into an argparse command line.
"""
import argparse
import difflib
import inspect
import math
import re
import sys
from dataclasses import dataclass, field, fields


def option(default, **allowed):
    """A config field and its allowed values (low / high: at least / at most; above / below: strictly; choices;
    items=int or float: a comma-separated list of such numbers). lab/checks.py holds them to it."""
    return field(default=default, metadata={"rule": allowed})


@dataclass
class TrainConfig:
    # --- data (prepare_data.py writes data_dir/dataset)
    dataset: str = "default"
    data_dir: str = "data"
    # U: train only on U train tokens, repeated (0: the whole train split)
    unique_tokens: int = option(0, low=0)
    # which U: start, the split's first U tokens (a few files); pieces, piece_tokens-long pieces of randomly chosen
    # train documents (many files, as paper 1's random subset of C4), drawn by data_seed
    unique_from: str = option("start", choices=("start", "pieces"))
    piece_tokens: int = option(512, low=2)
    # seeds the pieces' draw, apart from --seed: runs of several seeds train on the same U
    data_seed: int = option(0, low=0)
    # training tokens = epochs x U; the learning-rate schedule spans them all
    epochs: float = option(16.0, above=0)
    # if > 0: train this many iterations instead of `epochs` (short runs and tests)
    max_iters: int = option(0, low=0)
    # fixed: the same windows every epoch, shuffled; documents: the papers' loader, a fresh seeded document order
    # every epoch cut into windows (their boundaries move; needs data with documents)
    epoch_order: str = option("fixed", choices=("fixed", "documents"))
    # --- model
    n_layer: int = option(4, low=1)
    n_head: int = option(4, low=1)
    n_embd: int = option(128, low=2)
    # context length in tokens
    block_size: int = option(128, low=1)
    # on the outputs of the attention and MLP branches (Megatron's hidden dropout; both papers' baseline: 0.1)
    dropout: float = option(0.0, low=0, below=1)
    # on the attention weights (Megatron's attention dropout, 0.1 in both papers' baseline); drawn by each process
    # from its own stream, so with it a DDP run is one process's run in distribution, not draw for draw
    attn_dropout: float = option(0.0, low=0, below=1)
    # on the token embeddings, before the first block (Megatron's embedding dropout, which uses the hidden rate)
    embd_dropout: float = option(0.0, low=0, below=1)
    # --- optimisation: AdamW, linear warmup, then cosine to lr * min_lr_ratio at the end of the run
    # windows per micro-batch, per process
    batch_size: int = option(16, low=1)
    # micro-batches per optimizer step
    grad_accum: int = option(1, low=1)
    lr: float = option(2e-3, above=0)
    min_lr_ratio: float = option(0.1, low=0, high=1)
    # warmup iterations, at most 10% of the run
    warmup_iters: int = option(100, low=0)
    # if > 0: warm up over this share of the run instead (runs of many lengths in one sweep)
    warmup_fraction: float = option(0.0, low=0, below=1)
    weight_decay: float = option(0.1, low=0)
    beta1: float = option(0.9, low=0, below=1)
    beta2: float = option(0.95, low=0, below=1)
    grad_clip: float = option(1.0, above=0)
    # --- evaluation
    # iterations between evaluations (there is always one at the start and one at the end)
    eval_interval: int = option(250, low=1)
    # if > 0: evaluate every this many epochs instead (runs of many lengths in one sweep)
    eval_epochs: float = option(0.0, low=0)
    # validation windows evaluated, the same ones every time (0: all)
    eval_windows: int = option(64, low=0)
    eval_batch_size: int = option(64, low=1)
    # K stratified t values per window for the diffusion ELBO
    elbo_samples: int = option(32, low=1)
    # seeds the diffusion ELBO's masks and picks the multiple-choice items
    eval_seed: int = option(1234, low=0)
    # multiple-choice continuation items scored at every evaluation (0: none)
    mc_items: int = option(200, low=0)
    # K of diffusion's conditional ELBO for those items (evaluate.py uses elbo_samples)
    mc_samples: int = option(4, low=1)
    # --- output
    # the run's folder (default: out/<kind>)
    out_dir: str = ""
    # iterations between checkpoints (0: at every evaluation); always one at the end and at a stop
    ckpt_interval: int = option(0, low=0)
    # iterations between progress lines
    log_interval: int = option(25, low=1)
    # continue the run in out_dir from its ckpt.pt
    resume: bool = False
    # if > 0: checkpoint and stop after this many seconds (then --resume)
    stop_after_s: float = option(0.0, low=0)
    # replace the run in out_dir: the old run stays whole until the new one's first checkpoint takes its place
    overwrite: bool = False
    # --- system
    seed: int = option(1337, low=0)
    # auto: cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps
    device: str = "auto"
    # auto: bfloat16 on GPUs with native bf16, float16 on older ones, float32 on a CPU
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16", "float16"))
    # torch.compile the model (GPUs: faster after a minute of compiling)
    compile: bool = False


# ----------------------------------------------------------------------------- the command line

class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 1, not argparse's usage block and status 2
        sys.exit(f"error: {message} (see --help)")


def to_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def to_finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


to_bool.__name__, to_finite_float.__name__ = "true/false", "float"  # argparse names the type in its errors


def field_comments(cls):
    """{field name: the comment lines just above it (or at the end of its line)} from the dataclass's source."""
    try:
        lines = [line for c in reversed(cls.__mro__[:-1]) for line in inspect.getsource(c).splitlines()]
    except (OSError, TypeError):
        return {}
    comments, pending = {}, []
    for line in lines:
        text = line.strip()
        declared = re.match(r"(\w+)\s*:", text)
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
        elif declared:
            after = text.split("  # ", 1)[1] if "  # " in text else ""
            comments[declared.group(1)] = " ".join(pending + [after]).strip()
            pending = []
    return comments


def parse_args(argv, config, doc=None):
    """Apply `--key=value` / `--key value` (`--flag` alone sets a bool) to a dataclass config with argparse; returns
    the set of keys given. Types, choices and help come from the fields."""
    parser = OneLineParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False, argument_default=argparse.SUPPRESS)
    helps = field_comments(type(config))
    for f in fields(config):
        kind = {"bool": to_bool, "int": int, "float": to_finite_float}.get(str(f.type), {
            bool: to_bool, int: int, float: to_finite_float}.get(f.type, str))
        extra = dict(nargs="?", const=True) if kind is to_bool else {}
        parser.add_argument(f"--{f.name}", type=kind, choices=f.metadata.get("rule", {}).get("choices"),
                            help=f"{helps.get(f.name, '')} (default: {getattr(config, f.name)!r})".replace("%", "%%"), **extra)
    given, unknown = parser.parse_known_args(argv)
    if unknown:
        close = difflib.get_close_matches(unknown[0].lstrip("-").split("=")[0], [f.name for f in fields(config)], 1)
        parser.error(f"unknown option {unknown[0]}" + (f"; did you mean --{close[0]}?" if close else ""))
    given = vars(given)
    for key, value in given.items():
        setattr(config, key, value)
    return set(given)

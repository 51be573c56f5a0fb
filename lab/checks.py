"""
Every input check and its one-line message, in one place, run before the core reads or writes anything: the
options' allowed values (declared beside each field with config.option), data folders, checkpoints, devices and
--resume's rules. Each problem is a UserError that says what to do.
"""
import dataclasses
import json
import os

import numpy as np
import torch

from config import TrainConfig, parse_args
from data import document_spans
from lab.errors import UserError
from model import ModelConfig, Transformer
from tokenizer import portable_meta, same_tokenizer


# ----------------------------------------------------------------------------- options

def describe(rule):
    """The allowed values in words: 'at least 1', 'at least 0 and less than 1', 'auto, cpu or cuda'."""
    if "choices" in rule:
        names = list(rule["choices"])
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    bounds = [f"{word} {rule[key]:g}" for key, word in (("low", "at least"), ("above", "more than"),
                                                        ("high", "at most"), ("below", "less than")) if key in rule]
    text = " and ".join(bounds)
    if "items" in rule:
        kind = "whole numbers" if rule["items"] is int else "numbers"
        return f"{kind} separated by commas" + (f", each {text}" if text else "")
    return text


def list_items(name, text, kind):
    """The numbers of a comma-separated option ('' gives none), or a one-line UserError."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise UserError(f"--{name} takes {what} separated by commas (e.g. --{name}=1,2,3), not {text!r}") from None


def check_value(name, value, rule):
    """Nothing if value is allowed by rule; otherwise a UserError naming the option, the value and the rule."""
    if "choices" in rule:
        if value not in rule["choices"]:
            raise UserError(f"--{name} {value}: choose {describe(rule)}")
        return
    values = list_items(name, value, rule["items"]) if "items" in rule else [value]
    for v in values:
        if ("low" in rule and v < rule["low"]) or ("high" in rule and v > rule["high"]) or \
                ("above" in rule and v <= rule["above"]) or ("below" in rule and v >= rule["below"]):
            raise UserError(f"--{name} {value}: must be {describe(rule)}")


def check_options(config):
    """Every field of a dataclass config within its declared rule, or a UserError naming the first that is not."""
    for f in dataclasses.fields(config):
        check_value(f.name, getattr(config, f.name), f.metadata.get("rule", {}))


def parse_checked(argv, config, doc=None):
    """parse_args, then check_options: the command line of every script. Returns the set of keys given."""
    given = parse_args(argv, config, doc)
    check_options(config)
    return given


def named_device(name):
    """The device --device names, or a one-line UserError if this machine has none such."""
    if name == "auto":
        return None
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


# ----------------------------------------------------------------------------- data folders

def meta_problem(meta):
    """What is wrong with a data folder's meta.json (as prepare_data.py writes it), or None: both prepare_data.py
    (before it keeps a folder) and training (before it reads one) ask."""
    expected = {"tokenizer": str, "n_vocab": int, "train_tokens": int, "val_tokens": int, "sha256": str}
    if not isinstance(meta, dict):
        return "is not a JSON object"
    wrong = [key for key, kind in expected.items() if not isinstance(meta.get(key), kind)
             or isinstance(meta.get(key), bool)]
    if wrong:
        return f"lacks {', '.join(wrong)} (or holds the wrong type)"
    if meta["tokenizer"] not in ("bytes", "bpe", "gpt2"):
        return f"names an unknown tokenizer '{meta['tokenizer']}' (bytes, bpe or gpt2)"
    if meta["tokenizer"] == "bpe" and not isinstance(meta.get("ranks_sha256"), str):
        return "lacks the BPE ranks file's ranks_sha256"
    empty = [split for split in ("train", "val") if meta[f"{split}_tokens"] < 2]
    if empty or meta["n_vocab"] < 1:
        return f"says its {' and '.join(empty) or 'vocabulary'} {'split holds' if empty else 'holds'} no tokens"
    return None


def checked_meta(data_dir):
    """A data folder's meta.json, with its keys checked."""
    path = os.path.join(data_dir, "meta.json")
    if not os.path.isfile(path):
        raise UserError(f"no prepared data in {data_dir}/ (meta.json missing): run `python prepare_data.py` first")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError):
        meta = None
    problem = "is not valid JSON" if meta is None else meta_problem(meta)
    if problem:
        raise UserError(f"{path} {problem}: the folder is damaged or not this project's; prepare it again with "
                        f"prepare_data.py and --overwrite")
    return meta


def checked_tokens(data_dir, split, meta):
    """A split as a read-only uint16 memmap, checked against meta.json."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: re-run `python prepare_data.py`")
    expected = meta.get(f"{split}_tokens")
    if meta.get("dtype", "uint16") != "uint16" or os.path.getsize(path) != 2 * expected:
        raise UserError(f"{path} holds {os.path.getsize(path)} bytes but meta.json says {expected} uint16 tokens: "
                        f"the files are from different runs or truncated; re-run prepare_data.py")
    return np.memmap(path, dtype=np.uint16, mode="r")


def check_token_ids(tokens, meta, path):
    """Every id must be one of the tokenizer's: [MASK] (= n_vocab) and the padding above it are never data."""
    largest = int(np.max(tokens)) if len(tokens) else 0
    if largest >= meta["n_vocab"]:
        what = "the [MASK] id" if largest == meta["n_vocab"] else "an id past the vocabulary"
        raise UserError(f"{path} holds token id {largest}, {what} ({meta['tokenizer']} has {meta['n_vocab']} "
                        f"tokens): the file does not match meta.json; re-run prepare_data.py")


def check_training_data(config, ckpt):
    """A run's data folder, every size checked against its options and, on resume, against its checkpoint."""
    data_dir = os.path.join(config.data_dir, config.dataset)
    meta = portable_meta(checked_meta(data_dir), data_dir)
    train_tokens, val_tokens = checked_tokens(data_dir, "train", meta), checked_tokens(data_dir, "val", meta)
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
    if config.unique_from == "pieces" and config.unique_tokens:
        spans = document_spans(train_tokens, meta.get("eot_id"))
        room = sum(min(config.piece_tokens, e - s) for s, e in spans)
        if room < unique_tokens:
            raise UserError(f"--unique_tokens {unique_tokens:,} is more than pieces of {config.piece_tokens} tokens "
                            f"from the {len(spans):,} train documents of {data_dir} hold ({room:,}): raise "
                            f"--piece_tokens, or use --unique_from=start")
    if config.epoch_order == "documents" and meta.get("eot_id") is None and config.unique_from != "pieces":
        raise UserError(f"--epoch_order=documents needs data with document boundaries, and {data_dir} has none: "
                        f"prepare it with `python prepare_data.py --dataset python`")
    if ckpt is not None:
        check_run_data(ckpt, meta, data_dir)
    tokens = train_tokens if config.unique_from == "pieces" else train_tokens[:unique_tokens]  # where U comes from
    check_token_ids(tokens, meta, os.path.join(data_dir, "train.bin"))
    check_token_ids(val_tokens, meta, os.path.join(data_dir, "val.bin"))


def data_fingerprint(meta):
    """A data folder's identity in a few characters: its text's sha256 and its token counts."""
    return f"sha256 {meta['sha256'][:12]}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens"


def check_run_data(ckpt, meta, data_dir, own_data=True):
    """A checkpoint continues or is scored only on data of its own tokenizer; and, where the folder is the run's own
    (not one given to score it on), only on the very data it was trained on: a folder prepared again since (other
    text, other files) changes the unique tokens under the run."""
    if not same_tokenizer(ckpt["meta"], meta):
        raise UserError(f"the checkpoint's tokenizer ({ckpt['meta']['tokenizer']}, {ckpt['meta']['n_vocab']} "
                        f"tokens) differs from {data_dir}'s ({meta['tokenizer']}, {meta['n_vocab']}): give the "
                        f"run's own data")
    saved, now = data_fingerprint(ckpt["meta"]), data_fingerprint(meta)
    if own_data and saved != now:
        raise UserError(f"{data_dir} was prepared again since the run started: the run's data is {saved}, the "
                        f"folder's is {now}; prepare the run's data again, or start the run afresh")


def load_run_data(ckpt, data_dir=None, dataset=None):
    """(the run's training config, its data folder, that folder's meta) for a checkpoint, checked against it;
    data_dir and dataset replace the run's own."""
    config = saved_config(ckpt, "the checkpoint")
    folder = os.path.join(data_dir or config.data_dir, dataset or config.dataset)
    meta = checked_meta(folder)
    check_run_data(ckpt, meta, folder, own_data=not (data_dir or dataset))
    return config, folder, meta


# ----------------------------------------------------------------------------- checkpoints

def checked_checkpoint(path):
    """A checkpoint dict written by this project (a run folder: its best.pt, else ckpt.pt; or a file)."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt") if os.path.isfile(os.path.join(path, "best.pt")) \
            else os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first (python train_ar.py or train_diffusion.py)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # read as checked: the core loads it
    except Exception as e:
        raise UserError(f"{path} is not a checkpoint of this project ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("kind"), str) or "model" not in ckpt:
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


def checked_model(ckpt, device="cpu"):
    """The checkpoint's model, or a UserError when its shape or weights are not this version's or not finite."""
    try:
        model = Transformer(ModelConfig(**ckpt["model_args"]))
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model_args do not describe a model of this version ({e})") from None
    load_weights(model, ckpt, "the checkpoint")
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError("the checkpoint's weights are not finite (NaN or inf): use the run's other checkpoint, or "
                        "train it again with a lower --lr")
    return model.to(device).eval()


def load_weights(model, ckpt, path):
    """The checkpoint's weights into model, or a UserError when they do not fit its shapes (a foreign file)."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{path}: its weights do not fit its model ({first.rstrip('.')})") from None


# options a resumed run may change when the command line gives them; every other option must match the checkpoint,
# and whatever the command line does not give keeps its saved value
RESUME_MAY_CHANGE = {"resume", "overwrite", "out_dir", "device", "dtype", "compile", "log_interval", "stop_after_s"}


def saved_config(ckpt, path):
    """The TrainConfig a checkpoint was trained with; one that names options this version lacks is a UserError."""
    saved = ckpt["config"]
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise UserError(f"{path} was written by another version of this project (options {', '.join(unknown)} are "
                        f"unknown here): use that version, or start the run again")
    return TrainConfig(**saved)


def checkpoint_to_resume(config, given, kind):
    """(config, checkpoint) of the run --resume continues: the saved config is kept, the options the command line
    gives replace it only where RESUME_MAY_CHANGE allows, and the folder is the one it was found in."""
    path = os.path.join(config.out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume: {config.out_dir} holds no checkpoint to continue (no ckpt.pt): start the run "
                        f"without --resume")
    ckpt = checked_checkpoint(path)
    if ckpt["kind"] != kind:
        script = ckpt.get("objective", f"train_{ckpt['kind']}") + ".py"
        raise UserError(f"{path} holds a run of kind '{ckpt['kind']}': resume it with {script}")
    saved = saved_config(ckpt, path)
    changed = [k for k in given - RESUME_MAY_CHANGE if getattr(saved, k) != getattr(config, k)]
    if changed:
        raise UserError(f"--resume continues the saved config; these options differ from it: "
                        f"{', '.join('--' + k for k in sorted(changed))}")
    for k in given | {"resume", "overwrite", "out_dir"}:
        setattr(saved, k, getattr(config, k))
    return saved, ckpt


# ----------------------------------------------------------------------------- files the experiments read back

NUMBER = (int, float)


def shape_mismatch(value, shape, where="the file"):
    """Where `value` departs from `shape`, in words, or None. A shape is a type (or a tuple of types), a dict
    {key: shape} (those keys at least), or [shape] (a list whose every item has that shape)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is not a JSON object"
        for key, inner in shape.items():
            if key not in value:
                return f"{where} lacks '{key}'"
            problem = shape_mismatch(value[key], inner, f"{where}['{key}']")
            if problem:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next((p for i, item in enumerate(value) if (p := shape_mismatch(item, shape[0], f"{where}[{i}]"))),
                    None)
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        return f"{where} is {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}"
    return None


def check_plot_path(option, path):
    """A picture's path, checked before any work: a PNG file, not a folder."""
    if os.path.isdir(path):
        raise UserError(f"--{option} {path} is a folder: give a file path ending in .png")
    if not path.lower().endswith(".png"):
        raise UserError(f"--{option} {path}: the plot is a PNG picture: give a path ending in .png")

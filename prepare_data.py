"""
Turn text into token files: data/<name>/train.bin, val.bin (numpy uint16) and meta.json.

    python prepare_data.py                                  # embedded default corpus, byte tokens, offline
    python prepare_data.py --tokenizer gpt2                 # same text, GPT-2 BPE (downloads its file once)
    python prepare_data.py --dataset shakespeare            # downloads Tiny Shakespeare (also tinystories, c4)
    python prepare_data.py --input my.txt --name mine       # any text file

The default corpus is CPython's own documentation text (pydoc_data.topics, ~0.47 MB of English), so the
project runs with no network at all.
"""
import gzip
import hashlib
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import tiktoken

from cli import UserError, parse_args, run_cli


@dataclass
class PrepareConfig:
    tokenizer: str = "bytes"  # bytes | gpt2
    dataset: str = "default"  # default (embedded, offline) | shakespeare | tinystories | c4
    input: str = ""  # a UTF-8 text file to use instead of --dataset
    name: str = ""  # folder under data_dir (default: the dataset or input file name, + _gpt2 for gpt2)
    data_dir: str = "data"
    val_fraction: float = 0.1  # held-out tail when a source has no val split
    max_train_tokens: int = 0  # keep only the first N train tokens (0: all)
    max_download_mb: float = 100.0  # cap on each downloaded file
    cache_dir: str = os.path.join("data", "_downloads")
    base_url: str = ""  # fetch the dataset's files from this server instead (a mirror)


# ----------------------------------------------------------------------------- tokenizers

def get_tokenizer(name):
    """A tiktoken Encoding: 'bytes' (256 byte values, offline) or 'gpt2' (BPE, downloaded once and cached)."""
    if name == "bytes":
        return tiktoken.Encoding(
            name="bytes",
            pat_str=r"[\s\S]",  # no pre-splitting needed: every token is one byte
            mergeable_ranks={bytes([i]): i for i in range(256)},
            special_tokens={},
        )
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise UserError(f"could not load the GPT-2 BPE file (tiktoken downloads it once and caches it): "
                            f"{type(e).__name__}; offline, use --tokenizer bytes") from None
    raise UserError(f"unknown tokenizer '{name}': choose bytes or gpt2")


def decode_token(enc, token):
    """The bytes of one token (for streaming and for drawing the diffusion trajectory)."""
    return enc.decode_single_token_bytes(token)


# ----------------------------------------------------------------------------- sources

def default_corpus_text():
    """CPython's pydoc topics, in sorted key order so the text is the same on every run."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


# name -> (train url, val url or None, format); without a val url the last 10% of train is held out
DATASETS = {
    "shakespeare": ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    None, "text"),
    "tinystories": ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
                    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
                    "text"),
    "c4": ("https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-train.00000-of-01024.json.gz",
           "https://huggingface.co/datasets/allenai/c4/resolve/main/en/c4-validation.00000-of-00008.json.gz",
           "jsonl.gz"),
}


def download(url, dest, max_bytes=None):
    """Fetch url into dest (once; a later call reuses the file), showing progress. Stops after max_bytes:
    the papers' protocol needs only a capped prefix of the big shards."""
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    part = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            if max_bytes:
                total = min(total, max_bytes) if total else max_bytes
            done, t0 = 0, time.time()
            while not max_bytes or done < max_bytes:
                chunk = response.read(min(1 << 20, max_bytes - done) if max_bytes else 1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                pct = f"{100 * done / total:5.1f}%" if total else ""
                mb_s = done / 1e6 / max(time.time() - t0, 1e-6)
                print(f"\r  {os.path.basename(dest)}: {done / 1e6:8.1f} MB {pct} {mb_s:6.1f} MB/s", end="", flush=True)
            print()
    except OSError as e:
        raise UserError(f"could not download {url} ({e}); check the network, or use --input FILE") from None
    os.replace(part, dest)  # only a finished download is cached under its real name
    return dest


def read_text(path, fmt):
    """Text of a downloaded file; jsonl.gz holds one JSON document per line with a 'text' field (C4)."""
    if fmt == "text":
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="ignore")  # a capped download may cut a character
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        try:
            for line in f:
                try:
                    docs.append(json.loads(line)["text"])
                except (ValueError, KeyError):
                    break  # the last line of a capped download is cut
        except EOFError:
            pass  # a capped download ends mid gzip stream
    return "\n\n".join(docs)


# ----------------------------------------------------------------------------- writing

def write_split(tokens, path):
    arr = np.asarray(tokens, dtype=np.uint16)
    tmp = path + ".tmp"
    arr.tofile(tmp)
    os.replace(tmp, path)
    return len(arr)


def drop_repeated_paragraphs(val_text, train_text):
    """val_text without the paragraphs that also occur verbatim in train_text (pydoc's topics repeat passages:
    'compound' holds the text of 'while' and 'with'), so validation measures generalisation, not recall."""
    seen = set(train_text.split("\n\n"))
    paragraphs = val_text.split("\n\n")
    kept = [p for p in paragraphs if p not in seen or not p.strip()]
    return "\n\n".join(kept), len(paragraphs) - len(kept)


def prepare(train_text, val_text, out_dir, tokenizer, source, max_train_tokens=0):
    """Tokenize and write train.bin, val.bin and meta.json; returns the meta dict."""
    val_text, dropped = drop_repeated_paragraphs(val_text, train_text)
    enc = get_tokenizer(tokenizer)
    if enc.n_vocab + 1 > 65536:
        raise UserError(f"tokenizer {tokenizer} has {enc.n_vocab} tokens: too many for uint16 files")
    os.makedirs(out_dir, exist_ok=True)
    train = enc.encode_ordinary(train_text)
    val = enc.encode_ordinary(val_text)
    if max_train_tokens:
        train = train[:max_train_tokens]
    if not train or not val:
        raise UserError(f"the text gives {len(train)} train and {len(val)} val tokens: both splits need text")
    meta = {
        "tokenizer": tokenizer,
        "n_vocab": enc.n_vocab,
        "mask_id": enc.n_vocab,  # one extra id after the tokenizer's tokens
        "vocab_size_with_mask": enc.n_vocab + 1,
        "train_tokens": write_split(train, os.path.join(out_dir, "train.bin")),
        "val_tokens": write_split(val, os.path.join(out_dir, "val.bin")),
        "dtype": "uint16",
        "source": source,
        "val_paragraphs_dropped_as_repeats_of_train": dropped,
        "sha256": hashlib.sha256((train_text + val_text).encode("utf-8")).hexdigest(),
    }
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    return meta


def split_tail(text, val_fraction):
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def main(argv=None):
    args = PrepareConfig()
    parse_args(sys.argv[1:] if argv is None else argv, args, doc=__doc__)
    if args.tokenizer not in ("bytes", "gpt2"):
        raise UserError(f"--tokenizer {args.tokenizer}: choose bytes or gpt2")
    if args.dataset not in ["default", *DATASETS]:
        raise UserError(f"--dataset {args.dataset}: choose default, {', '.join(DATASETS)}, or use --input FILE")
    if not 0 < args.val_fraction < 1:
        raise UserError("--val_fraction must be between 0 and 1")

    if args.input:
        if not os.path.isfile(args.input):
            raise UserError(f"--input {args.input}: no such file")
        with open(args.input, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        train_text, val_text = split_tail(text, args.val_fraction)
        source, name = os.path.abspath(args.input), os.path.splitext(os.path.basename(args.input))[0]
    elif args.dataset == "default":
        train_text, val_text = split_tail(default_corpus_text(), args.val_fraction)
        source, name = "pydoc_data.topics (CPython documentation text)", "default"
    else:
        train_url, val_url, fmt = DATASETS[args.dataset]
        max_bytes = int(args.max_download_mb * 1e6)
        files = []
        for url in (train_url, val_url):
            if url is None:
                continue
            if args.base_url:
                url = args.base_url.rstrip("/") + "/" + url.rsplit("/", 1)[1]
            name = f"{args.dataset}-{args.max_download_mb:g}MB-" + url.rsplit("/", 1)[1]
            files.append(download(url, os.path.join(args.cache_dir, name), max_bytes))
        texts = [read_text(path, fmt) for path in files]
        if len(texts) == 1:
            train_text, val_text = split_tail(texts[0], args.val_fraction)
        else:
            train_text, val_text = texts
            val_text = val_text[:max(len(train_text) // 10, 1)]  # a val split ~10% of train is plenty
        source, name = f"{args.dataset}: {train_url}", args.dataset

    name = args.name or (name if args.tokenizer == "bytes" else f"{name}_{args.tokenizer}")
    out_dir = os.path.join(args.data_dir, name)
    meta = prepare(train_text, val_text, out_dir, args.tokenizer, source, args.max_train_tokens)
    print(f"wrote {out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({args.tokenizer}, vocab {meta['n_vocab']} + [MASK] = id {meta['mask_id']})")
    return out_dir


if __name__ == "__main__":
    run_cli(main)

"""
Turn text into token files: data/<name>/train.bin, val.bin (numpy uint16) and meta.json.

    python prepare_data.py                                  # embedded default corpus, byte tokens, offline
    python prepare_data.py --tokenizer bpe --vocab_size 1024   # same text, a BPE trained here on the train split
    python prepare_data.py --dataset python --tokenizer bpe --vocab_size 8192   # CPython's own source, offline
    python prepare_data.py --tokenizer gpt2                 # GPT-2's BPE (downloads its file once)
    python prepare_data.py --dataset shakespeare            # downloads Tiny Shakespeare (also tinystories, c4)
    python prepare_data.py --input my.txt --name mine       # any text file

Two corpora need no network: the default, CPython's own documentation text (pydoc_data.topics, ~0.47 MB of
English), and `python`, the running interpreter's standard-library source (~12 MB; files are documents, split
into train and val by whole files, each ending with an end-of-text token). A `bpe` tokenizer is trained on the
train split only and saved beside the data (tokenizer.py).
"""
import gzip
import hashlib
import json
import os
import platform
import random
import sysconfig
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from config import option
from tokenizer import RANKS_FILE, eot_id_for, make_encoding, save_ranks, train_bpe


@dataclass
class PrepareConfig:
    # bytes: 256 byte tokens; bpe: trained here on the train split, offline; gpt2: GPT-2's BPE, downloaded
    tokenizer: str = option("bytes", choices=("bytes", "bpe", "gpt2"))
    vocab_size: int = option(8192, low=256, high=65534)  # bpe only: tokens in the trained BPE (256 bytes + merges)
    # default and python are offline; the others are downloaded
    dataset: str = option("default", choices=("default", "python", "shakespeare", "tinystories", "c4"))
    input: str = ""  # a UTF-8 text file to use instead of --dataset
    name: str = ""  # folder under data_dir (default: the dataset or input file name, + _gpt2 / _bpe<vocab>)
    data_dir: str = "data"
    val_fraction: float = option(0.1, above=0, below=1)  # held-out share (the tail, or whole files for python)
    split_seed: int = option(1234, low=0)  # python: which files go to val
    python_root: str = ""  # python: the Lib/ folder to read (default: the running interpreter's)
    max_train_tokens: int = option(0, low=0)  # keep only the first N train tokens (0: all)
    max_download_mb: float = option(100.0, above=0)  # cap on each downloaded file
    cache_dir: str = os.path.join("data", "_downloads")
    base_url: str = ""  # fetch the dataset's files from this server instead (a mirror)
    # replace a folder that holds other data (one prepared from the same inputs is kept without it)
    overwrite: bool = False


# ----------------------------------------------------------------------------- sources

def default_corpus_text():
    """CPython's pydoc topics, in sorted key order so the text is the same on every run."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


SKIPPED_FOLDERS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def python_source_files(root=None):
    """(path relative to root, text) of every .py file of the interpreter's standard library (`Lib/`), test
    folders and site-packages excluded, in sorted order; identical files are kept once."""
    root = root or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise ValueError(f"--python_root {root}: no such folder")
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIPPED_FOLDERS)
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            if text.strip() and text not in seen:
                seen.add(text)
                files.append((os.path.relpath(os.path.join(folder, name), root), text))
    if not files:
        raise ValueError(f"no Python source found under {root}")
    return files


def split_files(files, val_fraction, seed):
    """Whole files to train and val: a seeded shuffle, the first val_fraction of the files to val."""
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(files) * val_fraction))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [files[i] for i in train], [files[i] for i in val]


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
        raise ValueError(f"could not download {url} ({e}); check the network, or use --input FILE") from None
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
    tmp = f"{path}.{os.getpid()}.tmp"  # this process's own
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


def build_tokenizer(tokenizer, train_docs, vocab_size, documents, out_dir):
    """The Encoding for the data, and meta entries that describe it. A bpe is trained here, on the train
    documents only, and its ranks are saved beside the data."""
    meta, ranks_text = {"tokenizer": tokenizer}, None
    if tokenizer == "bpe":
        t0 = time.time()
        ranks = train_bpe(train_docs, vocab_size)
        os.makedirs(out_dir, exist_ok=True)
        ranks_text = save_ranks(ranks, os.path.join(out_dir, RANKS_FILE))
        meta.update(ranks_file=RANKS_FILE, ranks_sha256=hashlib.sha256(ranks_text.encode()).hexdigest(),
                    bpe_vocab_size=len(ranks), bpe_train_seconds=round(time.time() - t0, 1))
    enc = make_encoding(tokenizer, ranks_text)
    if documents:
        meta["eot_id"] = eot_id_for(tokenizer, enc.n_vocab)
        enc = make_encoding(tokenizer, ranks_text, meta["eot_id"])
    return enc, meta


def tokenize(enc, docs, eot_id):
    """The token ids of docs, concatenated; each document ends with eot_id when there is one."""
    ids = []
    for doc in enc.encode_ordinary_batch(docs):
        ids += doc + ([eot_id] if eot_id is not None else [])
    return ids


def prepare(train_docs, val_docs, out_dir, tokenizer, source, max_train_tokens=0, vocab_size=8192,
            documents=False, extra_meta=None, val_names=None):
    """Tokenize and write train.bin, val.bin and meta.json (last: a folder with a meta.json is whole); returns the
    meta dict. train_docs and val_docs are strings or lists of documents; with documents=True every document ends
    with an end-of-text token. val_names: the held-out files' names, for val_files.txt."""
    train_docs = [train_docs] if isinstance(train_docs, str) else list(train_docs)
    val_docs = [val_docs] if isinstance(val_docs, str) else list(val_docs)
    dropped = 0
    if not documents:  # one running text: drop val paragraphs repeated from train
        val_text, dropped = drop_repeated_paragraphs("".join(val_docs), "".join(train_docs))
        val_docs = [val_text]
    enc, meta = build_tokenizer(tokenizer, train_docs, vocab_size, documents, out_dir)
    if enc.n_vocab + 1 > 65536:
        raise ValueError(f"tokenizer {tokenizer} has {enc.n_vocab} tokens: too many for uint16 files")
    train = tokenize(enc, train_docs, meta.get("eot_id"))
    val = tokenize(enc, val_docs, meta.get("eot_id"))
    if max_train_tokens:
        train = train[:max_train_tokens]
    if not train or not val:
        raise ValueError(f"the text gives {len(train)} train and {len(val)} val tokens: both splits need text")
    os.makedirs(out_dir, exist_ok=True)
    meta.update({
        "n_vocab": enc.n_vocab,
        "train_tokens": write_split(train, os.path.join(out_dir, "train.bin")),
        "val_tokens": write_split(val, os.path.join(out_dir, "val.bin")),
        "dtype": "uint16",
        "source": source,
        "val_paragraphs_dropped_as_repeats_of_train": dropped,
        "sha256": hashlib.sha256("".join(train_docs + val_docs).encode("utf-8")).hexdigest(),
        **(extra_meta or {}),
    })
    if val_names is not None:  # which files are held out, for anyone who wants to check the split
        with open(os.path.join(out_dir, "val_files.txt"), "w") as f:
            f.write("\n".join(val_names) + "\n")
    tmp = os.path.join(out_dir, f"meta.json.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "meta.json"))
    return meta


def read_input_text(path):
    """The text of a UTF-8 file; a file that is not text (NUL bytes, or more than 1% of bytes that are not UTF-8)
    is a one-line error rather than a corpus of replacement characters."""
    with open(path, "rb") as f:
        raw = f.read()
    if b"\x00" in raw:
        raise ValueError(f"--input {path}: the file holds NUL bytes, so it is not text (a binary file?): "
                        f"give a UTF-8 text file")
    text = raw.decode("utf-8", errors="replace")
    undecodable = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if undecodable > 0.01 * max(len(raw), 1):
        raise ValueError(f"--input {path}: {undecodable:,} of its {len(raw):,} bytes are not UTF-8: give a UTF-8 "
                        f"text file (convert it with iconv, for example)")
    return text


def split_tail(text, val_fraction):
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def read_python_corpus(args):
    """Train and val documents of the standard-library source, and meta entries that say what they are."""
    train_files, val_files = split_files(python_source_files(args.python_root or None), args.val_fraction,
                                         args.split_seed)
    extra = {"python_version": platform.python_version(), "train_files": len(train_files),
             "val_files": len(val_files), "split_seed": args.split_seed}
    return [t for _, t in train_files], [t for _, t in val_files], extra, [p for p, _ in val_files]


def read_downloaded(args):
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
        return split_tail(texts[0], args.val_fraction)
    return texts[0], texts[1][:max(len(texts[0]) // 10, 1)]  # a val split ~10% of train is plenty


@dataclass
class Corpus:
    """The documents read for --dataset or --input, and what prepare() records about them."""
    train_docs: object  # a string, or a list of documents
    val_docs: object
    source: str
    name: str  # the data folder's name before the tokenizer's suffix
    documents: bool = False  # every document ends with an end-of-text token
    extra: dict = None  # more entries for meta.json
    val_names: list = None  # the held-out files, for val_files.txt


def read_corpus(args):
    """The text the options name: --input's file, or a --dataset (embedded, the Python source, or downloaded)."""
    if args.input:
        train_docs, val_docs = split_tail(read_input_text(args.input), args.val_fraction)
        return Corpus(train_docs, val_docs, os.path.abspath(args.input),
                      os.path.splitext(os.path.basename(args.input))[0])
    if args.dataset == "default":
        train_docs, val_docs = split_tail(default_corpus_text(), args.val_fraction)
        return Corpus(train_docs, val_docs, "pydoc_data.topics (CPython documentation text)", "default")
    if args.dataset == "python":
        train_docs, val_docs, extra, val_names = read_python_corpus(args)
        return Corpus(train_docs, val_docs, f"CPython {extra['python_version']} standard-library source (Lib/)",
                      "python", True, extra, val_names)
    train_docs, val_docs = read_downloaded(args)
    return Corpus(train_docs, val_docs, f"{args.dataset}: {DATASETS[args.dataset][0]}", args.dataset)


def folder_for(args, corpus):
    suffix = {"bytes": "", "gpt2": "_gpt2", "bpe": f"_bpe{args.vocab_size}"}[args.tokenizer]
    return os.path.join(args.data_dir, args.name or corpus.name + suffix)


def report(args, meta, out_dir, seconds):
    bpe = f", BPE trained in {meta['bpe_train_seconds']}s" if args.tokenizer == "bpe" else ""
    print(f"wrote {out_dir}: {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens "
          f"({args.tokenizer}, vocab {meta['n_vocab']} + [MASK] = id {meta['n_vocab']}{bpe}; {seconds:.1f}s)")


def main(args):
    """Read the corpus and write its folder (plainly: lab/launch.py's `prepare` adds the lock, the whole-folder
    switch and the checks)."""
    t0 = time.time()
    corpus = read_corpus(args)
    out_dir = folder_for(args, corpus)
    meta = prepare(corpus.train_docs, corpus.val_docs, out_dir, args.tokenizer, corpus.source, args.max_train_tokens,
                   args.vocab_size, corpus.documents, corpus.extra, corpus.val_names)
    report(args, meta, out_dir, time.time() - t0)
    return out_dir


if __name__ == "__main__":  # the command line: lab/ checks the options, locks the folder and replaces it whole
    from lab import launch
    launch.prepare()

"""
How long the project's BPE takes to train, and how well it compresses, on the offline Python-source corpus.

    python bench/bpe_speed.py                         # vocab 8192 on the train split (~10.7 MB on Python 3.11)
    python bench/bpe_speed.py --vocab_sizes=1024,8192 --repeats=3

Prints, per vocabulary size: the pre-split time and the whole training time, pre-split included (min over repeats),
bytes per token on the val split, and that the trained BPE round-trips the val text.
"""
import os
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import prepare_data  # noqa: E402
from lab.errors import UserError, run_cli  # noqa: E402
from config import option  # noqa: E402
from lab.checks import list_items, parse_checked as parse_args  # noqa: E402
from tokenizer import make_encoding, piece_counts, ranks_to_text, train_bpe  # noqa: E402


@dataclass
class BenchConfig:
    vocab_sizes: str = option("8192", items=int, low=256, high=65534)
    repeats: int = option(1, low=1)
    val_fraction: float = option(0.1, above=0, below=1)
    split_seed: int = option(1234, low=0)


def main():
    config = BenchConfig()
    parse_args(sys.argv[1:], config, doc=__doc__)
    sizes = list_items("vocab_sizes", config.vocab_sizes, int)
    if not sizes:
        raise UserError("--vocab_sizes must name at least one size")
    train, val = prepare_data.split_files(prepare_data.python_source_files(), config.val_fraction, config.split_seed)
    train_docs, val_text = [t for _, t in train], "".join(t for _, t in val)
    mb = sum(len(t.encode()) for t in train_docs) / 1e6
    val_mb = len(val_text.encode()) / 1e6
    print(f"{os.cpu_count()} CPUs | train split {mb:.1f} MB in {len(train_docs)} files | val {val_mb:.1f} MB")
    print(f"{'vocab':>6} {'pre-split s':>11} {'train s':>8} {'bytes/token (val)':>18} {'round trip':>10}")
    for size in sizes:
        split_s, train_s = [], []
        for _ in range(config.repeats):
            t0 = time.perf_counter()
            piece_counts(train_docs)
            split_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ranks = train_bpe(train_docs, size)
            train_s.append(time.perf_counter() - t0)
        enc = make_encoding("bpe", ranks_to_text(ranks))
        ids = enc.encode_ordinary(val_text)
        print(f"{size:>6} {min(split_s):>11.1f} {min(train_s):>8.1f} {len(val_text.encode()) / len(ids):>18.2f} "
              f"{str(enc.decode(ids) == val_text):>10}")


if __name__ == "__main__":
    run_cli(main)

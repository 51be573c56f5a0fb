"""
How far a run's U is from the val split in its token marginal: the val split's cross-entropy under the unigram of
the U training tokens (add-one smoothed) minus the val split's own unigram entropy, for U as the split's first
tokens and as pieces of many documents (--unique_from=pieces).

    python experiments/unigram_shift.py --data_dir=data --dataset=python_bpe1024 --us=37500,150000 --seeds=0,1
"""
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
from config import TrainConfig, option  # noqa: E402
from data import training_data  # noqa: E402
from lab.checks import check_training_data, list_items, parse_checked  # noqa: E402
from lab.errors import run_cli  # noqa: E402


@dataclass
class ShiftConfig:
    data_dir: str = "data"
    dataset: str = "python_bpe1024"
    us: str = option("37500,150000", items=int, low=2)  # the U values
    seeds: str = option("0,1", items=int, low=0)  # data_seed of the pieces
    piece_tokens: int = option(512, low=2)


def shift(config, unique_tokens, unique_from, data_seed):
    """(val cross-entropy under U's unigram, val's own entropy, U's documents or pieces), in nats."""
    train = TrainConfig(data_dir=config.data_dir, dataset=config.dataset, unique_tokens=unique_tokens,
                        unique_from=unique_from, piece_tokens=config.piece_tokens, data_seed=data_seed,
                        epoch_order="documents")
    check_training_data(train, None)
    meta, windows, val = training_data(train)
    p = np.bincount(np.asarray(windows.tokens, dtype=np.int64), minlength=meta["n_vocab"]) + 1.0
    q = np.bincount(np.asarray(val, dtype=np.int64), minlength=meta["n_vocab"]).astype(float)
    p, q = p / p.sum(), q / q.sum()
    return float(-(q * np.log(p)).sum()), float(-(q[q > 0] * np.log(q[q > 0])).sum()), len(windows.documents)


def main():
    config = ShiftConfig()
    parse_checked(sys.argv[1:], config, doc=__doc__)
    for u in list_items("us", config.us, int):
        for how, seed in [("start", 0)] + [("pieces", s) for s in list_items("seeds", config.seeds, int)]:
            cross, own, parts = shift(config, u, how, seed)
            print(f"U = {u:,}, {how}" + (f" (data_seed {seed})" if how == "pieces" else "") + f": val cross-entropy "
                  f"under U's unigram {cross:.3f}, val's own entropy {own:.3f}, shift {cross - own:.3f} nats; "
                  f"{parts} {'pieces' if how == 'pieces' else 'documents'}")


if __name__ == "__main__":
    run_cli(main)

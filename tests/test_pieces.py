"""A representative U: pieces of many train documents instead of the split's first U tokens (issue: the first
37.5K tokens of the Python split are ~10 files). Seeded apart from the training seed, exact, and train-only."""
import numpy as np
import pytest

import train_ar
from config import TrainConfig
from conftest import make_tiny_documents, run_training, tiny_args
from data import document_spans, load_meta, load_tokens, training_data


@pytest.fixture
def docs(tmp_path):
    return make_tiny_documents(tmp_path)


def config(data_dir, **options):
    return TrainConfig(**{"data_dir": data_dir, "dataset": "docs", "block_size": 16, "unique_from": "pieces",
                          "epoch_order": "documents", **options})


def test_pieces_are_exact_seeded_apart_from_the_training_seed_and_from_many_train_documents(docs):
    train = np.asarray(load_tokens(f"{docs}/docs", "train"))
    spans = document_spans(train, load_meta(f"{docs}/docs")["eot_id"])
    _, a, _ = training_data(config(docs, unique_tokens=1000, piece_tokens=40))
    _, b, _ = training_data(config(docs, unique_tokens=1000, piece_tokens=40, seed=7))  # another training seed
    _, c, _ = training_data(config(docs, unique_tokens=1000, piece_tokens=40, data_seed=1))
    assert len(a.tokens) == 1000 and np.array_equal(a.tokens, b.tokens) and not np.array_equal(a.tokens, c.tokens)
    pieces = a.documents
    assert len(pieces) >= 1000 // 40 and pieces[-1][1] == 1000
    homes = set()
    for s, e in pieces:  # each piece is one slice of one train document: found there, inside its bounds
        piece = a.tokens[s:e]
        home = [i for i, (ds, de) in enumerate(spans)
                if any(np.array_equal(train[o:o + len(piece)], piece) for o in range(ds, de - len(piece) + 1))]
        assert home, "a piece that is no slice of a train document"
        homes.add(home[0])
    assert len(homes) >= len(pieces) - 2  # one piece a document (two identical short documents may share a home)
    _, first, _ = training_data(config(docs, unique_tokens=1000, unique_from="start"))
    assert np.array_equal(first.tokens, train[:1000])  # the default is unchanged


def test_a_run_on_pieces_logs_where_its_u_came_from_and_a_u_too_large_for_them_is_one_line(docs, tmp_path):
    out = str(tmp_path / "run")
    args = [a for a in tiny_args(docs, out, "--max_iters=4", "--eval_interval=2") if a != "--dataset=tiny"]
    run_training(train_ar, args + ["--dataset=docs", "--unique_tokens=600", "--unique_from=pieces",
                                   "--piece_tokens=30", "--epoch_order=documents"])
    import json
    record = json.loads(open(out + "/log.jsonl").readline())
    assert record["unique_tokens"] == 600 and record["unique_from"] == "pieces"
    with pytest.raises(ValueError, match="is more than pieces of 2 tokens from the 54 train documents"):
        run_training(train_ar, args + ["--dataset=docs", "--unique_tokens=600", "--unique_from=pieces",
                                       "--piece_tokens=2", "--overwrite"])

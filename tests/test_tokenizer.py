"""The BPE trained by the project, the Python-source corpus and the documents epoch order."""
import json
import os
from collections import Counter

import numpy as np
import pytest

from lab import launch
import tiktoken
import tiktoken.load

import prepare_data
from conftest import tiny_text
from tokenizer import (GPT2_PATTERN, RANKS_FILE, make_encoding, piece_counts, ranks_to_text, save_ranks,
                       tokenizer_from_meta, train_bpe)
from data import TrainingWindows, document_spans

HARD_TEXT = ("héllo wörld — ünïcode ✓ 日本語のテキスト 🙂\n\n\n\tdef f(x):\n        return x  \n\n"
             "   spaces    and\ttabs\r\n'quoted' it's we'll 12345 3.14159\n\n")


def corpus():
    import textwrap  # a stdlib module's source: varied English and Python, the same on every run of a Python
    with open(textwrap.__file__, encoding="utf-8") as f:
        return tiny_text(2000) + HARD_TEXT * 20 + f.read()


def naive_bpe(text, vocab_size):
    """The textbook algorithm: recount every pair over all pieces before each merge (slow, obviously right)."""
    ranks = {bytes([i]): i for i in range(256)}
    token_bytes = [bytes([i]) for i in range(256)]
    words, freqs = piece_counts([text])
    while len(ranks) < vocab_size:
        counts = Counter()
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                counts[pair] += freq
        a, b = min(counts, key=lambda p: (-counts[p], token_bytes[p[0]], token_bytes[p[1]]))
        merged = token_bytes[a] + token_bytes[b]
        if merged not in ranks:
            ranks[merged] = len(token_bytes)
            token_bytes.append(merged)
        new = ranks[merged]
        for i, word in enumerate(words):
            out, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and (word[j], word[j + 1]) == (a, b):
                    out.append(new)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            words[i] = out
    return ranks


def test_incremental_bpe_equals_the_textbook_algorithm():
    text = corpus()
    assert train_bpe(text, 600) == naive_bpe(text, 600)


def test_bpe_round_trips_any_text_and_has_exactly_the_vocab_asked_for():
    ranks = train_bpe(corpus(), 500)
    assert len(ranks) == 500 and sorted(ranks.values()) == list(range(500))
    enc = make_encoding("bpe", ranks_to_text(ranks))
    assert enc.n_vocab == 500
    for text in [HARD_TEXT, "", "\n\n\n", "      ", "never seen: ☃ ∑ ÿ \x00 \u2028", corpus()]:
        assert enc.decode(enc.encode_ordinary(text)) == text
    # it compresses the text it was trained on: far fewer tokens than bytes
    assert len(enc.encode_ordinary(corpus())) < 0.5 * len(corpus().encode())


def test_bpe_is_deterministic_and_its_ranks_file_is_tiktokens(tmp_path, monkeypatch):
    a, b = train_bpe(corpus(), 400), train_bpe(corpus(), 400)
    assert a == b and list(a.items()) == list(b.items())
    path = str(tmp_path / RANKS_FILE)
    save_ranks(a, path)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    assert tiktoken.load.load_tiktoken_bpe(path) == a  # tiktoken's own reader gives the same ranks
    saved = tiktoken.Encoding("saved", pat_str=GPT2_PATTERN, special_tokens={},
                              mergeable_ranks=tiktoken.load.load_tiktoken_bpe(path))
    mine = make_encoding("bpe", open(path).read())
    assert saved.encode_ordinary(HARD_TEXT + corpus()) == mine.encode_ordinary(HARD_TEXT + corpus())


def test_too_small_text_for_the_vocab_is_a_user_error():
    with pytest.raises(ValueError, match="smaller --vocab_size"):
        train_bpe("abab", 300)


def test_bpe_prepare_never_trains_on_val_and_checkpoint_free_decoding(tmp_path):
    train_text = corpus()
    out_a, out_b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare_data.prepare(train_text, "zebra zebra zebra " * 500, out_a, "bpe", "test", vocab_size=400)
    prepare_data.prepare(train_text, "quokka! " * 700, out_b, "bpe", "test", vocab_size=400)
    ranks_a = open(os.path.join(out_a, RANKS_FILE)).read()
    assert ranks_a == open(os.path.join(out_b, RANKS_FILE)).read()  # the val text changed nothing
    assert ranks_a == ranks_to_text(train_bpe([train_text], 400))
    meta = json.load(open(os.path.join(out_a, "meta.json")))
    assert meta["tokenizer"] == "bpe" and meta["n_vocab"] == 400 and "eot_id" not in meta
    enc = tokenizer_from_meta(meta, out_a)
    train = np.fromfile(os.path.join(out_a, "train.bin"), dtype=np.uint16)
    assert enc.decode(train.tolist()) == train_text


def test_documents_end_with_an_end_of_text_token(tmp_path):
    docs = ["first doc\n", "second\n", "third one\n"]
    for tokenizer in ["bytes", "bpe"]:
        out = str(tmp_path / tokenizer)
        meta = prepare_data.prepare(docs[:2] * 40, docs[2:], out, tokenizer, "t", vocab_size=260, documents=True)
        enc = tokenizer_from_meta(meta, out)
        eot = meta["eot_id"]
        assert eot == enc.n_vocab - 1 and meta["n_vocab"] == enc.n_vocab
        train = np.fromfile(os.path.join(out, "train.bin"), dtype=np.uint16).tolist()
        assert train.count(eot) == 80 and train[-1] == eot
        assert enc.decode(train) == "<|endoftext|>".join(docs[:2] * 40) + "<|endoftext|>"


def fake_stdlib(root):
    """A small Lib/ tree with the folders the corpus must skip and a duplicate file."""
    for path, text in [("os.py", "import sys\n"), ("json/__init__.py", "x = 1\n"), ("json/decoder.py", "y = 2\n"),
                       ("test/test_os.py", "TEST\n"), ("json/tests/t.py", "TEST\n"),
                       ("site-packages/pkg.py", "THIRD PARTY\n"), ("idlelib/idle_test/x.py", "TEST\n"),
                       ("copy_of_os.py", "import sys\n"), ("empty.py", "\n"), ("notes.txt", "not python\n")] + \
            [(f"pkg{i}/mod.py", f"value = {i}\n" * (i + 1)) for i in range(20)]:
        os.makedirs(os.path.dirname(os.path.join(root, path)) or root, exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(text)


def test_python_corpus_skips_tests_and_splits_whole_files_deterministically(tmp_path):
    fake_stdlib(str(tmp_path / "Lib"))
    files = prepare_data.python_source_files(str(tmp_path / "Lib"))
    names = [name for name, _ in files]
    assert ("os.py" in names) != ("copy_of_os.py" in names) and "empty.py" not in names  # a duplicate kept once
    assert not any("TEST" in t or "THIRD" in t for _, t in files) and len(files) == 23
    train, val = prepare_data.split_files(files, 0.2, seed=7)
    assert (train, val) == prepare_data.split_files(files, 0.2, seed=7)
    assert {n for n, _ in train}.isdisjoint({n for n, _ in val}) and len(train) + len(val) == len(files)
    assert len(val) == 5 and prepare_data.split_files(files, 0.2, seed=8)[1] != val
    out = launch.prepare_run(["--dataset=python", f"--python_root={tmp_path / 'Lib'}", "--val_fraction=0.2",
                             "--split_seed=7", f"--data_dir={tmp_path / 'data'}"])
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert (meta["train_files"], meta["val_files"], meta["eot_id"]) == (18, 5, 256)
    assert open(os.path.join(out, "val_files.txt")).read().split() == [n for n, _ in val]


def test_the_real_standard_library_split_is_stable():
    files = prepare_data.python_source_files()
    assert len(files) > 300 and sum(len(t) for _, t in files) > 5e6
    assert not any(os.sep + "test" + os.sep in os.sep + n or n.startswith("site-packages") for n, _ in files)
    train, val = prepare_data.split_files(files, 0.1, 1234)
    assert [n for n, _ in val] == [n for n, _ in prepare_data.split_files(files, 0.1, 1234)[1]]
    assert {n for n, _ in train}.isdisjoint({n for n, _ in val})


def test_documents_order_sees_every_token_once_per_epoch_with_moving_boundaries():
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(0, 256, rng.integers(5, 90)), 256) for _ in range(40)]
    tokens = np.concatenate(docs).astype(np.uint16)
    spans = document_spans(tokens, 256)
    assert len(spans) == 40 and spans[-1][1] == len(tokens)
    w = TrainingWindows(tokens, 16, seed=3, documents=spans)
    layouts = []
    for epoch in range(3):
        batch = w.get(range(epoch * w.n, (epoch + 1) * w.n))
        layout, starts = w.epoch_layout(epoch)
        assert sorted(starts.tolist()) == [j * 16 for j in range(w.n)]  # each window once
        assert sorted(map(tuple, batch.tolist())) == sorted(tuple(layout[s:s + 17].tolist()) for s in starts)
        # the epoch's text is the documents, each whole, in some order: every token exactly once
        pieces = np.split(layout, np.flatnonzero(layout == 256) + 1)[:-1]
        assert sorted(map(tuple, pieces)) == sorted(tuple(d.tolist()) for d in docs)
        layouts.append(layout)
    assert not np.array_equal(layouts[0], layouts[1])  # the window boundaries move between epochs



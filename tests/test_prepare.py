import gzip
import http.server
import json
import os
import threading

import numpy as np
import pytest

from lab import launch
import tiktoken

import prepare_data
from tokenizer import make_encoding as get_tokenizer


def gpt2_available():
    try:
        tiktoken.get_encoding("gpt2")
        return True
    except Exception:
        return False


def check_folder(folder, text_train, text_val, tokenizer):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    enc = get_tokenizer(tokenizer)
    train = np.fromfile(os.path.join(folder, "train.bin"), dtype=np.uint16)
    val = np.fromfile(os.path.join(folder, "val.bin"), dtype=np.uint16)
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["n_vocab"] == enc.n_vocab and "mask_id" not in meta  # the model adds [MASK] as id n_vocab
    assert meta["tokenizer"] == tokenizer and meta["dtype"] == "uint16"
    assert train.max() < meta["n_vocab"]
    assert enc.decode(train.tolist()) == text_train
    if text_val is not None:
        assert enc.decode(val.tolist()) == text_val
    return meta


def test_bytes_tokenizer_round_trips_unicode_offline():
    enc = get_tokenizer("bytes")
    text = "héllo, wörld — ünïcode ✓\n\tend"
    ids = enc.encode_ordinary(text)
    assert ids == list(text.encode("utf-8")) and enc.n_vocab == 256
    assert enc.decode(ids) == text


def test_default_corpus_prepares_offline(tmp_path):
    out = launch.prepare_run(["--data_dir", str(tmp_path)])
    text = prepare_data.default_corpus_text()
    cut = int(len(text) * 0.9)
    meta = check_folder(out, text[:cut], None, "bytes")
    assert meta["train_tokens"] > 300_000 and "pydoc" in meta["source"]
    # val keeps the tail's paragraphs, minus those repeated verbatim in train (pydoc's topics repeat passages)
    val = get_tokenizer("bytes").decode(np.fromfile(os.path.join(out, "val.bin"), dtype=np.uint16).tolist())
    val_paragraphs = [p for p in val.split("\n\n") if p.strip()]
    assert set(val_paragraphs) <= set(text[cut:].split("\n\n"))
    assert not set(val_paragraphs) & set(text[:cut].split("\n\n"))
    assert meta["val_paragraphs_dropped_as_repeats_of_train"] > 0 and len(val) > 30_000


def test_input_file_and_max_train_tokens(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("abcdefghij" * 100)
    out = launch.prepare_run(["--input", str(path), "--data_dir", str(tmp_path / "d"), "--val_fraction=0.2"])
    assert out.endswith("mine")
    check_folder(out, ("abcdefghij" * 100)[:800], ("abcdefghij" * 100)[800:], "bytes")
    out = launch.prepare_run(["--input", str(path), "--data_dir", str(tmp_path / "d"), "--name=capped",
                             "--max_train_tokens=50"])
    assert json.load(open(os.path.join(out, "meta.json")))["train_tokens"] == 50
    with pytest.raises(ValueError, match="no such file"):
        launch.prepare_run(["--input", str(tmp_path / "missing.txt")])


def test_gpt2_round_trip(tmp_path, monkeypatch):
    """The gpt2 path end to end. GPT-2's own ranks need the network, which no machine here has, so unless they are
    cached a stand-in Encoding named gpt2 (its pattern, byte ranks, <|endoftext|> at 50256) takes their place: what
    is tested is the project's plumbing (tokenize, write, meta, decode), the same either way."""
    if not gpt2_available():
        stand_in = tiktoken.Encoding(name="gpt2", pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                                     mergeable_ranks={bytes([i]): i for i in range(256)},
                                     special_tokens={"<|endoftext|>": 50256})
        monkeypatch.setattr(tiktoken, "get_encoding", lambda name: stand_in)
    text = "Hello world, this is GPT-2 BPE.\n" * 20
    prepare_data.prepare(text[:500], text[500:], str(tmp_path), "gpt2", "test")
    check_folder(str(tmp_path), text[:500], text[500:], "gpt2")
    assert json.load(open(tmp_path / "meta.json"))["n_vocab"] == 50257


def test_gpt2_unavailable_names_the_offline_choice(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ValueError, match="--tokenizer bpe or bytes"):
        get_tokenizer("gpt2")


class Server:
    """Serves a folder on 127.0.0.1 and counts requests."""

    def __init__(self, folder):
        server = self
        self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(folder), **kw)

            def log_message(self, *a):
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_download_text_dataset_from_local_server_and_cache(tmp_path):
    (tmp_path / "srv").mkdir()
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200
    (tmp_path / "srv" / "input.txt").write_text(text)
    server = Server(tmp_path / "srv")
    try:
        args = ["--dataset=shakespeare", f"--base_url={server.url}", f"--data_dir={tmp_path / 'd'}",
                f"--cache_dir={tmp_path / 'cache'}"]
        out = launch.prepare_run(args)
        assert len(server.requests) == 1
        cut = int(len(text) * 0.9)
        check_folder(out, text[:cut], text[cut:], "bytes")
        launch.prepare_run(args)  # second time: from the cache, no request
        assert len(server.requests) == 1
    finally:
        server.close()


def test_download_capped_c4_shard(tmp_path):
    """A jsonl.gz shard cut by the download cap still yields its complete documents."""
    (tmp_path / "srv").mkdir()
    rng = np.random.default_rng(0)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit"]
    docs = [{"text": f"document {i}: " + " ".join(rng.choice(words, 60)), "url": "x"} for i in range(3000)]
    for name in ("c4-train.00000-of-01024.json.gz", "c4-validation.00000-of-00008.json.gz"):
        with gzip.open(tmp_path / "srv" / name, "wt") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
    size = os.path.getsize(tmp_path / "srv" / "c4-train.00000-of-01024.json.gz")
    server = Server(tmp_path / "srv")
    try:
        cap_mb = size / 2 / 1e6
        out = launch.prepare_run(["--dataset=c4", f"--base_url={server.url}", f"--data_dir={tmp_path / 'd'}",
                                 f"--cache_dir={tmp_path / 'cache'}", f"--max_download_mb={cap_mb}"])
    finally:
        server.close()
    train = bytes(np.fromfile(os.path.join(out, "train.bin"), dtype=np.uint16).astype(np.uint8)).decode()
    kept = train.split("\n\n")
    assert 0 < len(kept) < 3000  # capped, but whole documents
    assert all(doc == docs[i]["text"] for i, doc in enumerate(kept))


def test_unreachable_download_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="could not download"):
        prepare_data.download("http://127.0.0.1:9/nothing.txt", str(tmp_path / "x.txt"))
    assert not os.path.exists(tmp_path / "x.txt")

import os
import random
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prepare_data import prepare  # noqa: E402

# a tiny model that trains in seconds on CPU
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--eval_windows=8",
        "--eval_batch_size=64", "--log_interval=1000", "--warmup_iters=5", "--mc_items=0"]


def tiny_text(n_words=3000, seed=0):
    """A small corpus with structure a tiny model can learn: a few words in a seeded random order."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "it"]
    return " ".join(rng.choice(words) for _ in range(n_words)) + "\n"


def make_tiny_data(folder):
    """folder/data/tiny prepared with byte tokens; returns folder/data."""
    text = tiny_text()
    cut = int(len(text) * 0.9)
    prepare(text[:cut], text[cut:], str(folder / "data" / "tiny"), "bytes", "test")
    return str(folder / "data")


@pytest.fixture
def data_dir(tmp_path):
    return make_tiny_data(tmp_path)


def tiny_args(data_dir, out_dir, *extra):
    return TINY + [f"--data_dir={data_dir}", "--dataset=tiny", f"--out_dir={out_dir}", *extra]


def make_tiny_documents(folder, tokenizer="bytes", vocab_size=300):
    """folder/data/docs: 60 short documents of the tiny corpus, each ending with an end-of-text token."""
    docs = [tiny_text(n_words=40 + 7 * i, seed=i) for i in range(60)]
    prepare(docs[:54], docs[54:], str(folder / "data" / "docs"), tokenizer, "test", vocab_size=vocab_size,
            documents=True)
    return str(folder / "data")


@pytest.fixture
def docs_data_dir(tmp_path):
    return make_tiny_documents(tmp_path)


def eval_args(config):
    """A config's (K, batch size, seed) for the kinds' evaluate_loss and continuation_nll."""
    return config.elbo_samples, config.eval_batch_size, config.eval_seed


def objective(script, **overrides):
    """A training script's objective (KIND, CAUSAL, its losses), with some of its functions replaced (a test's
    poisoned loss, say)."""
    names = ("KIND", "CAUSAL", "training_loss", "evaluate_loss", "continuation_nll", "log_fields", "__file__",
             "__doc__")
    return types.SimpleNamespace(**dict({n: getattr(script, n) for n in names}, **overrides))


def run_training(script, argv, **overrides):
    """A training run as the command line starts it (lab/ in front of trainer.run), in this process."""
    from lab.launch import train_run
    return train_run(objective(script, **overrides), argv)

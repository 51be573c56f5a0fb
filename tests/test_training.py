import json
import os

import numpy as np
import pytest
import torch

import train_ar
import train_diffusion
from conftest import tiny_args, run_training
from config import parse_args
from runtime import load_checkpoint, model_from_checkpoint
from config import TrainConfig

SCRIPTS = {"ar": train_ar, "diffusion": train_diffusion}


def train(kind, data_dir, out_dir, *extra):
    script = SCRIPTS[kind]
    return run_training(script, tiny_args(data_dir, out_dir, *extra))


def read_log(out_dir, drop=("elapsed_s",)):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_tiny_model_learns_tiny_corpus(kind, data_dir, tmp_path):
    out = str(tmp_path / kind)
    train(kind, data_dir, out, "--max_iters=150", "--eval_interval=75", "--lr=3e-3", "--elbo_samples=8")
    log = read_log(out)
    assert [r["iter"] for r in log] == [0, 75, 150]
    start, end = log[0]["val_loss"], log[-1]["val_loss"]
    # from ~ln(256) = 5.5 nats down to the structure of the corpus: well below the start
    assert end < 0.6 * start, (start, end)
    assert log[-1]["train_loss"] < log[1]["train_loss"]
    assert log[-1]["epoch"] > 0 and log[-1]["tokens"] == 150 * 8 * 32


def test_checkpoint_loads_into_a_model_with_the_same_logits(data_dir, tmp_path):
    """The saved weights reproduce the final val loss the run logged (same logits on the same windows)."""
    from data import load_tokens, val_windows
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=20", "--eval_interval=10")
    ckpt = load_checkpoint(out)  # a folder: best.pt
    assert ckpt["kind"] == "ar" and ckpt["iter"] == 20
    model = model_from_checkpoint(ckpt)
    assert model.config.causal
    windows = val_windows(load_tokens(os.path.join(data_dir, "tiny"), "val"), 32, 8)
    with torch.no_grad():
        nats, count = train_ar.evaluate_loss(model, windows, torch.arange(len(windows)), TrainConfig())
    assert abs(nats / count - read_log(out)[-1]["val_loss"]) < 1e-6
    latest = model_from_checkpoint(load_checkpoint(out + "/ckpt.pt"))
    idx = torch.randint(0, 256, (2, 32))
    torch.testing.assert_close(model(idx), latest(idx), rtol=0, atol=0)  # best is the last here


def test_epochs_are_exact_every_window_once_per_epoch():
    from data import TrainingWindows
    tokens = np.arange(1000, dtype=np.uint16)
    w = TrainingWindows(tokens, 32, seed=1)
    assert w.n == (1000 - 1) // 32
    for epoch in range(3):
        batch = w.get(range(epoch * w.n, (epoch + 1) * w.n))
        starts = sorted(batch[:, 0].tolist())
        assert starts == [j * 32 for j in range(w.n)]  # each window exactly once
        assert (batch[:, 1:] - batch[:, :-1] == 1).all()  # contiguous text
    # the order differs between epochs
    assert w.get(range(0, w.n))[:, 0].tolist() != w.get(range(w.n, 2 * w.n))[:, 0].tolist()


def test_cli_overrides_both_spellings_and_bools():
    c = TrainConfig()
    given = parse_args(["--n_layer=6", "--lr", "1e-3", "--compile", "--resume=false", "--dataset", "x"], c)
    assert (c.n_layer, c.lr, c.compile, c.resume, c.dataset) == (6, 1e-3, True, False, "x")
    assert given == {"n_layer", "lr", "compile", "resume", "dataset"}








def test_same_seed_same_log_another_seed_another(data_dir, tmp_path):
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    for out, seed in ((a, 1337), (b, 1337), (c, 2)):
        train("diffusion", data_dir, out, "--max_iters=30", "--eval_interval=10", "--elbo_samples=4", "--dropout=0.1",
              f"--seed={seed}")
    assert read_log(a) == read_log(b) and read_log(a)[-1]["val_loss"] != read_log(c)[-1]["val_loss"]






@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_documents_order_resumes_exactly(kind, docs_data_dir, tmp_path):
    """A run stopped mid-way (an exception in its 24th step, after the iteration-21 checkpoint) and resumed
    writes the same log and weights as an uninterrupted run, with the documents epoch order."""
    script = SCRIPTS[kind]
    extra = ["--dataset=docs", "--epoch_order=documents", "--max_iters=40", "--eval_interval=10",
             "--ckpt_interval=7", "--elbo_samples=4", "--dropout=0.1"]

    def go(out, loss, *more):
        args = [a for a in tiny_args(docs_data_dir, out, *extra, *more) if a != "--dataset=tiny"]
        return run_training(script, training_loss=loss, argv=args)

    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    go(full, script.training_loss)
    calls = []

    def failing(*a):
        calls.append(1)
        if len(calls) == 24:
            raise RuntimeError("killed")
        return script.training_loss(*a)
    with pytest.raises(RuntimeError):
        go(stopped, failing)
    assert load_checkpoint(stopped + "/ckpt.pt")["iter"] == 21
    go(stopped, script.training_loss, "--resume")
    assert read_log(stopped) == read_log(full) and len(read_log(full)) == 5
    a, b = load_checkpoint(full + "/ckpt.pt"), load_checkpoint(stopped + "/ckpt.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_auto_dtype_is_bf16_only_on_gpus_with_native_bf16(capability, expected, monkeypatch):
    """A T4 (7.5) reports bf16 'supported' through emulation; it must get fp16 (and a grad scaler) instead."""
    from runtime import pick_dtype
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype(torch.device("cuda")) == expected
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda"), "bfloat16") == torch.bfloat16


def test_a_resumed_run_keeps_its_best_so_best_pt_is_the_uninterrupted_runs(data_dir, tmp_path):
    """A validation score that only worsens as training moves the weights away from their initial values: the best
    is the first evaluation, before the stop. A resumed run that forgot its best would take a later one as best."""
    from model import ModelConfig, Transformer
    torch.manual_seed(1337)  # the runs' --seed: their initial weights
    initial = torch.cat([p.detach().flatten() for p in Transformer(ModelConfig(
        n_vocab=256, block_size=32, n_layer=2, n_head=2, n_embd=32, causal=True)).parameters()])

    def drift(model, windows, window_ids, config):
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        return 1.0 + float((weights - initial).norm()), 1

    def train_scored_by_drift(out, *extra):
        run_training(train_ar, tiny_args(data_dir, out, "--max_iters=30", "--eval_interval=10", *extra),
                     evaluate_loss=drift)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train_scored_by_drift(one)
    train_scored_by_drift(two, "--stop_after_s=1e-9")  # stops, and checkpoints, after its first evaluation
    assert [r["iter"] for r in read_log(two)] == [0]
    run_training(train_ar, ["--resume", f"--out_dir={two}", "--stop_after_s=0"], evaluate_loss=drift)
    a, b = read_log(one), read_log(two)
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b] and a[0]["val_loss"] == 1.0 < a[1]["val_loss"]
    assert [r["best_val"] for r in a] == [r["best_val"] for r in b] == [1.0] * 4  # the start stays the best
    best_one, best_two = load_checkpoint(os.path.join(one, "best.pt")), load_checkpoint(os.path.join(two, "best.pt"))
    assert best_one["iter"] == best_two["iter"] == 0
    for k in best_one["model"]:
        assert torch.equal(best_one["model"][k], best_two["model"][k])

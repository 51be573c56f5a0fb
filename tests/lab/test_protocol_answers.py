"""The verdict's own arithmetic against answers computed by hand: a synthetic U folder whose checkpoints score by
their file (a stand-in scorer), so which file each number came from, each kind's best, the gap, the edge flags, the
downstream accuracies, the paired difference and its file-clustered standard error are known in advance. Then the
held-out test items through the protocol's own code path, a resumed run's best_choice.pt, and a three-run compare."""
import json
import math
import os
import sys
import types

import numpy as np
import pytest
import torch

import compare
import downstream
import evaluate
import train_ar
from config import TrainConfig
from conftest import ROOT, make_tiny_documents, run_training, tiny_args
from lab import launch
from runtime import load_checkpoint

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import protocol  # noqa: E402
import sweep  # noqa: E402

# (kind, setting label, params, epochs): run name -> its grid point
GRID = {"ar_a": ("ar", "2x32", 1000, 4.0), "ar_b": ("ar", "2x64", 3000, 4.0), "ar_c": ("ar", "2x32", 1000, 8.0),
        "df_a": ("diffusion", "2x32", 1000, 50.0), "df_b": ("diffusion", "2x64", 3000, 50.0)}
# the re-scored loss of each file: best.pt is what the protocol must read; ckpt.pt (the last weights) would crown
# other winners (ar_a, df_a)
LOSS = {("ar_a", "best.pt"): 5.0, ("ar_b", "best.pt"): 4.8, ("ar_c", "best.pt"): 4.9,
        ("df_a", "best.pt"): 5.3, ("df_b", "best.pt"): 5.1,
        ("ar_a", "ckpt.pt"): 3.0, ("ar_b", "ckpt.pt"): 6.0, ("ar_c", "ckpt.pt"): 6.0,
        ("df_a", "ckpt.pt"): 4.0, ("df_b", "ckpt.pt"): 6.0}
# the logged best selection-item accuracy of each run: the second rule takes each kind's highest (ar_b, df_a)
BEST_ACC = {"ar_a": 0.40, "ar_b": 0.55, "ar_c": 0.30, "df_a": 0.50, "df_b": 0.35}
# six held-out items from three files; which each checkpoint answers right
FILES = np.array([0, 0, 1, 1, 2, 2])
CORRECT = {("ar_b", "best.pt"): [1, 1, 1, 0, 1, 0], ("df_b", "best.pt"): [0, 1, 0, 0, 1, 1],
           ("ar_b", "best_choice.pt"): [1, 1, 1, 1, 1, 0], ("df_a", "best_choice.pt"): [1, 1, 0, 1, 1, 1]}


@pytest.fixture
def grid(tmp_path, monkeypatch):
    """The U folder (one file per checkpoint, so that checkpoint_id sees it) and the stand-in scorers."""
    for run in GRID:
        (tmp_path / run).mkdir()
        for name in ("best.pt", "ckpt.pt", "best_choice.pt"):
            (tmp_path / run / name).write_bytes(b"weights")

    def loaded(path, device):
        run, name = os.path.basename(os.path.dirname(path)), os.path.basename(path)
        train = TrainConfig(eval_windows=8, elbo_samples=4)
        return {"file": (run, name)}, train, None, None, None
    monkeypatch.setattr(evaluate, "loaded", loaded)
    monkeypatch.setattr(evaluate, "val_score", lambda ckpt, model, val, scoring: (LOSS[ckpt["file"]], 256))
    monkeypatch.setattr(evaluate, "choice_correct", lambda ckpt, model, items, *a, **k: torch.tensor(
        [bool(c) for c in CORRECT[ckpt["file"]]]))
    items = downstream.Items(torch.zeros(6, 4, dtype=torch.long), torch.zeros(6, 4, 2, dtype=torch.long),
                             torch.zeros(6, dtype=torch.long), torch.from_numpy(FILES))
    monkeypatch.setattr(protocol, "test_items", lambda folder, run, config: (items, (4, 2)))
    rows = [{"run": run, "kind": kind, "best_val": 9.0, "best_epoch": epochs / 2, "params": params,
             "best_acc": BEST_ACC[run], "tokenizer": "bytes-256"} for run, (kind, _, params, epochs) in GRID.items()]
    setting_of = {run: (kind, label, epochs) for run, (kind, label, _, epochs) in GRID.items()}
    runs = [{"name": run, "params": params, "per_unique_token": params / 2000, "flops_per_token": 6 * params,
             "tokens": 2000 * epochs, "tokens_per_step": 512, "setting": setting_of[run]}
            for run, (_, _, params, epochs) in GRID.items()]
    config = protocol.ProtocolConfig(unique_tokens=2000, rescore_samples=4, rescore_windows=8, test_items=6)
    return tmp_path, rows, setting_of, runs, config


def test_the_verdict_of_a_grid_whose_every_number_is_known(grid):
    folder, rows, setting_of, runs, config = grid
    scores = protocol.Scores(str(folder / "scores.json"))
    protocol.rescore(rows, str(folder), config, scores, torch.device("cpu"))
    assert {r["run"]: r["score"] for r in rows} == {run: LOSS[run, "best.pt"] for run in GRID}  # best.pt, each
    best = sweep.kind_bests(rows, setting_of)
    assert (best["ar"]["run"], best["diffusion"]["run"]) == ("ar_b", "df_b")
    assert best["ar"]["edges"] == ["largest size", "fewest epochs"]
    assert best["diffusion"]["edges"] == ["largest size", "one epoch count only"]
    tests = protocol.downstream_test(rows, best, str(folder), config, scores, torch.device("cpu"))
    verdict = protocol.verdict_of(rows, best, runs, config, tests)
    assert verdict["gap"] == pytest.approx((5.1 - 4.8) / 4.8)
    assert verdict["kinds"]["ar"]["score"] == 4.8 and verdict["kinds"]["diffusion"]["score"] == 5.1
    by_loss, by_accuracy = verdict["downstream"]
    assert by_loss["rule"] == "best validation loss"
    assert (by_loss["ar"]["checkpoint"], by_loss["diffusion"]["checkpoint"]) == ("ar_b/best.pt", "df_b/best.pt")
    assert by_loss["ar"]["accuracy"] == pytest.approx(4 / 6) and by_loss["diffusion"]["accuracy"] == pytest.approx(3 / 6)
    # d = (1, 0, 1, 0, 0, -1), mean 1/6; per file, the sums of d - mean are 4/6, 4/6, -8/6; G = 3 files, n = 6:
    # var = G / (G - 1) * (16 + 16 + 64) / 36 / n^2 = 1/9 (by item instead it would be 0.0944)
    assert by_loss["ar_minus_diffusion"] == pytest.approx(1 / 6) and by_loss["se"] == pytest.approx(1 / 3)
    assert by_accuracy["rule"] == "best selection-item accuracy"
    assert (by_accuracy["ar"]["checkpoint"], by_accuracy["diffusion"]["checkpoint"]) == \
        ("ar_b/best_choice.pt", "df_a/best_choice.pt")
    # d = (0, 0, 1, 0, 0, -1): per-file sums of d - 0: 0, 1, -1 -> var = 3/2 * 2 / 36 = 1/12
    assert by_accuracy["ar_minus_diffusion"] == pytest.approx(0.0) and by_accuracy["se"] == pytest.approx(
        math.sqrt(1 / 12))
    assert by_loss["items"] == 6 and by_loss["files"] == 3
    assert {r["run"]: (r["score"], r["flops"]) for r in verdict["runs"]} == \
        {run: (LOSS[run, "best.pt"], 6 * params * 2000 * epochs) for run, (_, _, params, epochs) in GRID.items()}


def test_the_held_out_items_come_only_from_the_test_files_and_never_overlap_the_selection_items(tmp_path):
    """Through the protocol's own code path (protocol.test_items on a real run) against the items a run scores
    at every evaluation (lab.launch.choice_items): disjoint files, no window shared."""
    data_dir = make_tiny_documents(tmp_path)
    out = tmp_path / "u" / "run"
    args = [a for a in tiny_args(data_dir, str(out), "--max_iters=2", "--eval_interval=2", "--dataset=docs")
            if a not in ("--dataset=tiny", "--mc_items=0")] + ["--mc_items=30"]
    run_training(train_ar, args)
    config = protocol.ProtocolConfig(test_items=40, test_seed=3)
    items, (context, continuation) = protocol.test_items(str(tmp_path / "u"), "run", config)
    train = load_checkpoint(str(out / "best.pt"))
    meta = json.load(open(os.path.join(data_dir, "docs", "meta.json")))
    val = np.fromfile(os.path.join(data_dir, "docs", "val.bin"), dtype=np.uint16).astype(np.int64)
    selection, test = downstream.split_files(downstream.document_spans(val, meta["eot_id"]))

    def windows_of(items, spans):
        """The (start, end) in val of each item's context + true continuation, and that it lies in `spans`."""
        found = []
        for ctx, choices, answer in zip(items.contexts.numpy(), items.choices.numpy(), items.answers.numpy()):
            window = np.concatenate([ctx, choices[answer]])
            starts = [s for s in range(len(val) - len(window) + 1) if np.array_equal(val[s:s + len(window)], window)]
            inside = [s for s in starts if any(a <= s and s + len(window) <= b for a, b in spans)]
            assert inside, "an item outside its files"
            found.append((inside[0], inside[0] + len(window)))
        return found
    held_out = windows_of(items, test)
    for choices in items.choices.numpy():  # the distractors too come from the test files
        for piece in choices:
            assert any(any(np.array_equal(val[s:s + len(piece)], piece) for s in range(a, b - len(piece) + 1))
                       for a, b in test)
    chosen = launch.choice_items(types.SimpleNamespace(**{**train["config"], "mc_items": 30}))
    for a, b in windows_of(chosen, selection):
        assert all(b <= c or d <= a for c, d in held_out)


def test_a_resumed_run_keeps_its_best_accuracy_so_best_choice_pt_is_the_uninterrupted_runs(data_dir, tmp_path,
                                                                                            monkeypatch):
    """The multiple-choice accuracy is 1.0 at the initial weights and below it ever after (a stand-in scorer that
    reads how far the weights moved): best_choice.pt must stay the initial weights, whether or not the run was
    stopped after its first evaluation and resumed. A resume that forgot its best accuracy would overwrite it."""
    from model import ModelConfig, Transformer
    torch.manual_seed(1337)
    initial = torch.cat([p.detach().flatten() for p in Transformer(ModelConfig(
        n_vocab=256, block_size=32, n_layer=2, n_head=2, n_embd=32, causal=True)).parameters()])

    def drift(model, contexts, continuations, item_ids, samples, batch_size, seed):
        moved = float((torch.cat([p.detach().flatten() for p in model.parameters()]) - initial).norm())
        return torch.full((len(contexts),), moved, dtype=torch.float64)

    def accuracy(items, score_nll, batch_items=64, progress=None):
        moved = float(score_nll(items.contexts[:1], items.choices[:1, 0], torch.arange(1))[0])
        return 1.0 if moved == 0 else 0.5 / (1 + moved), 0.01, None
    monkeypatch.setattr(downstream, "accuracy", accuracy)
    args = [a for a in tiny_args(data_dir, "", "--max_iters=20", "--eval_interval=5") if a != "--mc_items=0"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run_training(train_ar, args + [f"--out_dir={one}", "--mc_items=20"], continuation_nll=drift)
    run_training(train_ar, args + [f"--out_dir={two}", "--mc_items=20", "--stop_after_s=1e-9"], continuation_nll=drift)
    assert load_checkpoint(two + "/ckpt.pt")["iter"] == 0
    run_training(train_ar, ["--resume", f"--out_dir={two}", "--stop_after_s=0"], continuation_nll=drift)
    a, b = load_checkpoint(one + "/best_choice.pt"), load_checkpoint(two + "/best_choice.pt")
    assert a["iter"] == b["iter"] == 0 and a["mc_accuracy"] == b["mc_accuracy"] == 1.0
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_compare_takes_each_kinds_best_run_of_several(tmp_path):
    def log(name, kind, best):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "log.jsonl", "w") as f:
            for i, val in enumerate((best + 1.0, best, best + 0.2)):
                f.write(json.dumps({"iter": i * 10, "epoch": float(i), "tokens": i * 100, "train_loss": val,
                                    "val_loss": val, "kind": kind, "tokenizer": "bytes-256", "unique_tokens": 1000,
                                    "n_params": 5000, "elapsed_s": 1.0}) + "\n")
    log("ar_small", "ar", 4.0)
    log("ar_large", "ar", 3.5)
    log("diffusion", "diffusion", 3.8)
    rows = compare.main([str(tmp_path / n) for n in ("ar_small", "ar_large", "diffusion")] + ["--no_plot"])
    line = [line for line in compare.verdict(rows).splitlines() if line.startswith("by validation loss")][0]
    assert line == ("by validation loss: AR lower, by 0.3000 nats/token (7.9% of diffusion's best; AR 3.5000 in "
                    "ar_large, diffusion 3.8000 in diffusion)")


def bests(ar_edges, diffusion_edges):
    return {"ar": {"edges": ar_edges}, "diffusion": {"edges": diffusion_edges}}


def test_the_bracketing_rule_adds_the_setting_past_each_edge_and_nothing_inside():
    config = protocol.ProtocolConfig(unique_tokens=37500, ar_models="2x64x2,2x128x1", diffusion_models="2x32x1,2x64x2",
                                     ar_epochs="4,8,16", diffusion_epochs="150,400")
    additions, status = protocol.bracket_next(bests([], ["largest size", "most epochs"]), config)
    assert additions == {"diffusion": {"models": ["2x96x3"], "epochs": [1000]}}  # the next ladder width; 2.5 x 400
    assert status == {"ar": "bracketed", "diffusion": "at an edge: largest size, most epochs"}
    additions, _ = protocol.bracket_next(bests(["smallest size", "fewest epochs"], []), config)
    assert additions == {"ar": {"models": ["2x48x1"], "epochs": [1.6]}}  # the ladder width below; 4 / 2.5
    protocol.widen(config, additions)
    assert (config.ar_models, config.ar_epochs) == ("2x64x2,2x128x1,2x48x1", "4,8,16,1.6")


def test_a_cap_stops_the_bracketing_and_is_named():
    config = protocol.ProtocolConfig(unique_tokens=37500, ar_models="2x64x2", diffusion_models="20x1280x20",
                                     ar_epochs="4", diffusion_epochs="1000", bracket_max_epochs=2000, min_iters=100)
    additions, status = protocol.bracket_next(bests(["fewest epochs"], ["largest size", "most epochs"]), config)
    assert additions == {}
    assert status["diffusion"] == "largest size (the cap, --diffusion_max_width=1280); most epochs (the cap, 2000)"
    assert status["ar"].startswith("fewest epochs (a shorter run would lower every run's batch under --min_iters")
    config.min_iters, config.ar_epochs = 0, "2"
    additions, status = protocol.bracket_next(bests(["fewest epochs"], []), config)
    assert additions == {} and status["ar"] == "fewest epochs (one epoch)"  # 2 / 2.5 is under one epoch


def test_each_kind_has_its_own_width_cap():
    config = protocol.ProtocolConfig(unique_tokens=37500, ar_models="3x192x3", diffusion_models="2x128x2",
                                     ar_epochs="8", diffusion_epochs="400", ar_max_width=256, diffusion_max_width=128)
    additions, status = protocol.bracket_next(bests(["largest size"], ["largest size"]), config)
    assert additions == {"ar": {"models": ["4x256x4"], "epochs": []}}
    assert status["diffusion"] == "largest size (the cap, --diffusion_max_width=128)"


def test_the_checks_change_one_thing_of_each_kinds_best_and_keep_their_own_batch(data_dir):
    extra = [f"--data_dir={data_dir}", "--dataset=tiny", "--block_size=32", "--batch_size=8", "--lr=1e-3",
             "--weight_decay=0.1", "--n_layer=1", "--n_embd=16", "--n_head=1"]
    config = protocol.ProtocolConfig(unique_tokens=2000, ar_models="1x16x1,1x32x1", diffusion_models="1x16x1",
                                     ar_epochs="2,4", diffusion_epochs="20", check_batch_sizes="2,8",
                                     check_lr_factors="0.5,1,2", ar_check_weight_decays="1,0.1", min_iters=0)
    best = {"ar": {"run": "ar_1x32x1_e4"}, "diffusion": {"run": "diffusion_1x16x1_e20"}}
    checks = protocol.check_runs(config, extra, best)
    # batch 8 is the grid's own step, lr x 1 and weight decay 0.1 its own values: no run of their own
    assert [r["name"] for r in checks] == ["ar_1x32x1_b2_e4", "ar_1x32x1_lr0.5x_e4", "ar_1x32x1_lr2x_e4",
                                           "ar_1x32x1_wd1_e4", "diffusion_1x16x1_b2_e20",
                                           "diffusion_1x16x1_lr0.5x_e20", "diffusion_1x16x1_lr2x_e20"]
    grid = sweep.make_grid(config, extra) + checks
    sweep.size_runs(grid, config)
    by_name = {r["name"]: r for r in grid}
    assert all(by_name[n]["tokens_per_step"] == 8 * 32 for n in by_name if "_b2_" not in n)  # the one batch rule
    assert by_name["ar_1x32x1_b2_e4"]["tokens_per_step"] == 2 * 32 == by_name["diffusion_1x16x1_b2_e20"][
        "tokens_per_step"]
    trained = {n: sweep.training_config(r["options"])[0] for n, r in by_name.items()}
    assert (trained["ar_1x32x1_lr2x_e4"].lr, trained["diffusion_1x16x1_lr0.5x_e20"].lr) == (2e-3, 5e-4)
    assert trained["ar_1x32x1_wd1_e4"].weight_decay == 1.0 and trained["ar_1x32x1_lr2x_e4"].weight_decay == 0.1
    assert (trained["ar_1x32x1_b2_e4"].n_embd, trained["ar_1x32x1_b2_e4"].epochs) == (32, 4)  # the best's setting
    assert by_name["ar_1x32x1_b2_e4"]["setting"] == ("ar", "1x32x1", "b2", 4.0)


def test_the_seeds_repeat_each_kinds_best_setting_only():
    runs = [{"name": "ar_a", "setting": ("ar", "a", "", 4.0), "options": ["--x=1"], "seed": None},
            {"name": "ar_b", "setting": ("ar", "b", "", 4.0), "options": [], "seed": None},
            {"name": "df_a_lr2x", "setting": ("diffusion", "a", "lr2x", 50.0), "options": [], "seed": None}]
    best = {"ar": {"setting": ("ar", "b", "", 4.0)}, "diffusion": {"setting": ("diffusion", "a", "lr2x", 50.0)}}
    repeats = protocol.seed_runs(runs, best, [2, 3])
    assert [(r["name"], r["options"][-1]) for r in repeats] == [("ar_b_s2", "--seed=2"), ("ar_b_s3", "--seed=3"),
                                                               ("df_a_lr2x_s2", "--seed=2"),
                                                               ("df_a_lr2x_s3", "--seed=3")]
    assert runs[0]["options"] == ["--x=1"]  # the grid's runs are not changed


def test_the_downstream_test_is_fixed_at_the_first_start_and_a_later_change_is_refused(tmp_path):
    config = protocol.ProtocolConfig(out=str(tmp_path / "u100"), test_items=0, test_samples=16)
    recorded = protocol.preregister(config)
    path = tmp_path / "u100" / "preregistered.json"
    before = path.read_bytes()
    assert json.loads(before) == recorded and recorded["test_items"] == 0 and len(recorded["rules"]) == 2
    assert protocol.preregister(protocol.ProtocolConfig(out=str(tmp_path / "u100"), test_items=0,
                                                        test_samples=16)) == recorded  # the same command goes on
    with pytest.raises(ValueError, match=r"pre-registered .* --test_items=0 \(asked: 2500\)"):
        protocol.preregister(protocol.ProtocolConfig(out=str(tmp_path / "u100"), test_samples=16))
    assert path.read_bytes() == before
    (tmp_path / "u200").mkdir()
    (tmp_path / "u200" / "scores.json").write_text("{}")  # scores exist: the winners may be known
    with pytest.raises(ValueError, match="can no longer be pre-registered"):
        protocol.preregister(protocol.ProtocolConfig(out=str(tmp_path / "u200")))
    assert not (tmp_path / "u200" / "preregistered.json").exists()


def test_the_frontier_is_the_lowest_loss_reached_by_each_compute():
    curves = [[(1, 5.0), (2, 4.0), (4, 3.5), (8, 3.6)],  # a small model that overfits late
              [(2, 4.5), (4, 3.8), (8, 3.0), (16, 2.9)],  # a larger one, better from 8 on
              [(3, 4.2), (6, 6.0)]]  # a run that diverges: never on the frontier after its first point
    points = [p for c in curves for p in c]
    frontier = experiments_frontier().envelope(points)
    assert frontier == [(1, 5.0), (2, 4.0), (4, 3.5), (8, 3.0), (16, 2.9)]
    assert all(loss >= min(f_loss for f_flops, f_loss in frontier if f_flops <= flops) for flops, loss in points)


def experiments_frontier():
    import frontier
    return frontier


def test_a_plan_lists_and_counts_only_the_runs_left(data_dir, tmp_path, capsys):
    config = protocol.ProtocolConfig(unique_tokens=2000, out=str(tmp_path), ar_models="1x16x1", ar_epochs="2,4",
                                     diffusion_epochs="", assumed_tflops=1e-3)
    grid = sweep.make_grid(config, [f"--data_dir={data_dir}", "--dataset=tiny", "--block_size=32"])
    sweep.size_runs(grid, config)
    sweep.estimate(grid, config, {})
    done = tmp_path / "ar_1x16x1_e2"  # a finished run: its log ends with done, beside its ckpt.pt
    done.mkdir()
    record = {key: 0 for key in compare.LOG_FIELDS}
    (done / "log.jsonl").write_text(json.dumps(dict(record, done=True)) + "\n")
    (done / "ckpt.pt").write_bytes(b"weights")
    sweep.print_plan(grid, config, None, 20.0)
    out = capsys.readouterr().out
    assert "ar_1x16x1_e4 " in out and "ar_1x16x1_e2 " not in out
    left = next(r for r in grid if r["name"] == "ar_1x16x1_e4")
    assert f"plan: 2 runs (1 finished; what follows counts the 1 left), {left['flops_per_token'] * left['tokens']:.2e}" \
        in out
    assert f"about {(20.0 + left['seconds']) / 60:.1f} min" in out

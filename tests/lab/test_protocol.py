"""Paper 1's protocol (experiments/protocol.py, gap_vs_u.py, gpu_recipe.sh): sizes by parameters per unique token,
one selection rule, edges flagged, re-scoring, the held-out downstream test scored paired, the gap against U."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY, make_tiny_documents

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import data  # noqa: E402
import downstream  # noqa: E402
import evaluate  # noqa: E402
import gap_vs_u  # noqa: E402
import protocol  # noqa: E402
import sweep  # noqa: E402
import train_diffusion  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402


def test_the_ladder_counts_the_models_non_embedding_parameters_and_picks_the_nearest():
    for width in protocol.LADDER_WIDTHS[:6]:
        layers, _, heads = protocol.shape(width)
        with torch.device("meta"):
            net = Transformer(ModelConfig(n_vocab=1024, n_layer=layers, n_head=heads, n_embd=width))
        assert protocol.non_embedding_params(layers, width) == net.num_params() - net.embed.weight.numel()
    # 3 per token of 37,500 is 112,500: 2 x 64 has 106K non-embedding parameters, its neighbours 57K and 232K
    assert protocol.model_for(3, 37500) == "2x64x2"
    unique = (37500, 150000, 2400000)
    sizes = [protocol.non_embedding_params(*protocol.shape(int(protocol.model_for(3, u).split("x")[1]))[:2])
             for u in unique]
    assert sizes[0] < sizes[1] < sizes[2] and all(0.5 < s / (3 * u) < 2 for s, u in zip(sizes, unique))


def row(run, kind, score, epoch, params):
    return {"run": run, "kind": kind, "best_val": score + 0.05, "score": score, "best_epoch": epoch, "params": params}


def test_a_setting_is_scored_by_its_own_run_and_a_best_at_a_grid_edge_is_flagged():
    setting_of = {}
    rows = []
    for params, model in ((1e5, "s"), (4e5, "m"), (16e5, "l")):
        for epochs, score in ((50, 5.0), (150, 4.8), (400, 4.9)):
            name = f"diffusion_{model}_e{epochs}"
            setting_of[name] = ("diffusion", model, "", float(epochs))
            rows.append(row(name, "diffusion", score + {"s": 0.2, "m": 0.0, "l": 0.1}[model], epochs * 0.8, params))
    best = sweep.kind_bests(rows, setting_of)["diffusion"]
    # the 150-epoch setting's number is its own run's (4.8), not another run's checkpoint at epoch 150
    assert best["run"] == "diffusion_m_e150" and best["mean"] == pytest.approx(4.8) and best["edges"] == []
    assert "(80% of its schedule)" in sweep.describe_best("diffusion", best) and "not bracketed" not in \
        sweep.describe_best("diffusion", best)
    # the largest model, most epochs best: both edges named
    rows.append(row("diffusion_l_e400b", "diffusion", 4.0, 390, 16e5))
    setting_of["diffusion_l_e400b"] = ("diffusion", "l", "b", 400.0)
    best = sweep.kind_bests(rows, setting_of)["diffusion"]
    assert best["edges"] == ["largest size", "most epochs"]
    assert "[not bracketed: largest size, most epochs of its grid; widen the grid]" in \
        sweep.describe_best("diffusion", best)
    one = sweep.kind_bests(rows[:1], setting_of)["diffusion"]
    assert one["edges"] == ["one size only", "one epoch count only"]


def documents_val(n_files=30, seed=0):
    """A val split of n_files documents of varied lengths, each ended by eot id 999."""
    rng = np.random.default_rng(seed)
    parts = [np.append(rng.integers(0, 500, int(rng.integers(200, 2000))), 999) for _ in range(n_files)]
    return np.concatenate(parts).astype(np.uint16)


def test_selection_and_test_items_come_from_disjoint_files_and_stay_inside_one_file():
    val = documents_val()
    meta = {"eot_id": 999}
    files = data.document_spans(val, 999)
    assert len(files) == 30 and files[0][0] == 0 and files[-1][1] == len(val)
    selection, test = downstream.item_set(val, meta, "selection"), downstream.item_set(val, meta, "test")
    assert sorted(selection + test) == files and not set(selection) & set(test)
    share = sum(e - s for s, e in selection) / len(val)
    assert 0.15 < share <= 0.3
    for chosen in (selection, test):
        items = downstream.build_items(val, 300, 24, 8, seed=1, files=chosen)
        # every run of 32 consecutive tokens inside each file, by file; every piece of 8 inside the set's files
        spans = [{w.tobytes() for w in np.lib.stride_tricks.sliding_window_view(val[s:e].astype(np.int64), 32)}
                 for s, e in chosen]
        pieces = {w.tobytes() for s, e in chosen
                  for w in np.lib.stride_tricks.sliding_window_view(val[s:e].astype(np.int64), 8)}
        for i in range(300):
            true = items.choices[i, items.answers[i]]
            # the item's context and true continuation are consecutive tokens of its own file
            assert torch.cat([items.contexts[i], true]).numpy().tobytes() in spans[int(items.files[i])]
            # every choice, distractors included, lies inside one file of this set
            assert all(items.choices[i, j].numpy().tobytes() in pieces for j in range(4))


def test_paired_difference_and_its_clustered_standard_error_against_a_hand_computation():
    a = [1, 0, 1, 1, 0, 1]
    b = [0, 0, 1, 0, 1, 1]
    files = [0, 0, 1, 1, 2, 2]
    # d = 1 0 0 1 -1 0, mean 1/6; file sums of d - mean: 2/3, 2/3, -4/3; 3/2 x (4/9 + 4/9 + 16/9) / 36 = 1/9
    mean, se = downstream.paired_difference(a, b, files)
    assert mean == pytest.approx(1 / 6) and se == pytest.approx(1 / 3)
    # one file per item: the usual paired standard error, sqrt(n / (n - 1) * sum (d - mean)^2 / n^2)
    mean, se = downstream.paired_difference(a, b, range(6))
    d = np.array(a) - np.array(b)
    assert se == pytest.approx(math.sqrt(6 / 5 * ((d - d.mean()) ** 2).sum() / 36))
    with pytest.raises(ValueError, match="at least two files"):
        downstream.paired_difference(a, b, [0] * 6)


def verdict(u, ar, diffusion, flops, tokenizer="bpe-1025-abc"):
    kind = lambda score: {"run": "r", "setting": "2x64", "epochs": 100.0, "best_epoch": 50.0, "score": score,  # noqa
                          "edges": [], "flops": flops}
    c_crit = protocol.critical_flops(u)
    return {"unique_tokens": u, "tokenizer": tokenizer, "rescore_samples": 128, "rescore_windows": 256,
            "kinds": {"ar": kind(ar), "diffusion": kind(diffusion)}, "gap": (diffusion - ar) / ar,
            "flops_over_c_crit": flops / c_crit, "c_crit": c_crit,
            "paper1_predicts": "diffusion lower" if flops > c_crit else "AR lower",
            "downstream": [{"ar_minus_diffusion": 0.01, "se": 0.02}]}


def test_the_gap_against_u_table_from_verdicts(tmp_path, capsys):
    for u, ar, df, flops in ((150000, 4.0, 4.1, 1e13), (37500, 5.0, 5.5, 1e12), (75000, 4.5, 4.5 * 0.97, 3e14)):
        os.makedirs(tmp_path / f"u{u}")
        with open(tmp_path / f"u{u}" / "verdict.json", "w") as f:
            json.dump(verdict(u, ar, df, flops), f)
    gap_vs_u.main([str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip().split(" ")[0][:1].isdigit()]
    assert [line.split()[0] for line in lines] == ["37,500", "75,000", "150,000"]  # smallest U first
    assert "+10.00%" in lines[0] and "-3.00%" in lines[1] and "+2.50%" in lines[2]
    # C_crit(0.075) = 2.12e15 x 0.075^2.174 = 7.3e12: 3e14 is past it, 1e13 at U = 150K is not (C_crit 3.6e13)
    assert "diffusion lower" in lines[1] and "AR lower" in lines[2]
    assert protocol.critical_flops(1e6) == pytest.approx(2.12e15)
    if os.path.exists(tmp_path / "gap_vs_u.png"):
        assert os.path.getsize(tmp_path / "gap_vs_u.png") > 1000
    with open(tmp_path / "u37500" / "verdict.json", "w") as f:
        json.dump(verdict(37500, 5.0, 5.5, 1e12, tokenizer="bytes-256"), f)
    with pytest.raises(ValueError, match="different tokenizers"):
        gap_vs_u.main([str(tmp_path)])


def test_rescoring_uses_the_k_and_windows_given_and_is_kept(tmp_path, monkeypatch):
    data_dir = make_tiny_documents(tmp_path)
    out = tmp_path / "runs"
    subprocess.run([sys.executable, os.path.join(ROOT, "train_diffusion.py"), *TINY, f"--data_dir={data_dir}",
                    "--dataset=docs", f"--out_dir={out / 'df'}", "--max_iters=6", "--eval_interval=3"], check=True,
                   capture_output=True)
    config = protocol.ProtocolConfig(rescore_samples=8, rescore_windows=5)
    rows = [{"run": "df", "best_val": 0.0, "best_epoch": 0.0}]
    scores = protocol.Scores(str(out / "scores.json"))
    protocol.rescore(rows, str(out), config, scores, torch.device("cpu"))
    ckpt, train, _, val_tokens, model = evaluate.loaded(str(out / "df" / "best.pt"), "cpu")
    windows = evaluate.val_windows(val_tokens, train.block_size, 5)
    with torch.no_grad():
        nats, count = train_diffusion.evaluate_loss(model, windows, torch.arange(5),
                                                    dataclasses.replace(train, elbo_samples=8))
        other, _ = evaluate.val_score(ckpt, model, val_tokens, dataclasses.replace(train, eval_windows=5,
                                                                                     elbo_samples=2))
    assert rows[0]["score"] == pytest.approx(nats / count, rel=1e-9) and rows[0]["score_windows"] == 5
    assert count == 5 * train.block_size and other != pytest.approx(rows[0]["score"], rel=1e-6)
    # kept: a second protocol run reads scores.json instead of scoring again
    monkeypatch.setattr(evaluate, "val_score", lambda *a: pytest.fail("scored again"))
    again = [{"run": "df", "best_val": 0.0, "best_epoch": 0.0}]
    protocol.rescore(again, str(out), config, protocol.Scores(str(out / "scores.json")), torch.device("cpu"))
    assert again[0]["score"] == rows[0]["score"]


def test_two_values_of_u_end_to_end_through_the_gpu_recipe_on_a_cpu(tmp_path):
    """gpu_recipe.sh once per U at a tiny setting, then gap_vs_u.py: one batch rule for every run, sizes from
    parameters per unique token, every run's best.pt re-scored, the held-out test scored paired, a verdict per U."""
    env = dict(os.environ, DATA_DIR=str(tmp_path / "data"), OUT=str(tmp_path / "out"), VOCAB="300",
               AR_PER_TOKEN="2", DIFFUSION_PER_TOKEN="5", AR_EPOCHS="1,3", DIFFUSION_EPOCHS="4,8",
               AR_VARIANTS="papers:--weight_decay=0.1", MIN_ITERS="8", BUDGET="86400", OMP_NUM_THREADS="1", JOBS="2",
               PYTHON=sys.executable, SCORES="--rescore_samples=4 --rescore_windows=6 --test_items=60 --test_samples=2",
               TRAIN="--block_size=32 --batch_size=16 --eval_windows=4 --elbo_samples=2 --device=cpu --mc_items=20")
    for u in (2000, 4000):
        repeats = "2" if u == 2000 else ""  # the first U also checks lr x2 and runs each kind's winner with seed 2
        checks = "--check_lr_factors=2" if u == 2000 else ""
        result = subprocess.run(["bash", os.path.join(ROOT, "experiments", "gpu_recipe.sh")],
                                env=dict(env, U=str(u), REPEAT_SEEDS=repeats, CHECKS=checks), capture_output=True,
                                text=True,
                                timeout=3000)  # a slow or loaded host is allowed: ten times the idle time
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
        first_plan = out[:out.index("per U:")]  # later stages plan only their own runs
        plan = [line.split() for line in first_plan.splitlines() if line.startswith(("ar_", "diffusion_")) and
                len(line.split()) == 11]
        assert len(plan) == 4 and all(float(row[8].replace(",", "")) > 0 for row in plan)  # measured tokens/s
        assert "tokens per optimizer step for every run (lowered until each run takes at least 8 steps)" in out
        folder = tmp_path / "out" / f"u{u}"
        v = json.load(open(folder / "verdict.json"))
        runs = sorted(d for d in os.listdir(folder) if os.path.isdir(folder / d))
        # with checks and seeds: each kind's best again at lr x2, then the final best again with seed 2
        assert len(runs) == (8 if repeats else 4) and v["rescore_samples"] == 4 and v["rescore_windows"] == 6
        assert sum("_lr2x_" in r and not r.endswith("_s2") for r in runs) == (2 if checks else 0)
        assert {r["run"] for r in v["runs"]} == set(runs)
        assert json.load(open(folder / "preregistered.json"))["test_items"] == 60
        assert os.path.getsize(folder / "frontier.png") > 0
        steps = set()
        for run in runs:
            config = torch.load(folder / run / "ckpt.pt", weights_only=False)["config"]
            log = [json.loads(line) for line in open(folder / run / "log.jsonl")]
            steps.add(config["batch_size"] * config["grad_accum"])
            assert log[-1]["iter"] >= 8 and os.path.exists(folder / run / "best_choice.pt")
            assert config["lr"] == (2e-3 if "_lr2x_" in run else 1e-3)
        # one step for both kinds: the largest that gives the shortest run (1 epoch of AR) at least 8 steps
        assert steps == {min(16, (u - 1) // 32 // 8)} and v["tokens_per_step"] == [32 * steps.pop()]
        scores = json.load(open(folder / "scores.json"))
        assert sum(" val K=4 windows=6" in key for key in scores) == len(runs)  # every run's best.pt, re-scored
        best_ar = v["kinds"]["ar"]
        ar_scores = {k.split("/")[0]: s["loss"] for k, s in scores.items() if k.startswith("ar_") and "val" in k}
        if repeats:  # the winner's number is its mean over its seeds
            assert best_ar["seeds"] == 2 and best_ar["score"] == pytest.approx(
                (ar_scores[best_ar["run"]] + ar_scores[best_ar["run"] + "_s2"]) / 2)
        else:
            assert best_ar["score"] == min(ar_scores.values())
        assert v["gap"] == pytest.approx((v["kinds"]["diffusion"]["score"] - best_ar["score"]) / best_ar["score"])
        assert v["kinds"]["diffusion"]["edges"][0] == "one size only"  # 5 per token of a few thousand: one shape
        test = v["downstream"][0]
        assert test["rule"] == "best validation loss" and test["items"] == 60
        assert test["ar"]["checkpoint"] == f"{best_ar['run']}/best.pt"
        assert f"U = {u:,}" in out and "not bracketed" in out and "paired, clustered by file" in out
    result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "gap_vs_u.py"), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and [line.split()[0] for line in result.stdout.splitlines()[2:4]] == \
        ["2,000", "4,000"]


def test_a_score_that_cannot_be_written_leaves_the_previous_file_and_no_temporary_one(tmp_path, monkeypatch):
    import errno
    path = tmp_path / "scores.json"
    scores = protocol.Scores(str(path))
    assert scores.get("a", lambda: {"loss": 1.5, "windows": 4}) == {"loss": 1.5, "windows": 4}

    def full_disk(obj, f, **options):
        f.write("{\"a\": 1.")
        raise OSError(errno.ENOSPC, "No space left on device", f.name)
    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(OSError):
        scores.get("b", lambda: {"loss": 2.5, "windows": 4})
    assert os.listdir(tmp_path) == ["scores.json"]
    assert protocol.Scores(str(path)).values == {"a": {"loss": 1.5, "windows": 4}}
    path.write_text("{\"a\": 1.")  # torn by something else: one line that says what to do
    with pytest.raises(ValueError, match="scores.json is damaged \\(not JSON\\): remove it"):
        protocol.Scores(str(path))

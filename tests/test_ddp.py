import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_tiny_documents, tiny_args
from runtime import load_checkpoint
from config import TrainConfig


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("kind,epoch_order", [("diffusion", "fixed"), ("ar", "documents")])
def test_two_gloo_processes_equal_one_process_with_twice_the_batch(kind, epoch_order, tmp_path):
    """torchrun with 2 CPU processes (gloo) and batch 4 each trains like 1 process with batch 8, at the papers'
    dropout 0.1 (on the residual branches and the embeddings): each process drops exactly the rows of the global mask
    that one process would."""
    data_dir = make_tiny_documents(tmp_path)
    common = [a for a in tiny_args(data_dir, "", "--max_iters=12", "--eval_interval=6", "--grad_accum=2",
                                   "--elbo_samples=4", "--dataset=docs", f"--epoch_order={epoch_order}",
                                   "--dropout=0.1", "--embd_dropout=0.1")
              if not a.startswith(("--out_dir", "--batch_size", "--dataset=tiny"))]
    script = os.path.join(ROOT, f"train_{kind}.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run([sys.executable, script, *common, "--batch_size=8", f"--out_dir={one}"], check=True, env=env,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             script, *common, "--batch_size=4", f"--out_dir={two}"], env=env, capture_output=True,
                            text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-6000:]
    assert sorted(os.listdir(two)) == sorted(os.listdir(one)) == ["best.pt", "ckpt.pt", "log.jsonl"]
    a, b = read_log(one), read_log(two)
    assert [r["iter"] for r in a] == [r["iter"] for r in b] == [0, 6, 12]
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]
    for ra, rb in zip(a, b):
        assert abs(ra["val_loss"] - rb["val_loss"]) < 1e-5
        if ra["train_loss"] is not None:
            assert abs(ra["train_loss"] - rb["train_loss"]) < 1e-5
            # the gradients themselves, not only the weights (AdamW would hide gradients summed instead of averaged)
            assert ra["grad_norm"] > 0 and abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-4 * ra["grad_norm"]
    wa, wb = load_checkpoint(one + "/ckpt.pt")["model"], load_checkpoint(two + "/ckpt.pt")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)
    # only rank 0 printed the progress
    assert result.stdout.count("eval iter 12") == 1


def notebook_commands():
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        nb = json.load(f)
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code").replace("\\\n", " ")
    return [shlex.split(m) for m in re.findall(r"!python (.+)", source)]


def option_names(script):
    """The --options a script accepts, from its config dataclass or argparse parser."""
    import dataclasses
    import prepare_data
    import sample
    sys.path.insert(0, os.path.join(ROOT, "experiments"))
    import sweep
    import gap_vs_u
    config = {"prepare_data.py": prepare_data.PrepareConfig, "train_ar.py": TrainConfig,
              "train_diffusion.py": TrainConfig, "sample.py": sample.SampleConfig,
              "experiments/sweep.py": sweep.SweepConfig, "experiments/gap_vs_u.py": gap_vs_u.GapConfig}[script]
    return {f.name for f in dataclasses.fields(config)}


def test_colab_notebook_passes_only_existing_flags():
    commands = notebook_commands()
    assert {c[0] for c in commands} >= {"prepare_data.py", "sample.py"}
    checked = 0
    for cmd in commands:
        script, args = cmd[0], cmd[1:]
        assert os.path.isfile(os.path.join(ROOT, script)), script
        groups = [(script, args)]
        if "--" in args:  # sweep: options after -- go to the training scripts
            cut = args.index("--")
            groups = [(script, args[:cut]), ("train_ar.py", args[cut + 1:])]
        for target, opts in groups:
            names = option_names(target)
            for opt in opts:
                if opt.startswith("--"):
                    key = opt[2:].split("=")[0]
                    assert key in names, f"{target} has no option --{key} (colab.ipynb)"
                    checked += 1
    assert checked > 10
    # the notebook keeps no outputs
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        assert all(not c.get("outputs") for c in json.load(f)["cells"])


def test_colab_notebook_runs_the_gpu_recipe_with_settings_it_reads():
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        source = "\n".join("".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code")
    assert '"experiments/gpu_recipe.sh"' in source and "--dataset python --tokenizer bpe" in source
    with open(os.path.join(ROOT, "experiments", "gpu_recipe.sh")) as f:
        recipe = f.read()
    # the settings it passes: environment entries ("U": "300000") and shell ones (U=300000)
    settings = re.findall(r'"([A-Z_]+)": "', source) + re.findall(r"\b([A-Z_]+)=[^\s\"]+", source)
    assert {"BUDGET", "U", "TRAIN"} <= set(settings)
    for name in settings:
        assert f"{name}=${{{name}:-" in recipe, f"gpu_recipe.sh has no setting {name} (colab.ipynb)"


def test_colab_first_cell_stops_with_one_message_when_the_repository_is_unset(tmp_path, monkeypatch, capsys):
    """Run all on a fresh runtime (no checkout in the working folder) with REPO_URL unset: the first code cell
    stops before any clone with one line that says what to set, and nothing else (no SystemExit boilerplate: the
    exception it stops with gives IPython an empty traceback to draw)."""
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        first = next("".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as stop:
        exec(compile(notebook_cell_as_python(first), "colab-cell-1", "exec"), {})
    assert not isinstance(stop.value, SystemExit) and stop.value._render_traceback_() == []
    assert capsys.readouterr().out == "Set REPO_URL in this cell to the address of your fork of this project, then " \
        "Run all again.\n"
    assert os.listdir(tmp_path) == []  # nothing cloned, nothing written


def test_colab_cells_have_ids_and_the_samples_cell_reads_the_u_the_recipe_ran():
    """Every cell has a unique id (nbformat 4.5); the samples cell reads the U the recipe cell ran, not a fixed one."""
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        nb = json.load(f)
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids) and (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert "u300000" not in code[-1] and "recipe_u" in code[-1] and any("recipe_u = fit.group(1)" in cell for cell in code)


def notebook_cell_as_python(source):
    """A notebook cell as plain Python: IPython's shell and magic lines become no-ops (a clone, a run)."""
    return "\n".join(line[:len(line) - len(line.lstrip())] + "pass" if line.strip().startswith(("!", "%"))
                     else line for line in source.splitlines())


def test_colab_a_clone_that_fails_stops_the_first_cell_in_one_line(tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        first = next("".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code")
    first = first.replace('REPO_URL = ""', 'REPO_URL = "https://example.invalid/no-such-fork.git"')
    monkeypatch.chdir(tmp_path)  # the clone (a no-op here) leaves no checkout, as a wrong or private address does
    with pytest.raises(Exception) as stop:
        exec(compile(notebook_cell_as_python(first), "colab-cell-1", "exec"), {})
    assert stop.value._render_traceback_() == []  # IPython draws nothing more than the line
    assert capsys.readouterr().out == "git could not clone https://example.invalid/no-such-fork.git (its reason is " \
        "above): check the address and that the fork is public.\n"


def test_colab_every_later_cell_says_in_one_line_what_it_lacks(tmp_path, monkeypatch, capsys):
    """Run all where the first cell did not clone (or on a CPU runtime, without the recipe's outputs): each later
    code cell prints one line naming what is missing, and raises nothing."""
    with open(os.path.join(ROOT, "colab.ipynb")) as f:
        later = ["".join(c["source"]) for c in json.load(f)["cells"] if c["cell_type"] == "code"][1:]
    assert len(later) >= 5
    monkeypatch.chdir(tmp_path)
    for i, cell in enumerate(later):
        exec(compile(notebook_cell_as_python(cell), f"colab-cell-{i + 2}", "exec"), {})
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        # no checkout: the reason is the missing project, never a missing GPU
        assert len(lines) == 1 and lines[0].startswith("The project is not here: run the first cell"), (i + 2, lines)
    assert os.listdir(tmp_path) == []

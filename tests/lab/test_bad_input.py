"""Bad input never costs a run: every option of every script, given a bad value, is one line on stderr and exit
status 1, with no traceback, and every file in the folders it could touch stays byte-identical."""
import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lab import launch

import compare
import evaluate
import prepare_data
import sample
import train_ar
import train_diffusion
from lab.errors import run_cli
from conftest import ROOT, tiny_args, run_training
from config import TrainConfig

sys.path.insert(0, os.path.join(ROOT, "experiments"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import elbo_spread  # noqa: E402
import sample_quality  # noqa: E402
import sweep  # noqa: E402

TRAIN = {"ar": train_ar, "diffusion": train_diffusion}


def snapshot(folder):
    """path -> sha256 of every file under folder."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return files


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """A data folder and a finished AR and diffusion run in it: what a bad command must not damage."""
    from conftest import make_tiny_data
    root = tmp_path_factory.mktemp("victim")
    data_dir = make_tiny_data(root)
    for kind, script in TRAIN.items():
        run_training(script, tiny_args(data_dir, str(root / kind), "--max_iters=20", "--eval_interval=10", "--elbo_samples=2"))
    return root, data_dir


def one_line_error(call, argv, monkeypatch=None):
    """Run a script's main as its command line does; returns the message it exits with (status 1)."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: call(argv))
    message = exit_info.value.code
    assert isinstance(message, str), f"{argv}: exit code {message!r}, not a one-line message"
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, message
    return message


def argv_main(module):
    """main() of a script that reads sys.argv."""
    def call(argv):
        saved = sys.argv
        sys.argv = [module.__file__, *argv]
        try:
            module.main()
        finally:
            sys.argv = saved
    return call


def bad_values(field):
    """Values that the field's declared rule (or its type) refuses."""
    rule, kind = field.metadata.get("rule", {}), {"int": int, "float": float}.get(field.type, field.type)
    if kind is bool or kind == "bool":
        return ["maybe"]
    if "choices" in rule:
        return ["nope"]
    values = ["abc"] if kind in (int, float) else []
    if kind is float:
        values.append("nan")
    if "items" in rule:
        values.append("1,x")
        low = rule.get("low", rule.get("above"))
        if low is not None:
            values.append(f"{low - 1:g}")
        return values
    if "low" in rule:
        values.append(f"{rule['low'] - 1:g}")
    if "above" in rule:
        values += [f"{rule['above']:g}", f"{rule['above'] - 1:g}"]
    if "high" in rule:
        values.append(f"{rule['high'] + 1:g}")
    if "below" in rule:
        values.append(f"{rule['below']:g}")
    return values


def scripts(root, data_dir):
    """(script, its config class, how to call it, the options that make the rest of its command valid)."""
    import bpe_speed
    import sample_speed
    import throughput
    import vs_nanogpt
    import vs_nanogpt_train
    out = str(root / "ar")
    train = [(f"train_{kind}.py", TrainConfig,
              lambda argv, kind=kind: run_training(TRAIN[kind], argv),
              tiny_args(data_dir, out, "--overwrite", "--max_iters=4")) for kind in TRAIN]
    return train + [
        ("sample.py", sample.SampleConfig, launch.sample_run, [f"--ckpt={out}"]),
        ("evaluate.py", evaluate.EvalConfig, launch.evaluate_run, [f"--ckpt={out}"]),
        ("prepare_data.py", prepare_data.PrepareConfig, launch.prepare_run, [f"--data_dir={data_dir}"]),
        ("experiments/sweep.py", sweep.SweepConfig, sweep.main, [f"--out={root / 'sweep'}"]),
        ("compare.py", compare.CompareConfig, compare.main, [out, f"--plot={root / 'p.png'}"]),
        ("experiments/elbo_spread.py", elbo_spread.SpreadConfig, argv_main(elbo_spread), [f"--ckpt={root}/diffusion"]),
        ("experiments/sample_quality.py", sample_quality.QualityConfig, sample_quality.main,
         [f"--ref={out}", f"--runs={out}"]),
        ("bench/throughput.py", throughput.BenchConfig, argv_main(throughput), []),
        ("bench/sample_speed.py", sample_speed.SpeedConfig, argv_main(sample_speed), []),
        ("bench/bpe_speed.py", bpe_speed.BenchConfig, argv_main(bpe_speed), []),
        ("bench/vs_nanogpt.py", vs_nanogpt.VersusConfig, argv_main(vs_nanogpt), []),
        ("bench/vs_nanogpt_train.py", vs_nanogpt_train.ProgramsConfig, argv_main(vs_nanogpt_train), []),
    ]


def test_every_option_of_every_script_refuses_bad_values_in_one_line(victim):
    root, data_dir = victim
    before = snapshot(root)
    driven = 0
    for script, config, call, valid in scripts(root, data_dir):
        for field in dataclasses.fields(config):
            for value in bad_values(field):
                argv = [a for a in valid if not a.startswith(f"--{field.name}=")] + [f"--{field.name}={value}"]
                message = one_line_error(call, argv)
                assert f"--{field.name}" in message, (script, field.name, value, message)
                driven += 1
    assert driven > 150
    print(f"{driven} bad values driven")
    assert snapshot(root) == before


@pytest.mark.parametrize("extra", [["--n_embd=30", "--n_head=4"], ["--n_embd=36", "--n_head=4"],
                                   ["--batch_size=0"], ["--eval_interval=0"], ["--epochs=0"], ["--epochs=-1"],
                                   ["--grad_accum=0"], ["--dropout=1.5"], ["--lr=-1"], ["--elbo_samples=0"],
                                   ["--eval_batch_size=0"], ["--device=cuda:7"], ["--device=gpu"],
                                   ["--unique_tokens=99999999"], ["--block_size=100000"]])
@pytest.mark.parametrize("kind", ["ar", "diffusion"])
def test_overwrite_with_a_bad_value_keeps_the_old_run(kind, extra, victim):
    root, data_dir = victim
    before = snapshot(root)
    script = TRAIN[kind]
    one_line_error(lambda argv: run_training(script, argv),
                   tiny_args(data_dir, str(root / kind), "--overwrite", *extra))
    assert snapshot(root) == before


def corrupt_copy(data_dir, tmp_path, token):
    """A copy of the tiny data whose train.bin holds `token` at position 5."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    train = np.fromfile(copy / "tiny" / "train.bin", dtype=np.uint16)
    train[5] = token
    train.tofile(copy / "tiny" / "train.bin")
    return str(copy)


@pytest.mark.parametrize("token,what", [(256, r"\[MASK\] id"), (300, "past the vocabulary"),
                                        (65535, "past the vocabulary")])
def test_token_ids_outside_the_vocabulary_are_named_at_load(token, what, victim, tmp_path):
    _, data_dir = victim
    bad = corrupt_copy(data_dir, tmp_path, token)
    message = one_line_error(lambda argv: run_training(train_diffusion, argv),
                             tiny_args(bad, str(tmp_path / "run")))
    assert f"token id {token}" in message and "re-run prepare_data.py" in message
    assert re.search(what, message)
    assert not os.path.exists(tmp_path / "run")


def test_prompt_files_that_are_not_utf8_and_inputs_that_are_not_text(victim, tmp_path):
    root, data_dir = victim
    (tmp_path / "prompt.bin").write_bytes(b"The \xff\xfe caf\xe9")
    message = one_line_error(launch.sample_run, [f"--ckpt={root}/ar", f"--start=FILE:{tmp_path / 'prompt.bin'}"])
    assert "not UTF-8" in message
    (tmp_path / "binary.dat").write_bytes(bytes(range(256)) * 40)
    before = snapshot(tmp_path)
    message = one_line_error(launch.prepare_run, [f"--input={tmp_path / 'binary.dat'}", f"--data_dir={tmp_path / 'd'}"])
    assert "not text" in message and snapshot(tmp_path) == before
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 na\xefve \xe0 la r\xe9sum\xe9 ".encode("latin-1") * 50)
    message = one_line_error(launch.prepare_run, [f"--input={tmp_path / 'latin1.txt'}", f"--data_dir={tmp_path / 'd'}"])
    assert "not UTF-8" in message and not os.path.exists(tmp_path / "d")


def test_a_folder_without_a_checkpoint_is_reused_and_resume_there_says_start_without_it(victim, tmp_path, capsys):
    root, data_dir = victim
    folder = tmp_path / "half"  # what a start killed before its first checkpoint leaves
    folder.mkdir()
    shutil.copy(root / "ar" / "log.jsonl", folder / "log.jsonl")
    shutil.copy(root / "ar" / "best.pt", folder / "best.pt")
    message = one_line_error(lambda argv: run_training(train_ar, argv),
                             tiny_args(data_dir, str(folder), "--resume"))
    assert "holds no checkpoint" in message and "without --resume" in message
    run_training(train_ar, tiny_args(data_dir, str(folder), "--max_iters=6", "--eval_interval=3"))
    assert "starting afresh there" in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == ["best.pt", "ckpt.pt", "log.jsonl"]
    assert [line.count('"iter"') for line in open(folder / "log.jsonl")] == [1, 1, 1]


def test_a_fresh_overwrite_replaces_the_old_run_by_its_own_writes(victim, tmp_path):
    """--overwrite deletes nothing: the new run's iteration-0 best.pt and ckpt.pt replace the old ones, so at any
    moment the folder holds one loadable run."""
    from runtime import load_checkpoint
    root, data_dir = victim
    folder = tmp_path / "run"
    shutil.copytree(root / "ar", folder)
    assert load_checkpoint(str(folder / "ckpt.pt"))["iter"] == 20
    calls = []

    def stops_at_once(*a):
        calls.append(1)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_training(train_ar, training_loss=stops_at_once, argv=tiny_args(data_dir, str(folder), "--overwrite", "--max_iters=8", "--eval_interval=4"))
    new = load_checkpoint(str(folder / "ckpt.pt"))
    assert new["iter"] == 0 and new["config"]["max_iters"] == 8
    assert load_checkpoint(str(folder / "best.pt"))["iter"] == 0
    assert [line.count('"iter": 0') for line in open(folder / "log.jsonl")] == [1]


@pytest.mark.parametrize("argv,expected", [
    (["train_ar.py", "--batch_size=0"], "--batch_size 0: must be at least 1"),
    (["sample.py", "--steps=-4"], "--steps -4: must be at least 0"),
    (["prepare_data.py", "--vocab_size=100", "--tokenizer=bpe"],
     "--vocab_size 100: must be at least 256 and at most 65534"),
])
def test_the_real_command_line_exits_1_with_one_line_on_stderr(argv, expected, tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, argv[0]), *argv[1:]], capture_output=True,
                            text=True, cwd=str(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: {expected}"]
    assert os.listdir(tmp_path) == []


def test_every_default_obeys_its_own_rule():
    import bpe_speed
    import sample_speed
    import throughput
    import vs_nanogpt
    import vs_nanogpt_train
    from lab.checks import check_value
    for config in [TrainConfig, sample.SampleConfig, evaluate.EvalConfig, prepare_data.PrepareConfig, sweep.SweepConfig,
                   elbo_spread.SpreadConfig, sample_quality.QualityConfig, throughput.BenchConfig,
                   sample_speed.SpeedConfig, bpe_speed.BenchConfig, vs_nanogpt.VersusConfig,
                   vs_nanogpt_train.ProgramsConfig]:
        instance = config()
        for field in dataclasses.fields(config):
            check_value(field.name, getattr(instance, field.name), field.metadata.get("rule", {}))
            # every number has a declared range, so the test above drives it with values outside it
            if field.type in (int, float, "int", "float"):
                assert field.metadata.get("rule"), f"{config.__name__}.{field.name} declares no allowed range"


def copy_data(victim, tmp_path):
    """A copy of the victim's data folder to damage: (data_dir, its tiny folder)."""
    shutil.copytree(os.path.join(victim[1], "tiny"), tmp_path / "data" / "tiny")
    return str(tmp_path / "data"), tmp_path / "data" / "tiny"


def train_error(kind, data_dir, out):
    script = TRAIN[kind]
    return one_line_error(lambda argv: run_training(script, argv),
                          tiny_args(data_dir, out, "--max_iters=2"))


@pytest.mark.parametrize("damage,expected", [
    ({"n_vocab": "256"}, "lacks n_vocab (or holds the wrong type)"),
    ({"tokenizer": "sentencepiece"}, "names an unknown tokenizer 'sentencepiece'"),
    ({"train_tokens": 0}, "says its train split holds no tokens"),
])
def test_a_damaged_meta_json_is_one_line_naming_the_command_that_repairs_it(damage, expected, victim, tmp_path):
    """The message names --overwrite, and prepare_data.py, which would keep a folder prepared from the same inputs,
    does not keep a damaged one: the way out is one command, not a loop."""
    import json
    data_dir, folder = copy_data(victim, tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(dict(meta, **damage)))
    if damage.get("train_tokens") == 0:
        (folder / "train.bin").write_bytes(b"")  # an empty split whose meta agrees
    message = train_error("ar", data_dir, str(tmp_path / "run"))
    assert expected in message and "prepare_data.py and --overwrite" in message, message
    assert not os.path.exists(tmp_path / "run")
    assert launch.prepared_from(str(folder)) is None  # not kept as "prepared from the same inputs"


def test_a_tokenizer_file_not_the_one_that_made_the_data_is_refused_in_one_line(tmp_path):
    from conftest import make_tiny_documents
    data_dir = make_tiny_documents(tmp_path, "bpe", vocab_size=280)
    ranks = tmp_path / "data" / "docs" / "tokenizer.tiktoken"
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join(lines[:-1]) + "\n")  # a valid ranks file, one merge short: another tokenizer
    out = str(tmp_path / "run")
    message = one_line_error(lambda argv: run_training(train_ar, argv),
                             [a for a in tiny_args(data_dir, out, "--max_iters=2") if a != "--dataset=tiny"]
                             + ["--dataset=docs"])
    assert "is not the tokenizer that made this data" in message and "--overwrite" in message, message


def test_checkpoints_without_their_entries_or_with_damaged_ranks_are_one_line_for_sample_py(victim, tmp_path):
    import torch
    from runtime import load_checkpoint
    ckpt = load_checkpoint(os.path.join(victim[0], "ar", "ckpt.pt"))
    for name, broken in (("no_args", {k: v for k, v in ckpt.items() if k != "model_args"}),
                         ("no_tokenizer", dict(ckpt, meta={k: v for k, v in ckpt["meta"].items() if k != "tokenizer"})),
                         ("bad_ranks", dict(ckpt, meta=dict(ckpt["meta"], tokenizer="bpe", ranks_sha256="x",
                                                            ranks_text="not base64 at all!\n")))):
        path = str(tmp_path / f"{name}.pt")
        torch.save(broken, path)
        message = one_line_error(launch.sample_run, [f"--ckpt={path}", "--max_new_tokens=2", "--num_samples=1"])
        expected = {"no_args": "lacks model_args", "no_tokenizer": "lacks tokenizer",
                    "bad_ranks": "ranks file is damaged"}[name]
        assert expected in message, message


def test_a_reader_that_goes_away_ends_a_script_quietly():
    """`python sample.py ... | head`: when the reader closes the pipe, the script stops with no traceback."""
    script = "from lab.errors import run_cli\nrun_cli(lambda: [print('x' * 80, flush=True) for _ in range(10 ** 6)])"
    result = subprocess.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} | head -c 10", shell=True,
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout == "x" * 10 and result.stderr == "", result.stderr[-500:]

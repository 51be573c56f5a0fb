"""The GPU path's defects, pinned on a CPU: what a resume keeps, the number format across devices, RNG state from a
host with more GPUs, the backend for --device=cpu under torchrun, exact GPU names for MFU, and checkpoints written
only where they are due (the best weights waiting in memory)."""
import json
import os

import pytest

from lab import launch
import torch

import runtime
import data
from config import TrainConfig
import train_ar
from conftest import tiny_args, run_training
from runtime import load_checkpoint
from test_training import read_log, train
from runtime import peak_flops, pick_dtype, rng_state, set_rng_state, setup_distributed
from lab import folders
from lab.launch import configure


def test_a_resumed_run_keeps_every_saved_option_the_command_line_does_not_give(data_dir, tmp_path):
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=20", "--eval_interval=10", "--log_interval=7", "--stop_after_s=0.01")
    ckpt = load_checkpoint(out + "/ckpt.pt")
    assert ckpt["iter"] < 20  # stopped early, checkpointed
    # --compile is saved as if the run had been started with it (compiling itself needs a C++ toolchain)
    ckpt["config"]["compile"] = True
    torch.save(ckpt, out + "/ckpt.pt")
    config, _, given = configure(train_ar, ["--resume", f"--out_dir={out}"])
    assert config.compile and config.log_interval == 7 and config.stop_after_s == 0.01 and config.resume
    assert given == {"resume", "out_dir"}
    config, _, _ = configure(train_ar, ["--resume", f"--out_dir={out}", "--log_interval=3", "--compile=false"])
    assert config.log_interval == 3 and not config.compile and config.n_layer == 2
    with pytest.raises(ValueError, match="--n_layer"):
        configure(train_ar, ["--resume", f"--out_dir={out}", "--n_layer=3"])


def test_the_number_format_is_saved_and_a_resume_elsewhere_says_what_changed(monkeypatch, capsys):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # a T4 run resumed on a CPU: float32, said in one line
    assert pick_dtype(cpu, "auto", saved="float16") == torch.float32
    assert "saved in float16 and continues in float32 on cpu" in capsys.readouterr().out
    # a T4 run resumed on an A100 keeps float16 (auto would pick bf16 there), silently
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert pick_dtype(cuda, "auto", saved="float16") == torch.float16
    assert capsys.readouterr().out == ""
    # an A100 bf16 run resumed on a T4 (bf16 only emulated): float16, said
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert pick_dtype(cuda, "auto", saved="bfloat16") == torch.float16
    assert "saved in bfloat16 and continues in float16 on cuda" in capsys.readouterr().out
    # --dtype given on the command line wins, and the change is said
    assert pick_dtype(cuda, "float32", saved="bfloat16") == torch.float32
    assert "continues in float32" in capsys.readouterr().out
    # a fresh run: this device's choice, nothing said
    assert pick_dtype(cpu) == torch.float32
    assert capsys.readouterr().out == ""


def test_a_cpu_run_saved_as_float16_resumes_on_a_cpu_in_float32_and_finishes(data_dir, tmp_path, capsys):
    """The T4 case on a CPU: a checkpoint whose format and grad scaler state this device cannot use."""
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=20", "--eval_interval=10", "--stop_after_s=0.01")
    ckpt = load_checkpoint(out + "/ckpt.pt")
    assert ckpt["dtype"] == "float32"
    ckpt.update(dtype="float16", scaler={"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                          "growth_interval": 2000, "_growth_tracker": 0})
    torch.save(ckpt, out + "/ckpt.pt")
    capsys.readouterr()
    train("ar", data_dir, out, "--resume", "--stop_after_s=0")
    assert "continues in float32 on cpu" in capsys.readouterr().out
    assert read_log(out)[-1]["done"] and load_checkpoint(out + "/ckpt.pt")["dtype"] == "float32"


def test_rng_state_of_the_runs_own_gpu_only_and_restored_only_on_a_gpu(monkeypatch):
    assert rng_state(torch.device("cpu"))["cuda"] is None
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: calls.append((state, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: f"state of {device}")
    torch_state = torch.get_rng_state()
    assert rng_state(torch.device("cuda", 1))["cuda"] == "state of cuda:1"
    set_rng_state({"torch": torch_state, "cuda": "mine"}, torch.device("cuda", 0))
    set_rng_state({"torch": torch_state, "cuda": "mine"}, torch.device("cpu"))  # a GPU run resumed on a CPU
    set_rng_state({"torch": torch_state, "cuda": None}, torch.device("cuda", 0))  # a CPU run resumed on a GPU
    assert calls == [("mine", torch.device("cuda", 0))]


@pytest.mark.parametrize("device,backend", [("cpu", "gloo"), ("cuda", "nccl")])
def test_torchrun_picks_the_backend_of_the_runs_device_not_of_the_host(device, backend, monkeypatch):
    import torch.distributed as dist
    chosen = []
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a host with GPUs
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    rank, world_size, run_device = setup_distributed(torch.device(device))
    assert (rank, world_size, run_device.type) == (0, 2, device)
    assert chosen == [backend]


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA H100 NVL", None), ("NVIDIA L4", 121e12), ("NVIDIA L40", None),
                                       ("NVIDIA L40S", 362e12), ("NVIDIA A10G", None), ("Tesla T4", 65e12),
                                       ("NVIDIA GeForce RTX 4090", 82.6e12), ("NVIDIA GeForce RTX 4090 D", None)])
def test_gpu_peaks_by_exact_name_and_unknown_rather_than_wrong(name, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == peak
    assert peak_flops(torch.device("cpu")) is None


def test_checkpoints_only_where_due_and_best_pt_holds_the_best_evaluations_weights(data_dir, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    saved, real_val = [], []
    real_save = folders.atomic_save

    def recording_save(obj, path):
        saved.append((os.path.basename(path), obj["iter"]))
        real_save(obj, path)

    def validation_worse_after_iteration_20(model, windows, window_ids, config):
        nats, count = train_ar.evaluate_loss(model, windows, window_ids, config)
        real_val.append(nats / count)
        return nats + (10.0 * count if len(real_val) > 5 else 0.0), count  # evaluations 6.. (iter 25..) look bad
    monkeypatch.setattr(folders, "atomic_save", recording_save)
    run_training(train_ar, tiny_args(data_dir, out, "--max_iters=40", "--eval_interval=5", "--ckpt_interval=1000000"),
                 evaluate_loss=validation_worse_after_iteration_20)
    assert [r["iter"] for r in read_log(out)][4] == 20 and real_val[4] < real_val[0]
    # a fresh run checkpoints at iteration 0 and then only at its end; best.pt goes with each checkpoint
    assert saved == [("best.pt", 0), ("ckpt.pt", 0), ("best.pt", 20), ("ckpt.pt", 40)]
    best = load_checkpoint(out + "/best.pt")
    model, config = runtime.model_from_checkpoint(best), TrainConfig(**best["config"])
    val = data.val_windows(data.load_tokens(os.path.join(data_dir, "tiny"), "val"), config.block_size,
                           config.eval_windows)
    with torch.no_grad():
        nats, count = train_ar.evaluate_loss(model, val, torch.arange(len(val)), config)
    assert best["best_val"] == pytest.approx(real_val[4]) and abs(nats / count - real_val[4]) < 1e-5
    assert abs(nats / count - real_val[-1]) > 1e-3  # the final weights are different ones


def test_no_non_finite_weights_reach_best_pt_either(data_dir, tmp_path):
    out = str(tmp_path / "run")
    calls = []

    def poisoned(*args):
        calls.append(1)
        loss = train_ar.training_loss(*args)
        return loss * float("nan") if len(calls) > 6 else loss
    with pytest.raises(ValueError, match="not finite at iteration 6"):
        run_training(train_ar, training_loss=poisoned, argv=tiny_args(data_dir, out, "--max_iters=40", "--eval_interval=5", "--ckpt_interval=1000000"))
    for name in ("best.pt", "ckpt.pt"):
        ckpt = load_checkpoint(os.path.join(out, name))
        assert ckpt["iter"] <= 5 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_gpu_smoke_on_a_cpu_runs_what_a_cpu_can_and_says_what_it_skips(tmp_path):
    from conftest import ROOT
    import subprocess
    import sys
    # the interpreter running the tests, whatever `python3` on PATH is
    env = dict(os.environ, OUT=str(tmp_path / "smoke"), DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="2",
               PYTHON=sys.executable)
    script = os.path.join(ROOT, "experiments", "gpu_smoke.sh")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    checks = [line.split()[1] for line in lines if line.startswith("ok ")]
    assert checks == ["data", "cpu_train_stop", "cpu_resume", "sample_diffusion", "evaluate"]
    assert any(line.startswith("skip") and "no GPU here" in line for line in lines)
    assert lines[-1] == "smoke: every check passed"
    log = read_log(str(tmp_path / "smoke" / "diffusion"))
    assert log[-1]["done"] and log[-1]["iter"] == 20  # stopped, checkpointed, resumed to the end
    # the first failure stops it, named, with its last lines
    (tmp_path / "not_a_folder").write_text("")
    env["DATA_DIR"] = str(tmp_path / "not_a_folder")
    result = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 1 and "FAIL  data" in result.stdout and "ok " not in result.stdout
    assert "every check passed" not in result.stdout


def test_prepare_keeps_a_folder_made_from_the_same_inputs_and_replaces_another_only_with_overwrite(tmp_path, capsys):
    args = [f"--data_dir={tmp_path}", "--tokenizer=bpe", "--vocab_size=300"]
    folder = launch.prepare_run(args)
    stamp = os.path.getmtime(os.path.join(folder, "train.bin"))
    capsys.readouterr()
    assert launch.prepare_run(args) == folder
    assert "kept" in capsys.readouterr().out and os.path.getmtime(os.path.join(folder, "train.bin")) == stamp
    other = args[:-1] + ["--vocab_size=290", f"--name={os.path.basename(folder)}"]
    with pytest.raises(ValueError, match="already holds data prepared from other text or options.*--overwrite"):
        launch.prepare_run(other)  # other options: refused, the folder untouched
    assert os.path.getmtime(os.path.join(folder, "train.bin")) == stamp
    launch.prepare_run(other + ["--overwrite"])
    assert "wrote" in capsys.readouterr().out and json.load(open(os.path.join(folder, "meta.json")))["n_vocab"] == 290
    with open(os.path.join(folder, "val.bin"), "ab") as f:  # a damaged folder is not kept
        f.write(b"\0\0")
    with pytest.raises(ValueError, match="--overwrite"):
        launch.prepare_run(other)
    launch.prepare_run(other + ["--overwrite"])
    assert "wrote" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(folder)]  # no temporary folder, no lock left


def test_training_steps_do_not_wait_for_the_device_between_logs(data_dir, tmp_path, monkeypatch):
    """Reading a tensor's value (item, float, int, bool) makes the CPU wait for the GPU: a run of 30 steps must read
    no more values than a run of 10 with the same evaluations, progress lines and checkpoints."""
    import sys
    from conftest import ROOT
    reads = []

    def counted(real):
        def read(self):
            caller = sys._getframe(1).f_code.co_filename  # the project's reads only (CPU AdamW reads its step count)
            if caller.startswith(ROOT) and "site-packages" not in caller:
                reads.append(caller)
            return real(self)
        return read
    for name in ("item", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    counts = []
    for steps in (10, 30):
        reads.clear()
        train("diffusion", data_dir, str(tmp_path / f"run{steps}"), f"--max_iters={steps}", f"--eval_interval={steps}",
              f"--log_interval={steps}", "--elbo_samples=2", "--dropout=0.1")
        counts.append(len(reads))
    assert counts[0] == counts[1] > 0


def test_ctrl_c_is_one_line_and_exit_130_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    from lab.errors import run_cli

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as stop:
        run_cli(interrupted)
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted\n"
    # Ctrl-C in the middle of a save: the temporary file goes, the previous checkpoint stays
    path = str(tmp_path / "ckpt.pt")
    folders.atomic_save({"kind": "ar", "model": {"w": torch.ones(2)}}, path)

    def save_then_interrupt(obj, f):
        open(f, "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        folders.atomic_save({"kind": "ar", "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"] and torch.equal(torch.load(path)["model"]["w"], torch.ones(2))


def test_ctrl_c_in_a_real_script_is_one_line_not_a_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    # a script at a terminal has Ctrl-C's default, even where this suite runs with SIGINT ignored (a background job)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "prepare_data.py"), "--dataset=python",
                             "--tokenizer=bpe", "--vocab_size=8000", f"--data_dir={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / "python_bpe8000.lock"  # taken after the corpus is read, before the BPE trains
    while not lock.exists() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the BPE training (a few seconds at this size)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "interrupted\n", err[-500:]


def test_one_writer_per_run_folder_and_a_dead_writers_lock_is_taken_over(data_dir, tmp_path, capsys):
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    out = str(tmp_path / "run")
    args = [sys.executable, os.path.join(ROOT, "train_ar.py"), *tiny_args(data_dir, out, "--max_iters=100000",
                                                                          "--eval_interval=50")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not os.path.exists(os.path.join(out, "ckpt.pt")) and time.time() < deadline:
            time.sleep(0.05)
        # a second writer (here this process: --resume beside the live run; --overwrite takes the same path)
        with pytest.raises(ValueError, match=f"run is in use by process {first.pid} on "):
            train("ar", data_dir, out, "--resume")
        with pytest.raises(ValueError, match=f"run is in use by process {first.pid} on "):
            train("ar", data_dir, out, "--overwrite")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    # the killed run's lock is stale: --resume takes it over, says so, continues, and removes it at the end
    train("ar", data_dir, out, "--resume", "--stop_after_s=0.5")
    assert "was locked by a process that has ended: taking the lock over" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, ".lock"))


def test_foreign_checkpoints_meta_and_paths_are_one_line(data_dir, tmp_path):
    import json
    out = str(tmp_path / "run")
    train("ar", data_dir, out, "--max_iters=10", "--eval_interval=10")

    from lab.errors import run_cli

    def command(script, *args):  # the script's command line, in this process: (exit status, stderr)
        main = {"sample.py": lambda: launch.sample_run(list(args)),
                "train_ar.py": lambda: run_training(train_ar, list(args))}[script]
        with pytest.raises(SystemExit) as stop:
            run_cli(main)
        assert stop.value.code != 0 and "\n" not in str(stop.value.code), stop.value.code
        return str(stop.value.code)
    # an output folder under a file: the path and the reason (an OSError), not a traceback
    (tmp_path / "a_file").write_text("")
    assert command("train_ar.py", *tiny_args(data_dir, str(tmp_path / "a_file" / "run"))) == \
        f"error: {tmp_path / 'a_file' / 'run'}: Not a directory"
    # a checkpoint from a newer version: an option this version does not know
    ckpt = load_checkpoint(out + "/ckpt.pt")
    ckpt["config"]["label_smoothing"] = 0.1
    torch.save(ckpt, out + "/ckpt.pt")
    assert "another version of this project (options label_smoothing" in command(
        "train_ar.py", f"--out_dir={out}", "--resume")
    # model_args that disagree with the weights
    best = load_checkpoint(out + "/best.pt")
    best["model_args"]["n_embd"] = 64
    best["model_args"]["n_head"] = 4
    torch.save(best, out + "/best.pt")
    assert "its weights do not fit its model" in command("sample.py", f"--ckpt={out}/best.pt")
    # a meta.json without the keys a data folder needs
    meta_path = os.path.join(data_dir, "tiny", "meta.json")
    meta = json.load(open(meta_path))
    del meta["n_vocab"]
    json.dump(meta, open(meta_path, "w"))
    assert "lacks n_vocab" in command("train_ar.py", *tiny_args(data_dir, str(tmp_path / "other")))


def test_a_run_resumes_and_is_scored_only_on_the_data_it_was_trained_on(data_dir, tmp_path):
    from conftest import tiny_text
    from prepare_data import prepare
    out = str(tmp_path / "run")
    train("diffusion", data_dir, out, "--max_iters=20", "--eval_interval=10", "--elbo_samples=2",
          "--stop_after_s=0.01")
    text = tiny_text(seed=5)  # the same folder prepared again, from other text: the same tokenizer, other tokens
    prepare(text[:9000], text[9000:], os.path.join(data_dir, "tiny"), "bytes", "test")
    with pytest.raises(ValueError, match=r"prepared again since the run started: the run's data is sha256 \w{12}, "
                                        r".* the folder's is sha256 \w{12}"):
        train("diffusion", data_dir, out, "--resume")
    with pytest.raises(ValueError, match="prepared again since the run started"):
        launch.evaluate_run([f"--ckpt={out}", "--mc_items=10", "--mc_context=8", "--mc_continuation=4"])
    # scoring on a folder given explicitly is what the user asked for
    launch.evaluate_run([f"--ckpt={out}", "--mc_items=10", "--mc_context=8", "--mc_continuation=4",
                   f"--data_dir={data_dir}", "--dataset=tiny"])


def test_the_benchmark_times_its_steps_apart_from_the_warmup_steps_that_compile(monkeypatch):
    """bench/throughput.py's tokens/s come from the timed steps only; the untimed warmup (where --compile compiles)
    is reported as its own seconds, and --compile_mode reaches torch.compile."""
    import sys
    import time
    from conftest import ROOT
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import throughput
    calls = []

    def slow_warmup(script, config, device, dtype, windows, compile=False, compile_mode="default"):
        calls.append((compile, compile_mode))

        def step(i):
            time.sleep(0.1 if i < config.warmup else 0.01)
            return torch.zeros(())
        return torch.nn.Linear(2, 3, bias=False), step
    monkeypatch.setattr(throughput, "training_step", slow_warmup)
    monkeypatch.setattr(torch.nn.Linear, "num_params", lambda self: self.weight.numel(), raising=False)
    config = throughput.BenchConfig(warmup=2, steps=3, batch_size=2, block_size=8, compile=True,
                                    compile_mode="reduce-overhead")
    measured = throughput.bench("ar", train_ar, config, torch.device("cpu"), torch.float32)
    assert measured.warmup_s >= 0.2 and 2 * 8 / 0.01 / 3 < measured.tokens_per_s <= 2 * 8 / 0.01
    assert calls == [(True, "reduce-overhead")] and measured.params == 6


FAKE_TRAIN_PY = '''
import json, os, pickle, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open(os.path.join("data", args["dataset"], "meta.pkl"), "rb") as f:
    vocab = pickle.load(f)["vocab_size"]
tokens = os.path.getsize(os.path.join("data", args["dataset"], "train.bin")) // 2
with open(LOG, "a") as f:
    f.write(json.dumps({"cwd": os.getcwd(), "args": args, "vocab": vocab, "tokens": tokens,
                        "mmap": os.environ.get("MALLOC_MMAP_THRESHOLD_")}) + "\\n")
print("step 0: train loss 5.5, val loss 5.5")
for i, ms in enumerate([90.0, 10.0, 20.0, 40.0][:int(args["max_iters"])]):
    print(f"iter {i}: loss 5.0, time {ms:.2f}ms, mfu -100.00%")
'''


def test_the_programs_benchmark_runs_a_copy_of_train_py_with_and_without_the_allocator_setting(tmp_path, monkeypatch,
                                                                                              capsys):
    """bench/vs_nanogpt_train.py: train.py runs on a copy with a bytes dataset, once as it ships and once under the
    allocator setting, its tokens/s from the median of the logged times after `skip`; ours from bench/throughput.py;
    the ratios are ours over train.py's; the nanoGPT checkout is left as it was."""
    import sys
    from conftest import ROOT
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import vs_nanogpt_train
    checkout, log = tmp_path / "nanoGPT", tmp_path / "calls.jsonl"
    checkout.mkdir()
    (checkout / "train.py").write_text(f"LOG = {str(log)!r}\n" + FAKE_TRAIN_PY)
    (checkout / "model.py").write_text("")
    (checkout / "configurator.py").write_text("")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(sys, "argv", ["vs_nanogpt_train.py", f"--nanogpt={checkout}", "--n_layer=1", "--n_head=1",
                                      "--n_embd=16", "--block_size=8", "--batch_size=2", "--iters=4", "--skip=1",
                                      "--rounds=1"])
    vs_nanogpt_train.main()
    lines = capsys.readouterr().out.splitlines()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["mmap"] for c in calls] == [None, str(32 << 20)]
    for c in calls:
        assert c["cwd"] != str(checkout) and c["vocab"] == 256 and c["tokens"] > 100_000
        assert {k: c["args"][k] for k in ("device", "dtype", "compile", "batch_size", "block_size", "max_iters")} == {
            "device": "cpu", "dtype": "float32", "compile": "False", "batch_size": "2", "block_size": "8",
            "max_iters": "4"}
    assert sorted(os.listdir(checkout)) == ["configurator.py", "model.py", "train.py"]
    # 2 x 8 tokens over the median of 10, 20 and 40 ms (the first logged iteration skipped): 800 tokens/s
    round_1 = lines[2].split()
    assert round_1[:3] == ["1", "800", "800"]
    ar, diffusion = (float(v.replace(",", "")) for v in round_1[3:])
    assert ar > 0 and diffusion > 0
    assert lines[3].startswith(f"ar         {ar / 800:.2f}x train.py as it ships, {ar / 800:.2f}x")
    assert lines[4].startswith(f"diffusion  {diffusion / 800:.2f}x train.py as it ships")
    # a folder without nanoGPT's files, or a vocabulary without every byte, is one line before anything runs
    for argv, message in (([f"--nanogpt={tmp_path}"], "give a checkout of nanoGPT"),
                          ([f"--nanogpt={checkout}", "--n_vocab=100"], "needs at least 256"),
                          ([f"--nanogpt={checkout}", "--iters=4", "--skip=4"], "must be below --iters")):
        monkeypatch.setattr(sys, "argv", ["vs_nanogpt_train.py", *argv])
        with pytest.raises(ValueError, match=message):
            vs_nanogpt_train.main()
    assert len(log.read_text().splitlines()) == 2


def test_compiled_diffusion_compiles_its_masked_positions_graph_once_for_every_masked_count():
    """Diffusion's output layer runs on a data-dependent number of masked positions (x[positions] breaks the graph
    there): under torch.compile that part is compiled again once, for a dynamic count, and never after, so a
    --compile run does not recompile at every step (dynamo's own behaviour, checked with its eager backend)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from model import ModelConfig, Transformer
    torch._dynamo.reset()
    counters.clear()
    model = Transformer(ModelConfig(n_vocab=50, block_size=16, n_layer=1, n_head=2, n_embd=16, causal=False))
    compiled = torch.compile(model, backend="aot_eager")
    generator = torch.Generator().manual_seed(0)
    graphs, counts = [], []
    for step in range(6):
        masked = torch.rand(3, 16, generator=generator) < 0.5
        x = torch.randint(0, 50, (3, 16), generator=generator)
        assert torch.allclose(compiled(x, positions=masked), model(x, positions=masked), atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
        counts.append(int(masked.sum()))
    assert len(set(counts)) > 2
    # two graphs at the first step (the blocks, then what follows the masked positions), and over five more masked
    # counts one more graph in all: that part compiled again once, for a dynamic count
    assert graphs[0] == 2 and graphs[-1] == 3
    torch._dynamo.reset()

"""A third objective is one copied file: train_diffusion.py copied, its KIND and its corruption changed (uniform
noise instead of [MASK]), trains, logs, resumes, evaluates and compares with no other file edited."""
import json
import os
import subprocess
import sys

from conftest import ROOT, make_tiny_data, tiny_args


def test_a_copied_objective_file_trains_resumes_evaluates_and_compares(tmp_path):
    source = open(os.path.join(ROOT, "train_diffusion.py")).read()
    copy = source.replace('KIND = "diffusion"', 'KIND = "uniform"').replace(
        "x_t = torch.where(masked, noise.mask_id, x)",
        "x_t = torch.where(masked, torch.randint(0, noise.mask_id, x.shape, generator=noise.generator), x)")
    assert copy.count('KIND = "uniform"') == 1 and "torch.randint(0, noise.mask_id" in copy
    (tmp_path / "objectives").mkdir()
    (tmp_path / "objectives" / "train_uniform.py").write_text(copy)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(tmp_path / "objectives")]), OMP_NUM_THREADS="1")
    data_dir = make_tiny_data(tmp_path)
    out, ar = str(tmp_path / "uniform"), str(tmp_path / "ar")

    def run(*cmd):
        result = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-1500:]
        return result.stdout
    script = str(tmp_path / "objectives" / "train_uniform.py")
    run(script, *tiny_args(data_dir, out, "--max_iters=12", "--eval_interval=4", "--elbo_samples=2",
                           "--stop_after_s=1e-9"))
    assert [json.loads(line)["iter"] for line in open(out + "/log.jsonl")] == [0]  # stopped after its first save
    run(script, "--resume", f"--out_dir={out}", "--stop_after_s=0")
    log = [json.loads(line) for line in open(out + "/log.jsonl")]
    assert [r["iter"] for r in log] == [0, 4, 8, 12] and {r["kind"] for r in log} == {"uniform"}
    assert log[-1]["elbo_samples"] == 2 and log[-1]["val_loss"] < log[0]["val_loss"]  # its own log fields; it learns
    said = run("evaluate.py", f"--ckpt={out}", "--mc_items=20")
    assert "(uniform," in said and "ELBO, K = 2" in said
    run("train_ar.py", *tiny_args(data_dir, ar, "--max_iters=12", "--eval_interval=4"))
    verdict = run("compare.py", ar, out, "--no_plot")
    assert "by validation loss:" in verdict and "uniform" in verdict.splitlines()[-1]

"""benchmarks/gpu_check.py on a CPU: without CUDA it stops at once with its reason in the folder's JSON;
--cpu-smoke runs stages for real at tiny sizes (the fused loss under Triton's interpreter) and streams
every record into the JSON; the deadline skips what it cannot start. (The whole --cpu-smoke takes minutes
on a loaded 2-core machine; the test runs three stages of it.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu_check.py"


def _check(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)
    t0 = time.time()
    p = subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=ROOT)
    return p, time.time() - t0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_stops_at_once_with_the_reason_in_the_json(tmp_path):
    p, seconds = _check("--out", str(tmp_path / "out"))
    assert p.returncode == 0 and seconds < 10
    assert p.stdout.count("\n") == 1 and "no CUDA device" in p.stdout
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert data["skipped"].startswith("no CUDA device") and data["finished"] and data["versions"]["torch"]


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    p, _ = _check("--out", str(tmp_path / "x.json"))
    assert p.returncode == 2 and "must be a folder" in p.stderr


def test_the_deadline_skips_stages_it_cannot_start(tmp_path):
    p, _ = _check("--cpu-smoke", "--deadline", "5", "--out", str(tmp_path))
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert p.returncode == 0 and data["finished"]
    assert data["stages"]["device"]["status"].startswith("skipped: deadline")
    assert data["stages"]["77m MFU"]["status"] == "skipped: not in --cpu-smoke"


def test_cpu_smoke_streams_records_into_the_folder(tmp_path):
    p, _ = _check("--cpu-smoke", "--stages", "device,loss,sdpa", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["finished"] and data["device"]["torch"] == torch.__version__ and "triton" in data["versions"]
    assert {k: v["status"] for k, v in data["stages"].items()} == {"device": "ok", "loss kernels": "ok",
                                                                  "sdpa backends": "ok"}
    models = {m["model"]: m for m in data["models"]}
    for impl in ("triton", "compiled", "eager", "full"):
        m = models[f"loss smoke {impl}"]
        assert "error" not in m and m["tok_s"] > 0 and max(m["grad_rel_err"].values()) < 0.02, m
    assert max(models["loss smoke triton fp16 scale 65536"]["grad_rel_err"].values()) < 0.01
    assert models["sdpa head_dim 16 math"]["max_abs_diff_vs_fp32"] < 1e-5
    # every model was printed as one JSON line as it was measured, and each stage has its log
    printed = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{") and '"model"' in ln]
    assert [m["model"] for m in printed] == [m["model"] for m in data["models"]]
    assert (tmp_path / "logs" / "loss-kernels.log").read_text().count('{"record"') == len(
        data["stages"]["loss kernels"]["records"])


def test_the_training_stage_reads_what_the_loop_records(tmp_path):
    """gerbil's own loop in the training stage (3.3m, 2 sequences of 128, CPU): its record carries the
    loss implementation, the attention backend and the compile fallback the run wrote (env.json,
    result.json), not "n/a"."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_INTERPRET", None)
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_stages.py"), "train", "--smoke", "--size", "3.3m",
                        "--micro-batches", "2", "--precision", "fp32", "--only", "gerbil", "--steps", "1", "--out",
                        str(tmp_path), "--budget", "240"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    (rec,) = [json.loads(ln)["record"] for ln in p.stdout.splitlines() if ln.startswith('{"record"')]
    assert "error" not in rec and rec["tok_s"] > 0, rec
    assert rec["loss_impl"] == "eager" and rec["loss_impl_chosen"] == "default" and rec["loss_impl_timings"] == {}
    assert rec["sdpa_backend"] == "default (flash)" and rec["compile_fallback"] is None and rec["compile"] is False
    assert (tmp_path / "runs" / "3.3m-mb2-fp32" / "env.json").is_file()  # the run's records are kept

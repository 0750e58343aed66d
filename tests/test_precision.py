"""Every CUDA path, exercised on a CPU: bf16 and fp16 autocast (fp16 with a CPU GradScaler), torch.compile
with inductor, and the compiled graph count — losses close to fp32, no skipped step but a real (injected)
overflow, bitwise resume under fp16 loss scaling, and automatic micro-batch search under allocation
failures of every kind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from gerbil.errors import GerbilError
from gerbil.runs.rundir import RunDir
from gerbil.train import train
from helpers import make_store, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store")


def _losses(run_dir):
    return [m["loss"] for m in RunDir(run_dir).read_metrics()]


@pytest.fixture(scope="module")
def fp32(store, tmp_path_factory):
    return train(tiny_config(store, tmp_path_factory.mktemp("fp32"), precision="fp32"))


@pytest.mark.parametrize("precision, rel", [("bf16", 2e-2), ("fp16", 5e-3)])
def test_mixed_precision_on_cpu_tracks_fp32(store, tmp_path, fp32, precision, rel):
    r = train(tiny_config(store, tmp_path, precision=precision))
    assert r.info["precision"] == precision and r.skipped_steps == 0  # no spurious skipped step
    assert _losses(r.run_dir) == pytest.approx(_losses(fp32.run_dir), rel=rel)
    assert r.val_loss == pytest.approx(fp32.val_loss, rel=rel)
    if precision == "fp16":  # the GradScaler's state is checkpointed (what exact resume needs)
        state = torch.load(r.checkpoint / "state.pt", weights_only=True)
        assert state["scaler"]["scale"] == 65536.0


def test_an_injected_fp16_overflow_is_skipped_and_counted(store, tmp_path, monkeypatch):
    import gerbil.train.pretraining as L  # the pretraining workload calls lm_loss

    real, calls = L.lm_loss, [0]

    def overflowing(hidden, *a, **k):
        calls[0] += 1
        if calls[0] == 5:  # step 3's first micro-batch: an inf in the gradient into the body
            hidden.register_hook(lambda g: g * float("inf"))
        return real(hidden, *a, **k)

    monkeypatch.setattr(L, "lm_loss", overflowing)
    r = train(tiny_config(store, tmp_path, precision="fp16"))
    rows = list(RunDir(r.run_dir).read_metrics())
    assert r.skipped_steps == 1 and [m["skipped_steps"] for m in rows][2:4] == [1, 1]
    assert rows[2]["grad_norm"] is None  # the overflowed step: null in strict JSON, not NaN
    assert all(m["loss"] is not None for m in rows) and r.steps == 8


KILL = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    calls = [0]
    real = T.train_step
    def step(*a, **k):
        calls[0] += 1
        if calls[0] == 7:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    T.train_step = step
    T.train(T.TrainConfig.from_dict(json.loads(sys.argv[1])))
""")


def test_fp16_resume_after_sigkill_is_bitwise(store, tmp_path):
    straight = train(tiny_config(store, tmp_path / "a", precision="fp16"))
    cfg = tiny_config(store, tmp_path / "b", precision="fp16")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([sys.executable, "-c", KILL, json.dumps(cfg.to_dict())], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    resumed = train(tiny_config(store, tmp_path / "b", precision="fp16", resume=True))
    assert _losses(resumed.run_dir) == _losses(straight.run_dir)
    a = (straight.checkpoint / "model.safetensors").read_bytes()
    assert a == (resumed.checkpoint / "model.safetensors").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("loss_impl, graphs", [("auto", 2), ("compiled", 3)])
def test_compiled_bf16_run_on_cpu_keeps_its_static_graphs(store, tmp_path, fp32, loss_impl, graphs):
    """torch.compile (inductor on the CPU) with bf16: a batch ramp, a short micro-batch, the shortened last
    sequence of an exact budget and validation — two graphs (the model's training and evaluation; the
    loss is eager on a CPU), three with the compiled chunked loss (its training chunk), no recompiles.
    (On CUDA validation's chunked loss compiles too: one more graph, docs/performance.md.)"""
    import torch._dynamo.utils as du

    torch._dynamo.reset()
    du.counters.clear()
    budget = 128 * 2 + 256 * 2 + 70  # a ramp, then a last step of 2 sequences + 6 tokens
    r = train(tiny_config(store, tmp_path, tokens=budget, batch_tokens="128-256", compile=True, precision="bf16",
                          eval_every=128 * 2, loss_impl=loss_impl))
    assert r.info["compile"] and r.steps == 6 and r.info["compile_fallback"] is None
    assert du.counters["stats"]["unique_graphs"] == graphs
    ref = train(tiny_config(store, tmp_path / "ref", tokens=budget, batch_tokens="128-256", precision="bf16",
                            eval_every=128 * 2))
    assert _losses(r.run_dir) == pytest.approx(_losses(ref.run_dir), rel=2e-2)


def test_pad_batch_changes_nothing_but_the_shape():
    from gerbil.model.loss import lm_loss
    from gerbil.train.step import pad_batch
    from helpers import tiny_model

    m = tiny_model(vocab_size=1024, seq_len=64)
    x = torch.randint(0, 1000, (3, 20))
    y = torch.randint(0, 1000, (3, 20))
    xp, yp = pad_batch(x, y, 8, 32, 1023)
    assert xp.shape == yp.shape == (8, 32) and int((yp != -100).sum()) == 60
    a = lm_loss(m(x), m.lm_head.weight, m.lm_head.bias, y)
    b = lm_loss(m(xp), m.lm_head.weight, m.lm_head.bias, yp)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------ micro-batch search
@pytest.mark.parametrize("failure", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"),
])
def test_micro_batch_search_survives_every_kind_of_allocation_failure(failure):
    from gerbil.train.device import largest_fitting

    tried = []

    def fits(mb):
        tried.append(mb)
        if mb > 8:
            raise failure
        return mb <= 4  # 8 runs but leaves no headroom

    assert largest_fitting(64, fits) == 4 and tried == [64, 32, 16, 8, 4]

    def never(mb):
        tried.append(mb)
        raise failure

    tried.clear()
    with pytest.raises(GerbilError, match="not even a micro-batch of one sequence"):
        largest_fitting(4, never)
    assert tried == [4, 2, 1]  # 1 is tried too, never assumed

    def broken(mb):
        raise RuntimeError("a real bug, not memory")

    with pytest.raises(RuntimeError, match="real bug"):
        largest_fitting(4, broken)


def test_resume_reuses_the_resolved_micro_batch(store, tmp_path):
    """A resumed run takes the micro-batch recorded in config.yaml (a different free-memory state on a GPU
    must not change the accumulation grouping, i.e. the summation order)."""
    cfg = tiny_config(store, tmp_path, tokens=128 * 4, micro_batch=None)
    r = train(cfg)
    conf = RunDir(r.run_dir).read_config()
    assert conf["train"]["micro_batch"] is None and conf["resolved"]["micro_batch"] >= 1
    from gerbil.train.resolve import resolve

    conf["resolved"]["micro_batch"] = 1  # as if a GPU had picked 1 when the run started
    RunDir(r.run_dir).write_config(conf)
    assert resolve(tiny_config(store, tmp_path, tokens=128 * 4, micro_batch=None, resume=True)).plan.micro_batch == 1

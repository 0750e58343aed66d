"""How a run executes, chosen and recorded: `loss_impl: auto` and `sdpa_backend: auto` (timed on CUDA;
on a CPU untimed unless the test hook GERBIL_AUTOTUNE_ON_CPU asks), a resumed run keeping its recorded
choice, rank 0 choosing for a data-parallel job, a pinned attention backend honoured, and the eager
fallback when torch.compile fails. GPU-only checks are marked `gpu`."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from gerbil.errors import GerbilError
from gerbil.runs.rundir import RunDir, set_latest
from gerbil.train import autotune, train
from gerbil.train.autotune import Choice, choose_loss_impl, time_candidates
from gerbil.train.distributed import Dist
from helpers import make_store, tiny_config, tiny_model_config

pytestmark = pytest.mark.usefixtures("one_thread")
RECORDED = ("loss_impl", "loss_impl_timings", "sdpa_backend", "sdpa_timings")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store")


@pytest.fixture()
def timed_on_cpu(monkeypatch):
    """The test hook: time on the CPU, among the candidates that exist there (the fused Triton loss does
    not: it needs CUDA, or the interpreter)."""
    monkeypatch.setenv("GERBIL_AUTOTUNE_ON_CPU", "1")
    monkeypatch.setenv("GERBIL_AUTOTUNE_ONLY", "triton,eager,full,flash,math")


def _records(run_dir) -> tuple[dict, dict, dict]:
    run = RunDir(run_dir)
    return run.read_env(), run.read_result()["info"], run.read_config()["resolved"]


def _weights(run_dir) -> dict:
    from gerbil.export import load_model

    return load_model(run_dir)[0].state_dict()


def test_on_a_cpu_the_default_is_eager_and_pytorchs_attention_untimed(store, tmp_path):
    r = train(tiny_config(store, tmp_path))
    env, info, resolved = _records(r.run_dir)
    assert info["loss_impl"] == env["loss_impl"] == resolved["loss_impl"] == "eager"
    assert info["loss_impl_timings"] == {} and info["loss_impl_chosen"] == "default"
    assert info["sdpa_backend"] == env["sdpa_backend"] == "default (flash)"  # what PyTorch dispatches on a CPU
    assert resolved["sdpa_backend"] == "default" and info["compile_fallback"] is None


def test_the_hook_times_what_exists_records_it_and_a_resume_keeps_it(store, tmp_path, timed_on_cpu, monkeypatch):
    cfg = dict(keep_checkpoints=0)
    straight = train(tiny_config(store, tmp_path / "a", **cfg))
    env, info, resolved = _records(straight.run_dir)
    timings = info["loss_impl_timings"]
    assert info["loss_impl_chosen"] == "timed" and info["loss_impl"] in ("eager", "full")
    assert timings["eager"] > 0 and timings["full"] > 0  # milliseconds per forward + backward
    assert info["loss_impl_agreement"]["eager"] == 0 and 0 < info["loss_impl_agreement"]["full"] < 1e-4
    assert timings["triton"].startswith("failed: GerbilError: loss impl 'triton' runs on CUDA")
    assert info["loss_impl"] == min(("eager", "full"), key=timings.get)
    assert info["sdpa_backend"] in ("flash", "math") and info["sdpa_timings"]["flash"] > 0
    assert {k: env[k] for k in RECORDED} == {k: info[k] for k in RECORDED}
    assert (resolved["loss_impl"], resolved["sdpa_backend"]) == (info["loss_impl"], info["sdpa_backend"])

    # the same run as if interrupted after step 4, resumed where a new timing could only pick the others
    shutil.copytree(straight.run_dir, tmp_path / "b" / "tiny")
    run = RunDir(tmp_path / "b" / "tiny")
    shutil.rmtree(run.checkpoint_path(8))
    set_latest(run.checkpoints, "step-00000004")
    run.result.unlink()
    other_loss = {"eager": "full", "full": "eager"}[info["loss_impl"]]
    other_sdpa = {"flash": "math", "math": "flash"}[info["sdpa_backend"]]
    monkeypatch.setenv("GERBIL_AUTOTUNE_ONLY", f"{other_loss},{other_sdpa}")
    resumed = train(tiny_config(store, tmp_path / "b", resume=True, **cfg))
    assert resumed.info["loss_impl"] == info["loss_impl"] and resumed.info["loss_impl_chosen"] == "recorded"
    assert resumed.info["sdpa_backend"] == info["sdpa_backend"] and resumed.info["sdpa_chosen"] == "recorded"
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise: the resume did not depend on timing noise


@dataclass(frozen=True)
class _Rank(Dist):
    """A rank of a 2-process job whose broadcast is rank 0's value (no process group needed)."""

    sent: tuple = ()

    def broadcast_object(self, obj):
        if self.is_main:
            object.__setattr__(self, "sent", (obj,))
            return obj
        assert obj is None  # only rank 0 decides
        return Choice("full", "timed", {"full": 1.0})


def test_rank_0_times_and_the_other_ranks_take_its_choice(timed_on_cpu, monkeypatch):
    model_cfg = tiny_model_config(vocab_size=64, seq_len=16)
    calls = []
    real = autotune._time_losses
    monkeypatch.setattr(autotune, "_time_losses", lambda *a: calls.append(a) or real(*a))
    args = ("auto", model_cfg, torch.device("cpu"), 2, 16, None, 1024, {})
    rank1 = choose_loss_impl(*args, dist=_Rank(rank=1, world_size=2))
    assert rank1 == Choice("full", "timed", {"full": 1.0}) and calls == []
    rank0 = _Rank(rank=0, world_size=2)
    chosen = choose_loss_impl(*args, dist=rank0)
    assert len(calls) == 1 and rank0.sent == (chosen,) and chosen.how == "timed"


def test_a_candidate_that_fails_or_disagrees_is_left_out_with_its_reason():
    ref = [torch.ones(4)]

    def broken():
        raise RuntimeError("no kernel")

    best, timings, agreement = time_candidates({"fast but wrong": lambda: [torch.full((4,), 1.5)], "broken": broken,
                                     "reference": lambda: ref, "close": lambda: [torch.ones(4) * 1.001]},
                                    torch.device("cpu"), "reference", tol=0.01)
    assert best in ("reference", "close")
    assert timings["fast but wrong"].startswith("disagrees: 5.00e-01")
    assert timings["broken"] == "failed: RuntimeError: no kernel"
    assert isinstance(timings["reference"], float) and isinstance(timings["close"], float)
    assert agreement == {"fast but wrong": 0.5, "reference": 0.0, "close": 0.001}


def test_the_design_estimate_only_orders_the_candidates():
    assert autotune.loss_order(64)[0] == "triton" and autotune.loss_order(512)[0] == "compiled"
    assert sorted(autotune.loss_order(64)) == sorted(autotune.loss_order(512))  # both are timed


# ------------------------------------------------------------------------------------ attention
def _spy_backends(monkeypatch) -> list[str]:
    """Every SDPA call's backend as PyTorch dispatches it under the pins in force at the call."""
    from torch.nn.attention import SDPBackend

    seen: list[str] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append(SDPBackend(torch._fused_sdp_choice(q, k, v, *a, **kw)).name)
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("pin, runs", [("math", "MATH"), ("default", "FLASH_ATTENTION")])
def test_a_pinned_attention_backend_is_what_runs_and_is_recorded(store, tmp_path, monkeypatch, pin, runs):
    seen = _spy_backends(monkeypatch)
    r = train(tiny_config(store, tmp_path, sdpa_backend=pin))
    assert seen and set(seen) == {runs}  # training and validation alike
    assert r.info["sdpa_backend"] == ("math" if pin == "math" else "default (flash)")
    assert RunDir(r.run_dir).read_config()["resolved"]["sdpa_backend"] == pin
    assert torch.backends.cuda.math_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()  # put back


def test_a_pinned_backend_that_cannot_run_here_is_one_line(store, tmp_path):
    with pytest.raises(GerbilError, match=r"^sdpa_backend efficient: no efficient kernel runs this model's "
                                          r"attention on cpu") as e:
        train(tiny_config(store, tmp_path, sdpa_backend="efficient"))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ compile fallback
def test_a_failed_compile_falls_back_to_eager_with_one_warning(store, tmp_path, monkeypatch, caplog):
    """torch.compile forced to fail (a backend that raises, as a broken inductor or Triton would): the run
    trains eagerly — the same losses as a run never compiled — and result.json says why."""
    import torch._dynamo

    real = torch.compile

    def failing_backend(gm, example_inputs):
        raise RuntimeError("injected compile failure")

    eager = train(tiny_config(store, tmp_path / "eager"))
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, **dict(kw, backend=failing_backend)))
    with caplog.at_level(logging.WARNING, logger="gerbil.train.loop"):
        r = train(tiny_config(store, tmp_path / "compiled", compile=True))
    warned = [x for x in caplog.records if "torch.compile failed" in x.getMessage()]
    assert len(warned) == 1 and r.info["compile"] is True
    assert "injected compile failure" in r.info["compile_fallback"]
    assert [m["loss"] for m in RunDir(r.run_dir).read_metrics()] == [m["loss"] for m in RunDir(eager.run_dir).read_metrics()]
    assert r.val_loss == eager.val_loss
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_auto_times_the_losses_and_attention_and_the_run_records_them(store, tmp_path):
    r = train(tiny_config(store, tmp_path, device="cuda", precision="bf16", micro_batch=None))
    timings = r.info["loss_impl_timings"]
    assert r.info["loss_impl_chosen"] == "timed" and isinstance(timings["eager"], float)
    assert isinstance(timings[r.info["loss_impl"]], float)  # the choice ran and agreed
    assert r.info["sdpa_chosen"] in ("timed", "default") and r.info["compile"] is True
    env = json.loads((r.run_dir / "env.json").read_text())
    assert {k: env[k] for k in RECORDED} == {k: r.info[k] for k in RECORDED}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_probe_leaves_no_graph_and_training_builds_static_ones(store, tmp_path):
    import torch._dynamo
    import torch._dynamo.utils as du

    from gerbil.train.device import auto_micro_batch

    cfg = tiny_model_config(vocab_size=1024, seq_len=64, n_head=2)
    torch._dynamo.reset()
    mb = auto_micro_batch(cfg, torch.device("cuda"), 32, 64, torch.bfloat16, "chunked", compile=True)
    assert mb == 64
    du.counters.clear()
    r = train(tiny_config(store, tmp_path, device="cuda", precision="bf16", compile=True, loss_impl="eager",
                          batch_tokens="128-256", tokens=128 * 2 + 256 * 2 + 70))
    assert r.info["compile_fallback"] is None
    # the model's training and evaluation graphs, and validation's chunked loss (compiled on CUDA); no
    # dynamic graph from the probe's sizes and no recompile over the ramp and the short last step
    assert du.counters["stats"]["unique_graphs"] == 3

"""The training loop on CPU with a d=32, 2-layer model: budgets, run files, exact resume after SIGKILL,
damaged checkpoints, star continuation, schedules, bad input, NaN handling, recipes."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from gerbil.errors import GerbilError
from gerbil.export import load_model
from gerbil.runs.rundir import RunDir
from gerbil.schedules import Schedule, lr_at
from gerbil.train import checkpoint as ckpt
from gerbil.train.config import TrainConfig
from gerbil.train.loop import NonFiniteLoss, train
from helpers import make_store, tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def params(run_dir: Path) -> dict:
    model, _ = load_model(run_dir)
    return model.state_dict()


def test_trains_exactly_the_budget_and_writes_the_run_dir(store, tmp_path):
    budget = 128 * 5 + 32 * 2 + 7  # not a whole batch, not even a whole sequence
    r = train(tiny_config(store, tmp_path, tokens=budget))
    assert r.tokens == budget and r.steps == 6
    rows = metrics(r.run_dir)
    assert [m["step"] for m in rows] == list(range(1, 7))
    assert rows[-1]["tokens"] == budget and rows[-1]["batch_tokens"] == 32 * 2 + 7
    assert rows[-1]["val_loss"] is not None and r.val_loss == rows[-1]["val_loss"]
    assert all(set(m) >= {"step", "tokens", "loss", "lr", "tok_s", "mfu", "grad_norm"} for m in rows)
    conf = yaml.safe_load((r.run_dir / "config.yaml").read_text())
    # --class A with 711 tokens is far short of class A's 20 tokens per parameter: a custom budget, recorded
    # as no class (gerbil.classes.claimed_class, the results table's rule)
    assert conf["model"]["d_model"] == 32 and conf["class"] is None and conf["resolved"]["budget"] == budget
    assert TrainConfig.from_dict(conf["train"]) == tiny_config(store, tmp_path, tokens=budget, arch="gptj")
    env = json.loads((r.run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu"
    meta = json.loads((r.checkpoint / "meta.json").read_text())
    assert meta["tokens"] == budget and meta["step"] == 6 and meta["class"] is None and meta["parent"] is None
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns the counting pattern


KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    cfg = T.TrainConfig.from_dict(json.loads(sys.argv[1]))
    kill_at, calls = int(sys.argv[2]), [0]
    real_step = T.train_step
    def step(*a, **k):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: like a power cut
        return real_step(*a, **k)
    T.train_step = step
    T.train(cfg)
""")


def test_sigkill_then_resume_is_bitwise_identical(store, tmp_path):
    straight = train(tiny_config(store, tmp_path / "a"))
    cfg = tiny_config(store, tmp_path / "b")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg.to_dict()), "7"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_b = tmp_path / "b" / "tiny"
    assert RunDir(run_b).latest_checkpoint().name == "step-00000004"  # steps 5 and 6 were lost
    # a step's record is written when its numbers are read, one step late: step 6 (trained, never
    # read: the kill came as step 7 was queued) has none; the resume truncates to step 4 anyway
    assert [m["step"] for m in metrics(run_b)] == [1, 2, 3, 4, 5]
    resumed = train(tiny_config(store, tmp_path / "b", resume=True))
    assert resumed.steps == straight.steps == 8
    assert [m["loss"] for m in metrics(run_b)] == [m["loss"] for m in metrics(straight.run_dir)]
    pa, pb = params(straight.run_dir), params(run_b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    oa = ckpt.load_train_state(straight.checkpoint)["optimizer"]["state"]
    ob = ckpt.load_train_state(resumed.checkpoint)["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)


def test_truncated_checkpoint_falls_back_to_the_previous(store, tmp_path, caplog):
    straight = train(tiny_config(store, tmp_path / "a"))
    train(tiny_config(store, tmp_path / "c", checkpoint_every=128 * 2, keep_checkpoints=0))
    run_c = tmp_path / "c" / "tiny"
    # simulate a crash that left the last two checkpoints damaged: resume must use step 4
    for step in (6, 8):
        f = run_c / "checkpoints" / f"step-{step:08d}" / "state.pt"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        resumed = train(tiny_config(store, tmp_path / "c", checkpoint_every=128 * 2, keep_checkpoints=0,
                                    resume=True))
    assert "damaged" in caplog.text
    assert resumed.steps == 8
    pa, pc = params(straight.run_dir), params(run_c)
    assert all(torch.equal(pa[k], pc[k]) for k in pa)


def test_star_continuation_records_its_parent(store, tmp_path):
    parent = train(tiny_config(store, tmp_path, tokens=128 * 4, name="par"))
    child = train(tiny_config(store, tmp_path, tokens=128 * 4 + 256 * 2, batch_tokens="128-256",
                              from_run="par", name=None, cls="E"))
    assert child.name == "Gerbil-E-star-tiny" and child.tokens == 128 * 4 + 512
    assert child.steps == 4 + 2  # step numbering continues; the continuation runs at the larger batch
    rows = metrics(child.run_dir)
    assert [m["batch_tokens"] for m in rows] == [256, 256] and rows[0]["tokens"] == 128 * 4 + 256
    meta = json.loads((child.checkpoint / "meta.json").read_text())
    assert meta["parent"]["tokens"] == 128 * 4 and meta["parent"]["checkpoint"] == str(parent.checkpoint)
    assert meta["class"] is None  # 1,024 tokens are a custom budget for this model, not class E* (its name keeps E-star)
    # data position: the child's loader continued the parent's cursor (not from the start)
    pstate = ckpt.load_train_state(parent.checkpoint)["loader"]
    cstate = ckpt.load_train_state(child.checkpoint)["loader"]
    assert cstate["cursor"] + cstate["epoch"] * 1000 > pstate["cursor"] + pstate["epoch"] * 1000


def test_batch_ramp_is_honoured_exactly(store, tmp_path):
    r = train(tiny_config(store, tmp_path, tokens=128 * 2 + 256 * 3, batch_tokens="128-256",
                          checkpoint_every=10**9))
    # plan: 128 until half the budget (≈ 512 tokens), then 256
    assert [m["batch_tokens"] for m in metrics(r.run_dir)] == [128, 128, 128, 128, 256, 256]


def test_schedules():
    cos = Schedule("cosine", 1.0, total=1000, warmup=100, min_ratio=0.1)
    assert lr_at(0, cos) == pytest.approx(0.01) and lr_at(0, cos, 10) == pytest.approx(0.1)
    assert lr_at(90, cos, 10) == pytest.approx(1.0)
    assert lr_at(100, cos) == pytest.approx(1.0) and lr_at(1000, cos) == pytest.approx(0.1)
    assert lr_at(550, cos) == pytest.approx(0.55)
    wsd = Schedule("wsd", 1.0, total=1000, warmup=100, cooldown=200)
    assert lr_at(500, wsd) == 1.0 and lr_at(800, wsd) == 1.0
    assert lr_at(850, wsd) == pytest.approx(1 - 0.5) and lr_at(1000, wsd) == 0.0


def test_wsd_run_and_objective_path(store, tmp_path):
    # the generic objective path end to end (blender needs the 50,264-id vocabulary)
    big = make_store(tmp_path / "store50k", n_docs=80)
    from gerbil.data.store import TokenStore

    assert TokenStore.open(big).eot_id == 1023
    model = dict(tiny_config(big, tmp_path).model, vocab_size=50264)
    r = train(tiny_config(big, tmp_path, model=model, objective="blender", schedule="wsd", tokens=128 * 3))
    assert r.steps == 3 and r.info["objective"] == "blender"
    # validated in causal mode (<causal> per val document, unscored; loader.eval_batches)
    assert r.info["val_mode"] == "causal" and r.val_loss is not None and math.isfinite(r.val_loss)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(store, tmp_path, monkeypatch):
    import gerbil.train.pretraining as T  # the pretraining workload calls lm_loss

    calls = [0]
    real = T.lm_loss

    def poisoned(*a, **k):
        calls[0] += 1
        out = real(*a, **k)
        return out * float("nan") if calls[0] > 2 * 5 else out  # 2 micro-batches a step: step 6 breaks

    monkeypatch.setattr(T, "lm_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"at step 6; last good checkpoint: .*step-00000004"):
        train(tiny_config(store, tmp_path, eval_every=10**9))
    assert RunDir(tmp_path / "tiny").latest_checkpoint().name == "step-00000004"


@pytest.mark.parametrize("change, message", [
    (dict(model=None, size="5m"), "unknown size"),
    (dict(cls="Z"), "unknown class"),
    (dict(objective="telepathy"), "unknown objective"),
    (dict(tokenizer_sha256="another-tokenizer"), "tokenizer"),
    (dict(tokens=64), "smaller than one batch"),
    (dict(data=None), "no training data"),
])
def test_bad_input_is_one_line(store, tmp_path, change, message):
    with pytest.raises((GerbilError, ValueError), match=message) as e:
        train(tiny_config(store, tmp_path, **change))
    assert "\n" not in str(e.value)


def test_unwritable_run_dir_and_existing_run(store, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GerbilError, match="cannot write run directory"):
        train(tiny_config(store, blocker, tokens=128))
    train(tiny_config(store, tmp_path, tokens=128))
    with pytest.raises(GerbilError, match="already has checkpoints"):
        train(tiny_config(store, tmp_path, tokens=128))


def test_cli_train_errors_are_one_line(store, tmp_path, capsys):
    from gerbil.cli import main

    rc = main(["train", "--size", "6.7m", "--class", "Q", "--data", str(store), "--runs", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unknown class" in err and "\n" not in err


def test_recipes_parse_into_train_configs():
    from importlib import resources

    recipes = [p for p in resources.files("gerbil").joinpath("recipes").iterdir() if p.name.endswith(".yaml")]
    assert recipes
    for p in recipes:
        cfg = TrainConfig.from_yaml(p)
        assert isinstance(cfg, TrainConfig)
        from gerbil.plan import make_plan

        plan = make_plan(cfg.size, cfg.cls, seq_len=cfg.seq_len, batch_tokens=cfg.batch_tokens,
                         tokens=cfg.tokens)
        assert plan.budget_tokens > 0, p.name


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("precision, compile_", [("bf16", True), ("fp16", False)])
def test_cuda_run(store, tmp_path, precision, compile_):
    from safetensors.torch import load_file

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    r = train(tiny_config(store, tmp_path, device="cuda", precision=precision, compile=compile_,
                          micro_batch=None))
    assert r.tokens == 128 * 8 and r.info["precision"] == precision and r.val_loss is not None
    assert r.info["micro_batch"] >= 1
    keys = load_file(str(r.checkpoint / "model.safetensors")).keys()
    assert not [k for k in keys if "_orig_mod" in k]
    rows = metrics(r.run_dir)
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["skipped_steps"] == r.skipped_steps
    model, _ = load_model(r.run_dir, device="cuda")  # loads back on the GPU
    assert next(model.parameters()).is_cuda


def test_cli_train_end_to_end_with_the_real_tokenizer_check(tmp_path, tokenizer, capsys):
    from gerbil.cli import main

    store = make_store(tmp_path / "store", n_docs=60, sha=tokenizer.sha256)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("size: 3.3m\nclass: A\nseq_len: 32\nbatch_tokens: 128\nmicro_batch: 2\nlr: 0.003\n")
    argv = ["train", "--config", str(recipe), "--tokens", "256", "--data", str(store), "--runs", str(tmp_path),
            "--no-progress", "--checkpoint-every", "128"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Gerbil-A-3.3m: 256 tokens in 2 steps" in out
    conf = yaml.safe_load((tmp_path / "Gerbil-A-3.3m" / "config.yaml").read_text())
    assert conf["size"] == "3.3m" and conf["train"]["tokens"] == 256 and conf["train"]["micro_batch"] == 2
    assert main(argv) == 2  # same run again without --resume: refused
    assert "already has checkpoints" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # nothing left to train: reports the finished run


def test_demo_config_and_row_are_labelled_on_cpu(store, tmp_path):
    from gerbil.demo import demo_config, format_row

    cfg, reduced = demo_config("cpu", store, str(tmp_path))
    assert reduced and cfg.size == "6.7m" and cfg.tokens < 1_000_000 and "cpu" in cfg.name
    r = train(tiny_config(store, tmp_path, tokens=256))
    row = format_row(r, reduced=True).splitlines()
    assert row[0].startswith("| Model Name | Parameters | Class | Ratio | Tokens | Batch Size (Tokens)")
    cells = [c.strip() for c in row[2].strip("|").split("|")]
    assert len(cells) == 11 and "CPU demo" in cells[0] and "not A" in cells[2]
    assert cells[6] == f"{r.train_loss:.4f}" and cells[7:] == ["pending"] * 4


def test_star_continuation_rewarms_from_the_parents_final_lr(store, tmp_path):
    """The LR is continuous at the join: a continuation starts at its parent's final LR and warms back up
    to the peak (0.1.0 jumped ~5.6x: it restarted the cosine at the parent's position of the new total)."""
    parent = train(tiny_config(store, tmp_path, tokens=128 * 6, name="par", lr=1e-2))
    last_lr = metrics(parent.run_dir)[-1]["lr"]
    assert json.loads((parent.checkpoint / "meta.json").read_text())["lr"] == last_lr
    child = train(tiny_config(store, tmp_path, tokens=128 * 16, from_run="par", name="kid", cls="E", lr=1e-2,
                              warmup_tokens=128 * 4))
    lrs = [m["lr"] for m in metrics(child.run_dir)]
    step = (1e-2 - last_lr) / 4  # one warmup increment
    assert abs(lrs[0] - last_lr) <= step + 1e-12 and lrs[0] > last_lr
    assert lrs[3] == pytest.approx(1e-2)  # back at the peak after the warmup, then down again
    assert lrs[-1] < lrs[4]


def test_log_spaced_and_requested_checkpoints_are_kept(store, tmp_path):
    r = train(tiny_config(store, tmp_path, tokens=128 * 12, checkpoint_every=128 * 8, keep_checkpoints=1,
                          checkpoints="log", name="log"))
    steps = [int(p.name.split("-")[1]) for p in RunDir(r.run_dir).list_checkpoints()]
    assert steps == [1, 2, 4, 8, 12]  # 1, 2, 4 log-spaced, then every 8 steps' tokens, and the final one
    r = train(tiny_config(store, tmp_path, tokens=128 * 12, checkpoint_every=128 * 5, keep_checkpoints=1,
                          checkpoint_at=[128 * 3 + 1, 128 * 7], name="at"))
    steps = [int(p.name.split("-")[1]) for p in RunDir(r.run_dir).list_checkpoints()]
    assert steps == [4, 7, 12]  # the requested ones (first step boundary at or after) survive pruning


def test_resume_auto_starts_a_run_that_has_no_checkpoint_yet(store, tmp_path):
    """`--resume auto` continues a run if it has a checkpoint and starts it otherwise (never started, or
    killed before its first checkpoint) — so the same command can be rerun after any interruption."""
    r = train(tiny_config(store, tmp_path, resume=True, tokens=128 * 2))
    assert r.steps == 2
    again = train(tiny_config(store, tmp_path, resume=True, tokens=128 * 2))
    assert again.steps == 2 and again.tokens == r.tokens  # finished: reported, nothing retrained

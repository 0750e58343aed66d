"""Tests for gerbil.plan and `gerbil plan`: budgets, seed-style formatting, batch schedules, FLOPs."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gerbil import plan
from gerbil.cli import main
from gerbil.model.config import PRESETS, SIZES, ModelConfig
from gerbil.errors import GerbilError
from gerbil.plan import flops_per_token, make_plan, parse_class
from gerbil.schedules import BatchSchedule, BatchStage, build_schedule
from gerbil.units import fmt_batch, fmt_duration, fmt_flops, fmt_params, fmt_tokens, parse_batch, parse_batch_spec


def test_import_does_not_load_torch():
    code = "import sys, gerbil.plan; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_continuation_path_does_not_load_torch(tmp_path):
    run = _fake_run(tmp_path, tokens=100_000_000, step=763)
    code = ("import sys; from gerbil.plan import make_plan; "
            f"make_plan(None, 'E*', from_run={str(run)!r}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ seed strings
def test_a_6_7m_is_134m_tokens():
    p = make_plan("6.7m", "A")
    assert p.params_total == 6_682_584
    assert p.budget_tokens == 20 * 6_682_584 == 133_651_680
    assert fmt_tokens(p.budget_tokens) == "134M"
    assert p.batch == "131k" and p.schedule.stages[0].batch_tokens == 131_072
    assert p.steps == math.ceil(133_651_680 / 131_072) == 1020
    assert 0 <= p.trained_tokens - p.budget_tokens < 131_072


@pytest.mark.parametrize("size,label", [("3.3m", "3.3m"), ("6.7m", "6.7m"), ("32m", "32m"), ("77m", "77m"),
                                        ("104m", "104m"), ("15m", "14m")])
def test_fmt_params_matches_seed_names(size, label):
    # The seed's names equal the parameter count except 15m, whose inferred preset holds ≈14.1M.
    assert fmt_params(PRESETS[size].n_params()) == label


def test_fmt_batch_matches_seed_labels():
    assert [fmt_batch(s.batch_tokens) for s in SIZES.values()] == ["65.5k", "131k", "131k", "262k", "262k", "1M"]
    assert fmt_batch(131_072, 262_144) == "131k-262k"
    assert fmt_batch(262_144, 524_288) == "262k-524k"
    assert fmt_batch(131_072, 131_072) == "131k"


@pytest.mark.parametrize("size,cls,ratio,seed,ours", [
    ("6.7m", "A", None, "134M", "134M"),   # the seed used 6.7M here: same string
    ("6.7m", "B", None, "281M", "281M"),
    ("6.7m", "C", None, "509M", "508M"),   # seed: 6.7 × 76 = 509.2; exact: 6.682584 × 76 = 507.9
    ("6.7m", "D", None, "852M", "949M"),   # seed: 6 × 142
    ("15m", "A", None, "280M", "282M"),    # seed: 14 × 20
    ("32m", "A", None, "640M", "642M"),    # seed: 32 × 20
    ("77m", "A", None, "1520M", "1534M"),  # seed: 76 × 20
    ("77m", "B*", 40, "3040M", "3069M"),   # seed: 76 × 40
    ("104m", "A", None, "2060M", "2075M"),  # seed: 103 × 20
])
def test_fmt_tokens_against_the_seed_table(size, cls, ratio, seed, ours):
    """gerbil multiplies exact parameter counts; the seed multiplied rounded ones (documented)."""
    got = fmt_tokens(make_plan(size, cls, ratio=ratio).budget_tokens)
    assert got == ours
    assert (got == seed) == (seed == ours)


def test_fmt_helpers_small_and_large():
    assert fmt_tokens(999) == "999" and fmt_tokens(500_000) == "500k" and fmt_tokens(1_500_000) == "1.5M"
    assert fmt_params(9_960_000) == "10m" and fmt_params(850_000) == "850k"
    assert fmt_flops(3.58e15) == "3.58e15" and fmt_flops(9.999e15) == "1e16"
    assert fmt_duration(60) == "60 s" and fmt_duration(3 * 3600) == "3.0 h"


# --------------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("text,n", [("65.5k", 65_536), ("131k", 131_072), ("262K", 262_144), ("524k", 524_288),
                                    ("1M", 1_048_576), ("2M", 2_097_152), ("1.5M", 1_572_864),
                                    ("131072", 131_072), ("500k", 499_712), ("98.3k", 98_304)])
def test_parse_batch(text, n):
    assert parse_batch(text, 2048) == n


@pytest.mark.parametrize("seq_len", [128, 256, 512, 1024, 2048, 4096])
def test_seed_labels_name_powers_of_two_at_any_seq_len(seq_len):
    for label in ("131k", "262k", "524k", "1M"):
        n = parse_batch(label, seq_len)
        assert n & (n - 1) == 0 and n % seq_len == 0
        assert fmt_batch(n) == label  # round trip


def test_parse_batch_spec_and_class():
    assert parse_batch_spec("131k-262k") == (131_072, 262_144)
    assert parse_batch_spec("131k–262k") == (131_072, 262_144)  # the en dash of docs/reference.md
    assert parse_batch_spec("262k") == (262_144, 262_144)
    assert parse_class("A") == ("A", 20.0, False)
    assert parse_class("e*") == ("E*", 284.0, True)
    assert parse_class("E-star") == ("E*", 284.0, True)
    assert parse_class("300") == ("300", 300.0, False)
    assert parse_class("B*", ratio=40) == ("B*", 40.0, True)
    assert parse_class(None, ratio=7.5) == ("7.5", 7.5, False)
    assert plan.parse_count("134M") == 134_000_000 and plan.parse_count("1.5B") == 1_500_000_000


@pytest.mark.parametrize("kwargs,match", [
    (dict(size="9m"), "unknown size"),
    (dict(cls="F"), "unknown class"),
    (dict(ratio=0), "ratio must be positive|positive number"),
    (dict(ratio=-1), "positive"),
    (dict(cls="-5"), "unknown class|positive"),
    (dict(batch_tokens=100_000), "not a multiple of seq_len"),
    (dict(batch_tokens="100001"), "not a multiple of seq_len"),
    (dict(batch_tokens="131k-"), "malformed"),
    (dict(batch_tokens="131k-262k-524k"), "malformed"),
    (dict(batch_tokens="lots"), "not a size"),
    (dict(batch_tokens="262k-131k"), "shrinks"),
    (dict(seq_len=0), "seq_len"),
    (dict(seq_len=4096), "exceeds the model's context"),
    (dict(tokens="100k"), "smaller than one batch"),
    (dict(mfu=1.5), "mfu"),
    (dict(gpus=["V100"]), "unknown GPU"),
    (dict(ramp_shape="cosine", batch_tokens="131k-262k"), "ramp shape"),
])
def test_bad_values_raise_one_line_errors(kwargs, match):
    size = kwargs.pop("size", "6.7m")
    if kwargs.get("seq_len") == 4096:  # a custom model whose context is 2048
        size = ModelConfig(seq_len=2048)
    with pytest.raises(ValueError, match=match) as e:
        make_plan(size, **kwargs)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- schedules
def _per_step(schedule: BatchSchedule) -> list[int]:
    return [schedule.batch_tokens_at(s) for s in range(schedule.start_step, schedule.end_step)]


def test_constant_schedule_and_serialization():
    s = build_schedule(1_000_000, 2048, 131_072)
    assert s.stages == (BatchStage(131_072, 8),)
    assert s.batch_tokens_at(0) == s.batch_tokens_at(7) == 131_072
    assert s.tokens_before(3) == 3 * 131_072 and s.tokens_before(8) == s.total_tokens
    with pytest.raises(IndexError):
        s.batch_tokens_at(8)
    assert BatchSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_step_ramp_switches_at_half_the_budget_by_default():
    # the seed's E*-6.7m: half the budget (the D-class parent) at 131k, the rest at 262k
    p = make_plan("6.7m", "E*", batch_tokens="131k-262k")
    first, second = p.schedule.stages
    assert (first.batch_tokens, second.batch_tokens) == (131_072, 262_144)
    half = p.budget_tokens // 2
    assert first.steps == math.ceil(half / 131_072)
    assert p.trained_tokens >= p.budget_tokens > p.trained_tokens - 262_144
    assert p.batch == "131k-262k" and p.notes  # planned from scratch: says how to continue


def test_linear_ramp_is_exact_and_monotone():
    span, b0, b1, q = 50_000_000, 131_072, 262_144, 16 * 2048
    s = build_schedule(80_000_000, 2048, b0, b1, ramp_tokens=span, ramp_shape="linear", quantum=q)
    batches = _per_step(s)
    assert batches == sorted(batches) and batches[0] == b0 and batches[-1] == b1
    assert all(b % q == 0 for b in batches)
    # every step's batch is the linear rule evaluated at the tokens trained before it
    t = 0
    for step, b in enumerate(batches):
        assert s.tokens_before(step) == t
        expected = b1 if t >= span else min(b1, b0 + (b1 - b0) * t // (span * q) * q)
        assert b == expected
        t += b
    assert 80_000_000 <= s.total_tokens < 80_000_000 + b1


def test_ramp_measured_from_run_start_for_continuations():
    s = build_schedule(10_000_000, 2048, 131_072, 262_144, ramp_tokens=12_000_000, start_tokens=10_000_000,
                       start_step=77)
    assert s.start_step == 77 and s.batch_tokens_at(77) == 131_072
    assert s.tokens_before(77) == 10_000_000
    assert s.batch_tokens_at(s.end_step - 1) == 262_144


# ------------------------------------------------------------------------------------ FLOPs and time
def test_flops_per_token_formula():
    m = PRESETS["6.7m"]
    # 6·(198,528 + 64·50,264) + 12·4·2048·64
    assert flops_per_token(m, 2048) == 6 * (198_528 + 64 * 50_264) + 12 * 4 * 2048 * 64 == 26_784_000
    assert flops_per_token(m, 2048, training=False) == 26_784_000 // 3


@pytest.mark.parametrize("size,tok_s,mfu", [("6.7m", 2.21e6, 0.06), ("32m", 1.35e6, 0.23), ("77m", 0.91e6, 0.37)])
def test_formula_reproduces_reference_mfu(size, tok_s, mfu):
    """docs/reference.md §6 measured these tok/s and MFUs on an H200: the formula and peak must agree."""
    got = flops_per_token(PRESETS[size], 2048) * tok_s / plan.GPUS["H200"].peak_flops
    assert abs(got - mfu) < 0.006


def test_time_estimate_is_tokens_over_measured_throughput():
    p = make_plan("6.7m", "A")
    assert p.mfu == pytest.approx(0.06)
    # at the measured 6% MFU an H200 trains at ≈ 2.2M tok/s (docs/reference.md §6)
    assert p.seconds_on("H200") == pytest.approx(p.trained_tokens / 2.21e6, rel=0.02)
    assert p.seconds_on("t4") == pytest.approx(p.seconds_on("H200") * 989 / 65)
    assert make_plan("6.7m", "A", mfu=0.3).seconds_on("H100") == pytest.approx(p.total_flops / (989e12 * 0.3))
    # MFU is interpolated between measured sizes and clamped outside them
    assert make_plan("3.3m", "A").mfu == 0.06 and make_plan("104m", "A").mfu == 0.37
    assert 0.06 < make_plan("15m", "A").mfu < 0.23


def test_custom_model_and_ratio():
    cfg = ModelConfig(d_model=96, n_layer=3, n_head=4, rotary_dim=8, name="tiny")
    p = make_plan(cfg, "300")
    assert p.size == "tiny" and p.cls == "300" and p.budget_tokens == 300 * cfg.n_params()
    assert p.schedule.stages[0].batch_tokens == 131_072  # nearest rung in parameters is 6.7m
    assert make_plan("6.7m", tokens="500M").budget_tokens == 500_000_000


def test_ladder():
    plans = plan.make_ladder("A")
    assert [p.size for p in plans] == list(SIZES)
    assert [p.batch for p in plans] == ["65.5k", "131k", "131k", "262k", "262k", "1M"]
    assert fmt_tokens(plans[1].budget_tokens) == "134M"


# ----------------------------------------------------------------------------------- continuations
def _fake_run(root: Path, tokens: int, step: int, size: str = "6.7m") -> Path:
    """A run directory shaped like checkpoint.py writes it (weights faked; meta.json lists them)."""
    run = root / "runs" / "d-run"
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    ckpt.mkdir(parents=True)
    blob = b"not really safetensors"
    (ckpt / "model.safetensors").write_bytes(blob)
    meta = {"step": step, "tokens": tokens, "size": size, "class": "D", "model": PRESETS[size].to_dict(),
            "files": {"model.safetensors": {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (run / "checkpoints" / "latest").write_text(ckpt.name)
    return run


def test_star_class_continues_a_run(tmp_path):
    run = _fake_run(tmp_path, tokens=949_000_000, step=7241)
    p = make_plan(None, "E*", from_run=run, batch_tokens="131k-262k")
    assert p.size == "6.7m" and p.cls == "E*" and p.start_tokens == 949_000_000
    assert p.budget_tokens == 284 * 6_682_584
    assert p.tokens == p.budget_tokens - 949_000_000
    # the parent ran at 131k; by default the whole continuation runs at the end batch
    assert p.schedule.stages == (BatchStage(262_144, math.ceil(p.tokens / 262_144)),)
    assert p.schedule.start_step == 7241 and p.parent.endswith("step-00007241")
    # a plain class with --from is a star run too; the checkpoint directory itself works as well
    q = make_plan("6.7m", "E", from_run=run / "checkpoints" / "step-00007241")
    assert q.cls == "E*" and q.tokens == p.tokens


def test_continuation_errors(tmp_path):
    run = _fake_run(tmp_path, tokens=949_000_000, step=7241)
    with pytest.raises(ValueError, match="nothing left"):
        make_plan(None, "A", from_run=run)
    with pytest.raises(ValueError, match="--size 32m is not the parent.s model"):
        make_plan("32m", "E*", from_run=run)
    with pytest.raises(GerbilError, match="--from: .*no such run"):
        make_plan(None, "E*", from_run=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GerbilError, match="not a run, checkpoint or export"):
        make_plan(None, "E*", from_run=tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_plan_shows_134m(capsys):
    assert main(["plan", "--size", "6.7m", "--class", "A"]) == 0
    out = capsys.readouterr().out
    assert "134M" in out and "1,020" in out and "131k" in out
    for gpu in plan.GPUS:
        assert gpu in out


def test_cli_json_and_ladder(capsys):
    assert main(["plan", "--size", "6.7m", "--class", "E*", "--batch", "131k-262k", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch"] == "131k-262k" and d["class"] == "E*" and d["budget_tokens"] == 284 * 6_682_584
    assert BatchSchedule.from_dict(d["schedule"]).total_steps == d["steps"]
    assert main(["plan", "--size", "all", "--class", "A"]) == 0
    out = capsys.readouterr().out
    for size in SIZES:
        assert size in out
    assert "1534M" in out and "65.5k" in out


def test_cli_custom_and_from(capsys, tmp_path):
    assert main(["plan", "--d-model", "96", "--n-layer", "3", "--n-head", "4", "--ratio", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ratio"] == 100
    run = _fake_run(tmp_path, tokens=949_000_000, step=7241)
    assert main(["plan", "--from", str(run), "--class", "E*", "--batch", "131k-262k"]) == 0
    out = capsys.readouterr().out
    assert "E*-6.7m" in out and "step 7,241" in out


@pytest.mark.parametrize("argv", [
    ["--size", "9m"], ["--class", "F"], ["--ratio", "0"], ["--ratio", "-2"], ["--ratio", "lots"],
    ["--batch", "100000"], ["--batch", "131k-"], ["--batch", "fast"], ["--seq-len", "x"],
    ["--mfu", "150%"], ["--gpu", "V100"], ["--from", "/nonexistent/run"], ["--size", "all", "--from", "x"],
])
def test_cli_bad_values_exit_2_with_one_line(capsys, argv):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gerbil plan: error: ")


def test_cli_exit_status_in_a_real_process():
    r = subprocess.run([sys.executable, "-m", "gerbil", "plan", "--size", "6.7m", "--class", "Z"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "unknown class 'Z'" in r.stderr

"""Reliability of `gerbil fit` and the planner (issue 19): the user's files in --out are never replaced,
nonsense values are one-line errors, unusable runs (unfinished, fine-tuned) are skipped and said so, and
a damaged or absurd fit.json is refused instead of planned from. CPU only, about a second each."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

from gerbil.cli import build_parser
from gerbil.errors import GerbilError
from gerbil.fit.report import FitOptions, run_fit

SEED_CSV = Path(__file__).resolve().parents[1] / "src/gerbil/fit/examples/gerbillab_seed.csv"
QUICK = FitOptions(bootstrap=0, plots=False, approaches=(3,), top_k=1)


def _one_line(fn, *args, match: str, **kw) -> str:
    with pytest.raises(GerbilError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def _fit_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(["fit", *argv])
    return args.func(args)


# ------------------------------------------------------------------------------ item 5, 23: --out
def test_fit_out_never_replaces_a_users_fit_md_or_a_file(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "fit.md").write_text("# my own notes\n")
    _one_line(run_fit, [SEED_CSV], mine, QUICK, match="gerbil fit did not write")
    assert (mine / "fit.md").read_text() == "# my own notes\n" and not (mine / "fit.json").exists()
    (mine / "fit.json").write_text('{"mine": 1}')
    _one_line(run_fit, [SEED_CSV], mine, QUICK, match="fit.json and fit.md that gerbil fit did not write")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    _one_line(run_fit, [SEED_CSV], a_file, QUICK, match="is a file")
    _one_line(run_fit, [SEED_CSV], a_file / "sub", QUICK, match="is a file, not a folder")
    assert a_file.read_text() == "x"
    # gerbil's own fit folder is refitted in place
    out = tmp_path / "fit"
    run_fit([SEED_CSV], out, QUICK)
    first = json.loads((out / "fit.json").read_text())
    run_fit([SEED_CSV], out, QUICK)
    assert json.loads((out / "fit.json").read_text())["n_points"] == first["n_points"]


# ------------------------------------------------------------------------------ item 18: fit's values
@pytest.mark.parametrize("argv,match", [
    (["--flops-tol", "-1"], "--flops-tol: must be > 0"),
    (["--top-k", "0"], "--top-k: must be > 0"),
    (["--flops", "column"], "--flops column: 6 points have no flops value"),
    (["--metric", "bogus"], "unknown --metric 'bogus'"),
    (["--metric", "train_loss"], "--metric train_loss applies to run directories"),
])
def test_fit_refuses_nonsense_flag_values_in_one_line(tmp_path, argv, match):
    out = tmp_path / "out"
    _one_line(_fit_cli, [str(SEED_CSV), "--out", str(out), "--bootstrap", "0", "--no-plots", *argv], match=match)
    assert not out.exists()


def test_fit_options_check_the_same_values_as_the_flags():
    for bad, match in (({"top_k": 0}, "--top-k"), ({"flops_tol": -1.0}, "--flops-tol"),
                       ({"flops_tol": math.nan}, "--flops-tol"), ({"metric": "hellaswag"}, "unknown --metric")):
        _one_line(FitOptions(**bad).check, match=match)


# ------------------------------------------------------------------- items 12, 24: planner inputs
def _planned(argv: list[str]) -> str | None:
    from gerbil.options import config_from_args
    from gerbil.plan_command import PlanOptions, planner_answer

    return planner_answer(config_from_args(build_parser().parse_args(["plan", *argv]), PlanOptions))


@pytest.fixture(scope="module")
def seed_fit(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("seedfit")
    run_fit([SEED_CSV], out, QUICK)
    return json.loads((out / "fit.json").read_text())


@pytest.mark.parametrize("key,value,match", [
    ("E", math.nan, "E = nan: a law with a non-finite parameter"),
    ("A", math.inf, "A = inf"),
    ("alpha", 0.0, "alpha = 0: the chinchilla law needs it positive"),
    ("beta", -0.3, "beta = -0.3"),
    ("E", -5.0, "the irreducible loss cannot be negative"),
    ("B", 1e308, "not a plausible loss"),
    ("params", None, "the law's params are null"),
])
def test_plan_refuses_a_fit_json_it_cannot_plan_from(tmp_path, seed_fit, key, value, match):
    d = json.loads(json.dumps(seed_fit))
    if key == "params":
        d["law"]["params"] = None
    else:
        d["law"]["params"][key] = value
    f = tmp_path / "fit.json"
    f.write_text(json.dumps(d))  # NaN and Infinity as Python's json writes them
    for argv in (["--gpu", "T4", "--hours", "2"], ["--loss", "4.0"], ["--gpu", "T4", "--hours", "2", "--json"]):
        _one_line(_planned, argv + ["--fit", str(f)], match=match)


def test_plan_hours_and_seq_len_nonsense_are_refused_and_json_stays_strict(seed_fit, tmp_path):
    for argv, match in ((["--hours", "-5"], "--hours: must be > 0"), (["--hours", "2", "--seq-len", "-5"],
                                                                       "--seq-len: must be > 0"),
                        (["--hours", "1e300"], "more than 1,000,000 GPU hours"), (["--hours", "nan"], "finite")):
        _one_line(_planned, ["--gpu", "T4", *argv], match=match)
    f = tmp_path / "fit.json"
    f.write_text(json.dumps(seed_fit))
    text = _planned(["--gpu", "T4", "--hours", "2", "--fit", str(f), "--json"])
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the plan's JSON"))


# ------------------------------------------------------------------------------ item 17: absurd values
def test_an_absurd_finite_value_is_refused_and_no_numpy_warning_leaks(tmp_path):
    seed = SEED_CSV.read_text()
    absurd = tmp_path / "absurd.csv"
    absurd.write_text(seed + "absurd,1e300,1,1e9,3.0\n")
    _one_line(run_fit, [absurd], tmp_path / "a", QUICK, match=r"line 8: params 1e\+300 is beyond any real model")
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(seed + "absurd,6682584,198528,1e300,3.0\n")
    _one_line(run_fit, [tokens], tmp_path / "b", QUICK, match="tokens 1e.300 is beyond")
    big = tmp_path / "big.csv"  # the largest plausible values fit without overflow
    big.write_text(seed + "big,1e15,1e15,1e17,1.9\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = run_fit([big], tmp_path / "c", FitOptions(bootstrap=0, plots=False, top_k=1))
    assert r["n_points"] == 7 and all(math.isfinite(r[k]) for k in ("E", "A", "B", "alpha", "beta"))


# ------------------------------------------------------------------ item 9: unfinished, fine-tuned runs
def _fake_run(root: Path, name: str, size: str, tokens: int, loss: float, budget: int | None = None,
              task: str | None = None) -> Path:
    """A run directory as gerbil train / finetune write it (config.yaml, checkpoint meta.json); no weights."""
    import yaml

    from gerbil.model.config import SIZES

    m = SIZES[size].model_config()
    rd = root / name
    ck = rd / "checkpoints" / "step-00000100"
    ck.mkdir(parents=True)
    cfg = {"name": name, "class": "A", "objective": "plain", "model": m.to_dict(), "params": m.n_params(),
           "resolved": {"budget": budget or tokens}}
    if task:
        cfg.update(task=task, finetune={"task": task})
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
    (ck / "model.safetensors").write_bytes(b"weights")
    (ck / "meta.json").write_text(json.dumps({"step": 100, "tokens": tokens, "val_loss": loss, "train_loss": loss,
                                              "model": m.to_dict(), "run": name,
                                              "files": {"model.safetensors": {"bytes": 7, "sha256": "-"}}}))
    (rd / "checkpoints" / "latest").write_text("step-00000100")
    return rd


def test_fit_and_table_skip_or_mark_unfinished_and_fine_tuning_runs(tmp_path):
    from gerbil.eval.table import render

    runs = tmp_path / "runs"
    from gerbil.model.config import SIZES

    for i, (size, ratio) in enumerate((("3.3m", 20), ("6.7m", 42), ("15m", 20), ("3.3m", 142), ("32m", 20),
                                       ("6.7m", 76))):
        n = SIZES[size].model_config().n_params()
        _fake_run(runs, f"r{i}", size, ratio * n, 1.8 + 400 / n ** 0.34 + 2000 / (ratio * n) ** 0.37)
    _fake_run(runs, "killed", "15m", 4096, 9.5, budget=20480)
    _fake_run(runs, "classifier", "6.7m", 1_000_000, 0.0011, task="classify")
    r = run_fit([runs], tmp_path / "fit", QUICK)
    assert r["n_points"] == 6
    reasons = {s["name"]: s["reason"] for s in r["skipped"]}
    assert reasons["killed"].startswith("unfinished: 4,096 of 20,480 tokens")
    assert reasons["classifier"].startswith("a fine-tuning run (task classify)")
    md = (tmp_path / "fit" / "fit.md").read_text()
    assert "Skipped 2 rows/runs: " in md and "unfinished" in md and "fine-tuning" in md
    table = render([runs])
    row = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "unfinished (4.1k of 20k)" in row["killed"]
    assert "fine-tuned (classify)" in row["classifier"]
    assert "custom budget" not in row["killed"] and "A-Class" in row["r0"]


def test_an_optional_column_named_explicitly_must_exist(tmp_path):
    _one_line(_fit_cli, [str(SEED_CSV), "--out", str(tmp_path / "o"), "--flops-col", "train_flops"],
              match=r"no column 'train_flops' \(columns: name, params, .*; choose with --flops-col\)")
    assert not (tmp_path / "o").exists()

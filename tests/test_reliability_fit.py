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

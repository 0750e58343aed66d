"""gerbil.fit's two-step task law (N, D → task loss → metric): recovery of known laws within the bootstrap
intervals, the CSV and run-directory paths end to end, fit.json's schema, the leave-largest-out check,
and the refusals. CPU only, seconds.

Synthetic points come from known laws: step 1 L = 0.7 + 40/N^0.3 + 100/D^0.3 (a bits-per-byte-like task
loss from 1.8 down to 0.8), step 2 a sigmoid from chance 0.25 to 0.85 centred at L0 = 1.1 — so the data
cover the rise, as a ladder of larger models does; 9 sizes 10M-3B × 5 token budgets × 3 checkpoints.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from gerbil.errors import GerbilError
from gerbil.fit import optim
from gerbil.fit.command import add_fit_parser
from gerbil.fit.forms import get_form
from gerbil.fit.sources import Columns
from gerbil.fit.tasklaw import (Sigmoid, bootstrap_task_law, fit_task_law, leave_largest_out, parse_predict,
                                sigmoid_intervals)
from gerbil.fit.taskreport import TaskLawOptions, run_task_fit
from gerbil.fit.tasksources import AUTO_LOSS, load_task_points, read_task_runs, task_record_values
from helpers import images_ok

STEP1 = {"E": 0.7, "A": 40.0, "B": 100.0, "alpha": 0.3, "beta": 0.3}
STEP2 = {"ceiling": 0.85, "k": 10.0, "L0": 1.1}
CHANCE = 0.25
FAR = (7e9, 1.4e11)  # a prediction 2.3× beyond the largest size


def truth_metric(N, D, step1=STEP1, step2=STEP2):
    return Sigmoid(CHANCE).predict(step2, get_form("chinchilla").predict(step1, N, D))


def synthetic_rows(sizes=np.geomspace(1e7, 3e9, 9), ratios=(5, 10, 20, 40, 80), fractions=(0.25, 0.5, 1.0),
                   noise=(0.005, 0.01), seed=0, step2=STEP2) -> list[dict]:
    """Rows (run, params, tokens, bpb, accuracy): each run's checkpoints at `fractions` of its budget,
    multiplicative noise on the task loss, additive noise on the metric."""
    rng = np.random.default_rng(seed)
    law, rows = get_form("chinchilla"), []
    for n in sizes:
        for r in ratios:
            for f in fractions:
                d = f * r * n
                L = float(law.predict(STEP1, n, d)) * math.exp(rng.normal(0, noise[0]))
                m = float(Sigmoid(CHANCE).predict(step2, L)) + rng.normal(0, noise[1])
                rows.append({"run": f"r{n:.3g}-{r}", "params": int(n), "tokens": int(d), "bpb": f"{L:.6f}",
                             "accuracy": f"{min(max(m, 0.0), 1.0):.5f}"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    keys = list(rows[0])
    path.write_text("\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]) + "\n")
    return path


def csv_points(tmp_path: Path, rows: list[dict], **kw):
    return load_task_points([write_csv(tmp_path / "pts.csv", rows)], columns=Columns(loss="bpb"),
                            metric_col="accuracy", chance=kw.pop("chance", CHANCE), **kw)


def one_line_error(fn, *args, match: str, **kw) -> str:
    with pytest.raises(GerbilError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------------------- the math
def test_sigmoid_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    L = rng.uniform(0.8, 1.8, 50)
    M = Sigmoid(CHANCE).predict(STEP2, L) + rng.normal(0, 0.02, 50)
    model, th = Sigmoid(CHANCE), np.array([0.7, 6.0, 1.2])
    _, g = optim.huber_objective(model, th, L, M, delta=0.01)
    h = 1e-6
    num = [(optim.huber_objective(model, th + e, L, M, delta=0.01)[0]
            - optim.huber_objective(model, th - e, L, M, delta=0.01)[0]) / (2 * h) for e in np.eye(3) * h]
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-9)


def test_two_step_fit_recovers_known_laws_within_bootstrap_intervals(tmp_path):
    pts = csv_points(tmp_path, synthetic_rows())
    assert len(pts) == 135 and pts.final.sum() == 45
    fit = fit_task_law(pts)
    assert fit.status == "ok" and fit.loss.n_points == 45  # step 1 on final points, step 2 on all
    bootstrap_task_law(fit, pts, n_resamples=100, seed=0, workers=2)  # the process-pool path
    assert fit.loss.bootstrap.n_kept >= 95 and fit.sigmoid.bootstrap.n_kept == fit.loss.bootstrap.n_kept
    iv = {**fit.loss.param_intervals(95), **sigmoid_intervals(fit, 95)}
    truth = {**STEP1, **STEP2}
    for k, v in truth.items():
        assert iv[k][0] <= v <= iv[k][1], (k, iv[k], v)
    # the check can fail: a truth 25% off (A and B, loosely determined, 2× off) falls outside
    for k, v in truth.items():
        off = v * (2.0 if k in ("A", "B") else 1.25)
        assert not iv[k][0] <= off <= iv[k][1], (k, iv[k], off)
    lo, hi = fit.metric_interval(*FAR, 95)
    true_far = float(truth_metric(*FAR))
    assert lo <= true_far <= hi and hi - lo < 0.03
    assert not lo <= true_far + 0.02 <= hi
    assert not lo <= float(truth_metric(*FAR, step2=dict(STEP2, L0=1.15))) <= hi  # a shifted sigmoid


def test_leave_largest_out_predicts_the_held_out_size(tmp_path):
    pts = csv_points(tmp_path, synthetic_rows(sizes=np.geomspace(1e7, 3e9, 7), ratios=(5, 20, 80)))
    llo = leave_largest_out(pts, n_resamples=30, seed=0, workers=1, ci=95)
    assert llo["status"] == "ok" and llo["held_out_params"] == pytest.approx(3e9)
    assert len(llo["points"]) == 3 and all(p["params"] == pytest.approx(3e9) for p in llo["points"])
    for p in llo["points"]:
        assert abs(p["loss_error_rel"]) < 0.03 and abs(p["metric_error"]) < 0.03
        assert p["metric_error"] == pytest.approx(p["metric_predicted"] - p["metric_observed"])
    assert llo["metric_error_mean_abs"] < 0.03


# ------------------------------------------------------------------------------------------ CLI, CSV
def fit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gerbil")
    add_fit_parser(parser.add_subparsers(dest="command"))
    return parser


def test_csv_cli_end_to_end_writes_the_task_law_schema(tmp_path, capsys):
    csv = write_csv(tmp_path / "ladder.csv", synthetic_rows(sizes=np.geomspace(1e7, 3e9, 6), ratios=(5, 20, 80),
                                                            fractions=(0.5, 1.0)))
    out = tmp_path / "out"
    args = fit_parser().parse_args(["fit", str(csv), "--task-law", "--loss-col", "bpb", "--metric-col", "accuracy",
                                    "--chance", "0.25", "--predict", "7e9:1.4e11", "--predict", "2.8B:300B",
                                    "--bootstrap", "30", "--workers", "1", "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "task law" in printed and "leave-largest-out" in printed and "predict N=7.00e+09" in printed
    r = json.loads((out / "fit.json").read_text())
    t = r["task_law"]
    assert set(t["loss"]) == {"E", "A", "B", "alpha", "beta"}
    assert set(t["sigmoid"]) == {"chance", "ceiling", "k", "L0"} and t["sigmoid"]["chance"] == 0.25
    assert [set(p) for p in t["predictions"]] == [{"params", "tokens", "loss", "metric", "metric_low", "metric_high"}] * 2
    assert [(p["params"], p["tokens"]) for p in t["predictions"]] == [(7e9, 1.4e11), (2.8e9, 3e11)]
    for p in t["predictions"]:
        assert p["metric_low"] <= p["metric"] <= p["metric_high"]
        assert p["metric"] == pytest.approx(float(truth_metric(p["params"], p["tokens"])), abs=0.03)
    assert t["status"] == "ok" and t["leave_largest_out"]["points"] and "loss" not in r  # only the task law
    md = (out / "fit.md").read_text()
    assert "Leave the largest size out" in md and "### Predictions" in md and "| ceiling |" in md
    images_ok(out, ["task_loss.png", "task_sigmoid.png", "task_predicted.png"])


def test_flat_sigmoid_says_so_instead_of_printing_numbers(tmp_path, capsys):
    # tiny models: the task loss moves, the accuracy sits at chance — the seed's hellaswag picture
    rows = synthetic_rows(sizes=np.geomspace(1e7, 1e8, 5), ratios=(5, 20), fractions=(0.5, 1.0),
                          step2={"ceiling": 0.85, "k": 10.0, "L0": 0.2})
    csv = write_csv(tmp_path / "tiny.csv", rows)
    args = fit_parser().parse_args(["fit", str(csv), "--task-law", "--loss-col", "bpb", "--metric-col", "accuracy",
                                    "--chance", "0.25", "--predict", "2.8e9:3e11", "--bootstrap", "0",
                                    "--no-plots", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert "metric not predicted" in capsys.readouterr().out
    t = json.loads((tmp_path / "o" / "fit.json").read_text())["task_law"]
    assert "flat" in t["status"] and t["step2"]["flat"]
    assert t["sigmoid"] == {"chance": 0.25, "ceiling": None, "k": None, "L0": None}
    assert t["predictions"][0]["metric"] is None and t["predictions"][0]["loss"] > 0
    md = (tmp_path / "o" / "fit.md").read_text()
    assert "The sigmoid is flat" in md and "| ceiling |" not in md


def test_unconverged_step1_says_so_instead_of_printing_numbers(tmp_path, monkeypatch):
    monkeypatch.setitem(optim.LBFGS_OPTIONS, "maxiter", 2)
    csv = write_csv(tmp_path / "p.csv", synthetic_rows(sizes=np.geomspace(1e7, 3e9, 5), ratios=(5, 80),
                                                       fractions=(1.0,)))
    r = run_task_fit([csv], tmp_path / "o", TaskLawOptions(chance=0.25, columns=Columns(loss="bpb"),
                                                            metric_col="accuracy", predict=((1e9, 1e11),),
                                                            bootstrap=0, plots=False))
    t = r["task_law"]
    assert t["status"] == "step 1 (task loss) did not converge" and set(t["loss"].values()) == {None}
    assert t["predictions"][0]["loss"] is None and t["predictions"][0]["metric"] is None
    assert "**Did not converge**" in (tmp_path / "o" / "fit.md").read_text()
    assert any("did not converge" in w for w in r["warnings"])


def test_degenerate_step1_says_so_instead_of_printing_numbers(tmp_path, capsys):
    """A task loss that rises with N and D (a task far from the training text, as lambada and sciq on a
    Shakespeare ladder) has no power law: step 1 is degenerate, no parameters, losses or metrics are
    printed, the bootstrap is skipped, and the leave-largest-out check says why it has no numbers."""
    rows = synthetic_rows(sizes=np.geomspace(1e7, 3e9, 5), ratios=(5, 80), fractions=(1.0,))
    rows = [dict(r, bpb=f"{3.0 - float(r['bpb']):.6f}") for r in rows]  # 3 − L: rises with N and D
    csv = write_csv(tmp_path / "rising.csv", rows)
    args = fit_parser().parse_args(["fit", str(csv), "--task-law", "--loss-col", "bpb", "--metric-col", "accuracy",
                                    "--chance", "0.25", "--predict", "2.8e9:3e11", "--bootstrap", "20",
                                    "--workers", "1", "--no-plots", "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "degenerate" in printed and "  step 1: E" not in printed and "task loss –" in printed
    t = json.loads((tmp_path / "o" / "fit.json").read_text())["task_law"]
    assert t["status"].startswith("step 1 (task loss) is degenerate") and not t["step1"]["usable"]
    assert set(t["loss"].values()) == {None} and t["bootstrap"] is None
    assert t["predictions"][0]["loss"] is None and t["predictions"][0]["metric"] is None
    assert "degenerate" in t["leave_largest_out"]["status"] and t["leave_largest_out"]["points"] == []
    md = (tmp_path / "o" / "fit.md").read_text()
    assert "**Degenerate**" in md and "| alpha |" not in md


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("argv,match", [
    (["--task-law", "--loss-col", "bpb", "--metric-col", "acc_norm", "--chance", "0.25"], "no column 'acc_norm'"),
    (["--task-law", "--loss-col", "nll", "--metric-col", "accuracy", "--chance", "0.25"], "choose with --loss-col"),
    (["--task-law", "--loss-col", "bpb", "--metric-col", "accuracy"], "--chance"),
    (["--task-law", "--loss-col", "bpb", "--metric-col", "accuracy", "--chance", "1.5"], r"in \[0, 1\)"),
    (["--task-law", "--loss-col", "bpb", "--metric-col", "accuracy", "--chance", ".25", "--predict", "2.8e9"], "N:D"),
    (["--task-law", "--loss-col", "bpb", "--metric-col", "accuracy", "--chance", ".25", "--predict", "x:1e9"], "N:D"),
    (["--task-law", "--loss-col", "bpb", "--metric-col", "accuracy", "--chance", ".25", "--predict=-1:1e9"],
     "positive"),
    (["--predict", "2.8e9:3e11"], "goes with --task"),
    (["--task-law", "--form", "kaplan", "--chance", ".25"], "drop --form"),
    (["--task", "no_such_task"], "unknown task"),
])
def test_bad_flags_are_one_line_errors(tmp_path, argv, match):
    csv = write_csv(tmp_path / "p.csv", synthetic_rows(sizes=(1e7, 1e8, 1e9), ratios=(5, 80), fractions=(1.0,)))
    args = fit_parser().parse_args(["fit", str(csv), "--out", str(tmp_path / "o"), "--bootstrap", "0", "--no-plots"]
                                   + argv)
    one_line_error(args.func, args, match=match)


def test_bad_data_are_one_line_errors(tmp_path):
    rows = synthetic_rows(sizes=(1e7, 1e8, 1e9), ratios=(5, 80), fractions=(1.0,))
    pct = [dict(r, accuracy=f"{100 * float(r['accuracy']):.2f}") for r in rows]  # accuracies in %
    one_line_error(csv_points, tmp_path, pct, match=r"outside \[0, 1\].*not 26")
    two = [r for r in rows if r["params"] != int(1e9)]
    pts = csv_points(tmp_path, two)
    one_line_error(fit_task_law, pts, match="step 1 needs runs of at least 3 model sizes, got 2")
    neg = [dict(rows[0], bpb="-0.5")] + rows[1:]
    one_line_error(csv_points, tmp_path, neg, match="task loss -0.5 is not a positive number")
    one_line_error(parse_predict, "2.8e9:3e11:1", match="N:D")
    one_line_error(load_task_points, [tmp_path / "runs_missing"], task="hellaswag", match="no such file")


# ----------------------------------------------------------------------------------------------- runs
def test_task_loss_keys_and_chance_cover_what_evaluate_writes():
    """The keys the task law reads are the ones `gerbil eval` writes (every task's `Task.losses`), and
    every registered task has a chance level."""
    from gerbil.eval.tasks import METRIC_KINDS, TASKS
    from gerbil.fit.tasksources import TASK_LOSS_KEYS, chance_for

    assert set(TASK_LOSS_KEYS) == {k for t in TASKS.values() for k in t.losses}
    assert all(METRIC_KINDS[k] == "loss" for k in TASK_LOSS_KEYS)
    assert all("acc" in t.metrics and 0 <= t.chance < 1 for t in TASKS.values())
    # one home: the task law's floor is the task's own
    assert {t: chance_for(t, None) for t in TASKS} == {t: r.chance for t, r in TASKS.items()}
    assert (chance_for("hellaswag", None), chance_for("winogrande", None), chance_for("lambada", None)) == (0.25, 0.5, 0)
    assert chance_for("hellaswag", 0.3) == 0.3  # --chance overrides


def test_task_record_values_reads_the_loss_and_metric_keys():
    rec = {"acc": 0.27, "acc_norm": 0.26, "bpb": 1.91, "nll_per_token": 3.2}
    assert task_record_values(rec, "bpb", "acc") == (1.91, 0.27)
    assert task_record_values(rec, "nll_per_token", "acc_norm") == (3.2, 0.26)
    assert task_record_values({"perplexity": 400.0, "acc": 0.1}, "log_perplexity", "acc") == \
        (pytest.approx(math.log(400.0)), 0.1)
    assert task_record_values({"acc": 0.3}, "bpb", "acc") == (None, 0.3)


def make_run(root: Path, name: str, n: int, budget: int, task_metrics, *, checkpoints=(0.25, 0.5, 1.0),
             partial_first: bool = False, limit: int | None = None) -> Path:
    """A run directory as gerbil writes it: config.yaml, the latest checkpoint's meta.json, and an eval
    record of one task per checkpoint (the latest in eval/, older ones in eval/step-XXXXXXXX/)."""
    import yaml

    rd = root / name
    steps = [int(1000 * f) for f in checkpoints]
    for i, (f, step) in enumerate(zip(checkpoints, steps)):
        ck = rd / "checkpoints" / f"step-{step:08d}"
        ck.mkdir(parents=True)
        (ck / "meta.json").write_text(json.dumps({"step": step, "tokens": int(f * budget), "run": name}))
        task, metrics = task_metrics(n, f * budget)
        folder = rd / "eval" if step == steps[-1] else rd / "eval" / f"step-{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        partial = (partial_first and i == 0) or limit is not None
        (folder / (f"{task}.partial.json" if partial else f"{task}.json")).write_text(json.dumps(
            {"task": task, "metrics": metrics, "n_items": (limit or 10) if partial else 10042, "n_items_full": 10042,
             "partial": partial, "model": {"step": step, "tokens": int(f * budget)}}))
    (rd / "checkpoints" / "latest").write_text(f"step-{steps[-1]:08d}")
    (rd / "config.yaml").write_text(yaml.safe_dump({"name": name, "params": n}))
    return rd


def hellaswag_metrics(n, d):
    L = float(get_form("chinchilla").predict(STEP1, n, d))
    return "hellaswag", {"acc": float(Sigmoid(CHANCE).predict(STEP2, L)), "acc_norm": 0.3, "bpb": L,
                         "nll_per_token": 2 * L}


def test_runs_give_every_checkpoints_record_and_fit_end_to_end(tmp_path):
    runs = tmp_path / "runs"
    for i, n in enumerate((1e7, 1e8, 1e9)):
        for r in (10, 80):
            make_run(runs, f"r{i}-{r}", int(n), int(r * n), hellaswag_metrics, partial_first=(i == 0 and r == 10))
    rows, skipped, notes = read_task_runs(runs, "hellaswag", AUTO_LOSS, "acc")
    assert len(rows) == 17 and len(skipped) == 1 and "subset" in skipped[0]["reason"] and not notes
    assert {r["loss_key"] for r in rows} == {"bpb"}
    row = next(r for r in rows if r["name"] == "r1-80@500")
    assert row["D"] == pytest.approx(0.5 * 80 * 1e8) and row["L"] == pytest.approx(
        float(get_form("chinchilla").predict(STEP1, 1e8, 0.5 * 80e8)))
    r = run_task_fit([runs], tmp_path / "o", TaskLawOptions(task="hellaswag", predict=((3e9, 6e10),), bootstrap=0,
                                                            plots=False))
    t = r["task_law"]
    assert t["task"] == "hellaswag" and t["sigmoid"]["chance"] == 0.25 and r["n_points"] == 17
    assert t["step1"]["n_points"] == 6 and t["loss_name"] == "hellaswag bpb"
    # three sizes: leaving the largest out leaves two, and the check says why it has no numbers
    assert t["leave_largest_out"]["status"].startswith("not possible") and "4 sizes" in t["leave_largest_out"]["status"]
    assert "Leave the largest size out" in (tmp_path / "o" / "fit.md").read_text()
    per_token = load_task_points([runs], task="hellaswag", columns=Columns(loss="nll_per_token"))
    assert per_token.L.max() == pytest.approx(2 * max(row["L"] for row in rows))


def test_runs_without_a_task_loss_or_task_are_one_line_errors(tmp_path):
    runs = tmp_path / "runs"
    for i, n in enumerate((1e7, 1e8, 1e9)):
        make_run(runs, f"r{i}", int(n), int(20 * n), lambda n, d: ("hellaswag", {"acc": 0.26, "acc_norm": 0.27}))
    one_line_error(load_task_points, [runs], task="hellaswag", match="report no task loss")
    one_line_error(load_task_points, [runs], chance=0.25, match="need --task")
    # lambada's log-perplexity comes from its perplexity when the record has no task-loss key
    make_run(tmp_path / "lam", "l0", int(1e7), int(2e8),
             lambda n, d: ("lambada_openai", {"perplexity": 900.0 * 1e8 / d, "acc": 0.01}), checkpoints=(0.5, 1.0))
    pts = load_task_points([tmp_path / "lam"], task="lambada")
    assert pts.chance == 0.0 and pts.loss_name == "lambada_openai log_perplexity"
    assert sorted(pts.L) == pytest.approx(sorted([math.log(900.0 * 1e8 / 1e8), math.log(900.0 * 1e8 / 2e8)]))


def test_a_ladder_scored_on_one_limit_is_fitted_and_says_so(tmp_path):
    """A CPU ladder evaluated with one `--limit` everywhere: its points are comparable with each other,
    so they are used — with a warning — and a point scored on another count is skipped."""
    runs = tmp_path / "runs"
    for i, n in enumerate((1e7, 1e8, 1e9)):
        for r in (10, 80):
            make_run(runs, f"r{i}-{r}", int(n), int(r * n), hellaswag_metrics, limit=100)
    make_run(runs, "other", int(1e8), int(40 * 1e8), hellaswag_metrics, limit=50, checkpoints=(1.0,))
    rows, skipped, notes = read_task_runs(runs, "hellaswag", AUTO_LOSS, "acc")
    assert len(rows) == 18 and [s["reason"] for s in skipped] == ["scored on 50 items, the other points on 100"]
    assert len(notes) == 1 and "first 100 items" in notes[0]
    r = run_task_fit([runs], tmp_path / "o", TaskLawOptions(task="hellaswag", bootstrap=0, plots=False))
    assert r["n_points"] == 18 and "first 100 items" in r["warnings"][0]
    assert "first 100 items" in (tmp_path / "o" / "fit.md").read_text()


def test_a_runaway_coefficient_is_inf_and_nan_without_numpy_warnings():
    """A degenerate step 1 (log A → 1000) gives A = inf and NaN predictions, which the fit reports as
    degenerate; numpy's overflow / invalid-value warnings must not leak out on the way (seen on a CPU suite)."""
    import warnings

    from gerbil.fit.forms import Chinchilla

    form = Chinchilla()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = form.to_params(np.array([1000.0, 1000.0, 0.0, 0.3, 0.3]))
        pred = form.log_predict(p, np.array([1e6, 1e7]), np.array([1e8, 1e9]))
    assert math.isinf(p["A"]) and np.isnan(pred).all()

"""Registry + the seed's table: values from run directories, the seed's formats, partial results kept
apart from full-set ones, reference rows (no torch, milliseconds)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from gerbil.eval import table
from gerbil.model.config import model_config
from gerbil.runs import registry


def make_run(root: Path, name: str, *, size="6.7m", cls="A", objective="plain", tokens=133_651_680,
             step=1020, train_loss=6.07412, batch="131k", evals=None, partial=None, eval_step=None) -> Path:
    """A run directory in the documented layout, with hand-written eval records."""
    run = root / name
    cfg = model_config(size)
    ck = run / "checkpoints" / f"step-{step:08d}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"weights")  # faked; meta.json lists it as checkpoint.py does
    (ck / "meta.json").write_text(json.dumps({
        "step": step, "tokens": tokens, "model": cfg.to_dict(), "size": size, "class": cls,
        "objective": objective, "train_loss": train_loss, "budget": tokens,
        "files": {"model.safetensors": {"bytes": 7, "sha256": "-"}}}))
    (run / "checkpoints" / "latest").write_text(ck.name + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "size": size, "class": cls, "objective": objective, "model": cfg.to_dict(),
        "params": cfg.n_params(), "resolved": {"budget": tokens, "batch": batch}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": 9.9}) + "\n")
    full = {"hellaswag": 10042, "lambada_openai": 5153, "winogrande": 1267, "piqa": 1838}
    for task, metrics in (evals or {}).items():
        write_eval(run, task, metrics, full[task], full[task], eval_step or step)
    for task, (metrics, n) in (partial or {}).items():
        write_eval(run, task, metrics, n, full[task], eval_step or step)
    return run


def write_eval(run: Path, task: str, metrics: dict, n: int, n_full: int, step: int) -> None:
    part = n < n_full
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / (f"{task}.partial.json" if part else f"{task}.json")).write_text(json.dumps({
        "task": task, "metrics": metrics, "n_items": n, "n_items_full": n_full, "partial": part,
        "limit": n if part else None, "model": {"step": step}, "items": []}))


SEED_A = {"hellaswag": {"acc": 0.2604, "acc_norm": 0.26}, "lambada_openai": {"perplexity": 614655.40521, "acc": 0.0},
          "winogrande": {"acc": 0.517}}


def test_row_reproduces_the_seed_format(tmp_path):
    run = make_run(tmp_path, "Gerbil-A-6.7m", evals=SEED_A)
    row = table.row_for_run(run)
    assert row == {"Model Name": "Gerbil-A-6.7m", "Parameters": "6.7m", "Class": "A-Class", "Ratio": "20",
                   "Tokens": "134M", "Batch Size (Tokens)": "131k", "Training Loss ↓": "6.0741",
                   "hellaswag acc ↑": "26.04", "lambada ppl ↓": "614655.4052", "lambada acc ↑": "0",
                   "winogrande acc ↑": "51.7"}


def test_partial_results_are_marked_and_never_mixed(tmp_path):
    run = make_run(tmp_path, "p", evals={"winogrande": {"acc": 0.52}},
                   partial={"hellaswag": ({"acc": 0.3}, 100), "winogrande": ({"acc": 0.9}, 10)})
    row = table.row_for_run(run)
    assert row["hellaswag acc ↑"] == "30*"  # only a partial result: shown, marked
    assert row["winogrande acc ↑"] == "52"  # the full-set result wins over the partial one
    assert row["lambada ppl ↓"] == "pending" and row["lambada acc ↑"] == "pending"
    md = table.render([run])
    assert "\\* partial" in md and "hellaswag: 100 items" in md


def test_stale_results_are_flagged(tmp_path):
    run = make_run(tmp_path, "s", evals=SEED_A, eval_step=500)
    assert table.row_for_run(run)["hellaswag acc ↑"] == "26.04†"
    assert registry.read_run(run).evals["hellaswag"].stale


def test_registry_scan_orders_like_the_seed(tmp_path):
    make_run(tmp_path, "GerbilBlender-A-6.7m", objective="blender", evals=SEED_A)
    make_run(tmp_path, "Gerbil-B-6.7m", cls="B", tokens=280_667_000, step=2000)
    make_run(tmp_path, "Gerbil-A-6.7m", evals=SEED_A)
    make_run(tmp_path, "Gerbil-A-15m", size="15m", tokens=282_000_000)
    (tmp_path / "not-a-run").mkdir()
    names = [r.name for r in registry.scan([tmp_path])]
    assert names == ["Gerbil-A-6.7m", "Gerbil-B-6.7m", "Gerbil-A-15m", "GerbilBlender-A-6.7m"]
    rec = registry.scan([tmp_path / "Gerbil-B-6.7m"])[0]
    assert rec.cls == "B" and rec.train_loss == pytest.approx(6.07412) and round(rec.ratio) == 42
    md = table.render([tmp_path])
    assert "| GerbilBlender-A-6.7m | 6.7m | A-Class | 20 | 134M | 131k |" in md
    assert "| Gerbil-B-6.7m | 6.7m | B-Class | 42 | 281M |" in md


def test_formats_and_reference(tmp_path):
    run = make_run(tmp_path, "Gerbil-A-6.7m", evals=SEED_A)
    rows = list(csv.reader(io.StringIO(table.render([run], fmt="csv", reference=True))))
    assert rows[0][1:12] == list(table.COLUMNS)
    assert rows[1][:3] == ["gerbil", "Gerbil-A-6.7m", "6.7m"]
    assert sum(r[0] == "seed" for r in rows) == len(table.SEED_ROWS)
    data = json.loads(table.render([run], fmt="json", reference=True))
    assert data["runs"][0]["hellaswag acc ↑"] == pytest.approx(0.2604)
    assert data["runs"][0]["partial"]["hellaswag acc ↑"] is False
    assert len(data["seed"]) == len(table.SEED_ROWS) and "v1" in data["notes"][0]
    md = table.render([run], reference=True)
    assert "pythia-70m-deduped" in md and "90.5683" in md and "138.45" in md


def test_cli_table(tmp_path, capsys):
    from gerbil.cli import main

    make_run(tmp_path, "Gerbil-A-6.7m", evals=SEED_A)
    assert main(["table", str(tmp_path), "--format", "csv"]) == 0
    assert "Gerbil-A-6.7m" in capsys.readouterr().out
    assert main(["table", str(tmp_path / "missing")]) == 2
    assert "no such run" in capsys.readouterr().err


def test_a_run_short_of_its_class_budget_is_not_shown_as_that_class(tmp_path):
    # `gerbil train --class A --tokens 262144` (the CPU demo): the meta says class A, but 262k tokens
    # for 6.68M parameters is a ratio of 0.039, not 20 — the class column may not say "A"; the row is
    # named by its run, as every row is.
    run = make_run(tmp_path, "short", tokens=262_144)
    row = table.row_for_run(run)
    assert row["Model Name"] == "short"
    assert row["Class"] == "custom budget"
    assert row["Ratio"] == "0.039"
    assert table.row_for_run(make_run(tmp_path, "full"))["Class"] == "A-Class"


def test_rows_are_named_by_their_runs_and_classless_runs_say_so(tmp_path):
    """Two runs of one size are told apart by their run names; a custom budget (no class) says so; a
    run with no checkpoint yet claims no class."""
    a = make_run(tmp_path, "fim-3.3m", size="3.3m", cls=None, objective="fim", tokens=50_000)
    b = make_run(tmp_path, "mlm-3.3m", size="3.3m", cls=None, objective="mlm", tokens=50_000)
    rows = [table.row_for_run(r) for r in (a, b)]
    assert [r["Model Name"] for r in rows] == ["fim-3.3m", "mlm-3.3m"]
    assert rows[0]["Class"] == "custom budget"
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "config.yaml").write_text(yaml.safe_dump({"name": "fresh", "size": "6.7m", "class": "A"}))
    assert table.row_for_run(empty)["Class"] == "—"


def test_metrics_add_task_loss_columns(tmp_path, capsys):
    """`--metrics`: a bare key adds it for every evaluated task, TASK:KEY (or GROUP:KEY) one column each;
    the seed's columns stay first and unchanged; unknown keys and tasks are one-line errors."""
    from gerbil.cli import main
    from gerbil.errors import GerbilError

    losses = {"hellaswag": {"acc": 0.26, "acc_norm": 0.26, "bpb": 2.41234, "nll_per_token": 6.5},
              "piqa": ({"acc": 0.5, "acc_norm": 0.51, "bpb": 3.1}, 100),
              "lambada_openai": {"perplexity": 9e5, "acc": 0.0, "log_perplexity": 13.71, "bpb": 4.2}}
    make_run(tmp_path, "Gerbil-A-6.7m", evals={k: v for k, v in losses.items() if k != "piqa"},
             partial={"piqa": losses["piqa"]})
    out = json.loads(table.render([tmp_path], fmt="json", metrics="bpb,lambada:log_perplexity,piqa:acc"))
    assert out["columns"][:len(table.COLUMNS)] == list(table.COLUMNS)
    assert out["columns"][len(table.COLUMNS):] == ["hellaswag bpb ↓", "lambada_openai bpb ↓", "piqa bpb ↓",
                                                   "lambada_openai log_perplexity ↓", "piqa acc ↑"]
    cells = out["runs"][0]["cells"]
    assert (cells["hellaswag bpb ↓"], cells["piqa bpb ↓"], cells["piqa acc ↑"]) == ("2.4123", "3.1000*", "50*")
    assert cells["lambada_openai log_perplexity ↓"] == "13.7100"
    # a group, and a task without a result: pending
    md = table.render([tmp_path], metrics="pythia:bpb")
    assert "| winogrande bpb ↓ |" in md.splitlines()[0] and "pending" in md.splitlines()[2]
    assert table.render([tmp_path], metrics=None) == table.render([tmp_path])
    assert main(["table", str(tmp_path), "--metrics", "bpb", "--format", "csv"]) == 0
    header = next(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert header[-4:] == ["hellaswag bpb ↓", "lambada_openai bpb ↓", "piqa bpb ↓", "Partial"]
    for bad, match in (("loss", "unknown metric 'loss'"), ("nosuch:bpb", "unknown task"),
                       ("winogrande:perplexity", "reports no perplexity")):
        with pytest.raises(GerbilError, match=match) as e:
            table.render([tmp_path], metrics=bad)
        assert "\n" not in str(e.value)

"""Class labels: one grammar (`gerbil.classes`) and one rule for when a run may be called its class — the
results table's — in `gerbil plan`, `gerbil suite plan`, config.yaml / meta.json, the export's
``gerbil.class`` and its model card (issue 19, item 8)."""
from __future__ import annotations

import json

import pytest

from gerbil.classes import (CUSTOM_BUDGET, base_class, claimed_class, class_ratio, class_text, is_star, name_part,
                            parse_class, star)
from gerbil.errors import GerbilError, OptionError
from gerbil.plan import format_plan, make_plan
from gerbil.runs.registry import read_run
from helpers import make_store, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_grammar():
    assert parse_class("e-star") == ("E*", 284.0, True) and parse_class("~300") == ("300", 300.0, False)
    assert star("E") == star("E*") == "E*" and base_class("E*") == "E" and is_star("B*") and not is_star("B")
    assert name_part("E*") == "E-star" and name_part(None) is None
    assert class_ratio("B*") == 42 and class_ratio("300") == 300
    with pytest.raises(OptionError, match="unknown class 'F'"):  # a GerbilError (one line) and a ValueError
        parse_class("F")
    assert issubclass(OptionError, GerbilError) and issubclass(OptionError, ValueError)


def test_the_rule():
    assert claimed_class("A", 20) == "A" and claimed_class("B*", 40) == "B*"  # the seed's B*-77m: ratio 40
    assert claimed_class("B", 0.0006) is None and claimed_class(None, 20) is None
    assert claimed_class("E", None) == "E"  # budget unknown (an old record): as recorded
    assert class_text(None) == CUSTOM_BUDGET == "custom budget" and class_text("E*") == "E*"


def test_plan_writes_a_custom_budget_as_such():
    p = make_plan("6.7m", "B", tokens=4096 * 32, seq_len=256, batch_tokens=4096)
    assert p.cls is None and p.name == "6.7m" and p.to_dict()["class"] is None
    assert "class        custom budget:" in format_plan(p)
    assert make_plan("6.7m", "B").cls == "B" and make_plan("6.7m", tokens="300M").cls is None


def test_a_suites_own_budget_continuation_is_a_custom_budget():
    from gerbil.suite.planning import format_suite_plan, plan_suite
    from gerbil.suite.spec import build_suite

    model = {"d_model": 32, "n_layer": 2, "n_head": 2, "rotary_dim": 8, "vocab_size": 1024, "seq_len": 64}
    suite = build_suite({"name": "s", "models": {"micro": model}, "seq_len": 32, "batch_tokens": 256,
                         "eval": False, "data": "unused",
                         "runs": [{"name": "r1", "size": "micro", "tokens": 4096},
                                  {"name": "r2", "parent": "r1", "tokens": 12288},
                                  {"name": "r3", "parent": "r1", "class": "B", "tokens": 12288}]})
    r2, r3 = suite.get("r2"), suite.get("r3")
    assert r2.cls_label == r3.cls_label == "custom" and r2.claimed_class is None and r2.start == 4096
    rows = {line.split()[0]: line for line in format_suite_plan(plan_suite(suite, ["H200"])).splitlines()
            if line.startswith("r")}
    assert "custom budget" in rows["r2"] and "custom budget" in rows["r3"] and " A " not in rows["r2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store")


def test_train_class_b_with_a_few_tokens_is_a_custom_budget_everywhere(store, tmp_path):
    """`gerbil train --class B --tokens N` (N far short of class B's budget): config.yaml and meta.json record
    no class, the table says "custom budget", the export's config.json ``gerbil.class`` is null and its
    card says "custom budget" — as does an export of a checkpoint recorded with "B" before the rule."""
    from gerbil.eval.table import row_for_record
    from gerbil.export import export
    from gerbil.runs.rundir import RunDir
    from gerbil.train.loop import train

    r = train(tiny_config(store, tmp_path, cls="B", tokens=128 * 4, name=None))
    assert r.name == "Gerbil-B-tiny"  # the run's name is kept; its class is not claimed
    run = RunDir(r.run_dir)
    assert run.read_config()["class"] is None and json.loads((r.checkpoint / "meta.json").read_text())["class"] is None
    assert row_for_record(read_run(run.path))["Class"] == "custom budget"
    out = export(run.path, tmp_path / "export", tokenizer=False)
    assert json.loads((out / "config.json").read_text())["gerbil"]["class"] is None
    assert "| class | custom budget |" in (out / "README.md").read_text()
    # a checkpoint recorded with class "B" before the rule exports as a custom budget too
    meta_path = r.checkpoint / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, **{"class": "B"})))
    out = export(run.path, tmp_path / "export2", tokenizer=False)
    assert json.loads((out / "config.json").read_text())["gerbil"]["class"] is None

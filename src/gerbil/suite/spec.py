"""A suite file: many runs as one unit of work, read, expanded and validated before anything trains.

A suite is YAML (every key: docs/suites.md). It holds shared options, a `grid` (sizes × classes ×
objectives × seeds, optionally as a class *cascade*) and/or an explicit list of `runs`; a run may name
a `parent` (a star continuation) and then waits for it; an `isoflop` block designs the runs of an IsoFLOP
study (a few FLOP budgets × model shapes, `gerbil.fit.isoflop.isoflop_grid`). `load_suite(name_or_path)` expands all of it
into `RunSpec`s — one per run directory, each with the `TrainConfig` options it will be trained with —
and checks the whole suite first. This module reads the file and its shared keys; the blocks are expanded
by `gerbil.suite.expand`, their runs' names, parents and budgets decided by `gerbil.suite.budgets`, and
the records are `gerbil.suite.records`' (`RunSpec`, `Suite`, re-exported here):

* unknown keys and wrongly typed values (one line naming the key and where it is);
* every run's options (`TrainConfig`'s own validation), its budget and batch (`gerbil.plan.make_plan`);
* names: duplicates; parents: existence, cycles, the same model and objective;
* a class with no budget (a star class without a parent, a continuation already past its budget);
* the evaluation tasks.

Why validate everything up front: a suite runs for hours or days on several workers; a typo in the
last run must not surface after the first ten have trained.

The class cascade (Hägele et al. 2024, docs/reference.md §7): a constant-LR *trunk* per size runs to the
largest class's budget with its own (1 − sqrt) cooldown over the last 20% (so it *is* that class's
model), and checkpoints at 0.8 × each smaller class's budget; each smaller class is a short *branch*
from there that cools the LR from the trunk's constant value to 0 over its remaining 20%. Branches are
ordinary runs (continuations of a trunk checkpoint) named like the class model they stand for.

Pure Python, no torch: `gerbil suite plan` answers instantly.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError
from gerbil.eval.tasks import DEFAULT_TASKS, resolve_tasks
from gerbil.model.config import ModelConfig
from gerbil.options import read_yaml_mapping
from gerbil.suite.budgets import resolve_runs
from gerbil.suite.expand import (EVAL_KEYS, GRID_KEYS, ISOFLOP_KEYS, SUITE_KEYS, Entry, check_corpus,
                                 check_train_options, expand_grid, expand_isoflop, expand_runs, fail, normalize)
from gerbil.suite.records import BRANCH_COOLDOWN, MANAGED, TRAIN_FIELDS, RunSpec, Suite

__all__ = ["BRANCH_COOLDOWN", "RunSpec", "Suite", "build_suite", "load_suite", "shipped_suites", "suite_path",
           "suites_dir"]


# ------------------------------------------------------------------------------------------ finding
def suites_dir() -> Path:
    """The suites shipped in the package (`gerbil/suite/suites/*.yaml`)."""
    return Path(__file__).resolve().parent / "suites"


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def suite_path(name_or_path: str | Path) -> Path:
    """A suite file by path, or a shipped suite by name (`gerbillab`, `cpu-smoke`, ...)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    shipped = suites_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise GerbilError(f"no suite file {str(name_or_path)!r} and no shipped suite of that name "
                      f"(shipped: {', '.join(shipped_suites())})")


# ------------------------------------------------------------------------------------------ loading
def load_suite(name_or_path: str | Path, *, data: str | None = None) -> Suite:
    """Read, expand and validate a suite file (or a shipped suite by name); see the module docstring.

    data: a token store for runs that name none (a suite such as `gerbillab` leaves the corpus to the
    user: the seed trained on the deduplicated Pile)."""
    path = suite_path(name_or_path)
    try:
        raw = read_yaml_mapping(path, "a suite")
    except ValueError as e:
        raise GerbilError(str(e)) from None
    return build_suite(raw, source=str(path), default_name=path.stem, data=data)


def build_suite(raw: dict, source: str = "<suite>", default_name: str = "suite", data: str | None = None) -> Suite:
    """`load_suite` on an already-read mapping."""
    where = Path(source).name
    top = normalize(where, raw, SUITE_KEYS | (TRAIN_FIELDS - {"name"} - MANAGED), "the suite")
    name = top.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise fail(where, f"name: expected a string, got {name!r}")
    for key in ("description", "data", "corpus", "name_suffix"):
        if top.get(key) is not None and not isinstance(top[key], str):
            raise fail(where, f"{key}: expected a string, got {top[key]!r}")
    check_corpus(where, top.get("corpus"))
    scale = top.get("budget_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale <= 1) \
            or not math.isfinite(scale):
        raise fail(where, f"budget_scale: expected a number in (0, 1], got {scale!r}")
    models = _models(where, top.get("models"))
    tasks, limit = _eval(where, top.get("eval", {}))
    shared = {k: v for k, v in top.items() if k in TRAIN_FIELDS and k not in SUITE_KEYS}
    check_train_options(where, shared)
    entries = _entries(where, top, shared, models)
    specs = resolve_runs(entries, models, float(scale))
    default_data = data or top.get("data")
    for s in specs:
        if s.options.get("data") is None and s.corpus is None and default_data:
            s.options["data"] = default_data
    return Suite(name=name.strip(), runs=specs, source=source, description=top.get("description") or "",
                 data=top.get("data"), corpus=top.get("corpus"), eval_tasks=tasks, eval_limit=limit,
                 budget_scale=float(scale))


def _models(where: str, raw: Any) -> dict[str, dict]:
    """The suite's named custom models (`models:`), each a checked ModelConfig record."""
    if raw is not None and not isinstance(raw, dict):
        raise fail(where, "models: expected a mapping of name → ModelConfig fields")
    models: dict[str, dict] = {}
    for mname, mdef in (raw or {}).items():
        if not isinstance(mdef, dict):
            raise fail(where, f"models.{mname}: expected a mapping of ModelConfig fields, got {mdef!r}")
        try:
            models[str(mname)] = ModelConfig.from_dict(dict(mdef, name=mdef.get("name") or str(mname))).to_dict()
        except (TypeError, ValueError) as e:
            raise fail(where, f"models.{mname}: {e}") from None
    return models


def _eval(where: str, ev: Any) -> tuple[list[str], int | None]:
    """(tasks, limit) of the suite's `eval:` block (default: the default tasks, full sets; false: none)."""
    if ev is False or ev is None:
        ev = {"tasks": []}
    ev = normalize(f"{where}: eval", ev, EVAL_KEYS, "eval")
    tasks: list[str] = []
    t = ev.get("tasks", list(DEFAULT_TASKS))
    if t:
        try:
            tasks = resolve_tasks(t if isinstance(t, (str, list)) else [t])
        except (GerbilError, AttributeError) as e:
            raise fail(where, f"eval.tasks: {e}") from None
    limit = ev.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise fail(where, f"eval.limit: expected a positive integer or null, got {limit!r}")
    return tasks, limit


def _entries(where: str, top: dict, shared: dict, models: dict[str, dict]) -> list[Entry]:
    """Every run entry of the suite's blocks: grids, isoflop blocks (each a mapping or a list), `runs`."""
    entries: list[Entry] = []
    suffix = top.get("name_suffix") or ""
    blocks = (("grid", "a grid", GRID_KEYS, {"name", "size", "cls", "objective", "seed"}, expand_grid),
              ("isoflop", "an isoflop block", ISOFLOP_KEYS, {"name", "size", "model", "tokens", "cls"},
               expand_isoflop))
    for key, what, keys, decided, expand in blocks:
        items = top.get(key) or []
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise fail(where, f"{key}: expected a mapping or a list of mappings")
        for i, g in enumerate(items):
            bw = f"{where}: {key}[{i}]" if len(items) > 1 else f"{where}: {key}"
            g = normalize(bw, g, keys | (TRAIN_FIELDS - decided - MANAGED), what)
            entries += expand(bw, g, shared, top.get("corpus"), models, suffix)
    entries += expand_runs(where, top.get("runs") or [], shared, top.get("corpus"), suffix)
    if not entries:
        raise fail(where, "no runs (give a grid, a list of runs, or both)")
    return entries

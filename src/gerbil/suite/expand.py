"""A suite file's blocks expanded into run entries — ``(where, TrainConfig options, extra)`` — before their
names, parents and budgets are decided (`gerbil.suite.budgets`): a `grid` (sizes × classes × objectives ×
seeds, optionally a class cascade), an `isoflop` block (`gerbil.fit.isoflop.isoflop_grid`) and the explicit
`runs`; with the key checks every block shares (`normalize`: unknown or suite-managed keys, one line naming
the key and where it is). No torch.
"""
from __future__ import annotations

import math
from typing import Any

from gerbil.classes import parse_class
from gerbil.data.builtin import CORPORA
from gerbil.data.objectives import objective_class
from gerbil.errors import GerbilError
from gerbil.fit.isoflop import isoflop_grid
from gerbil.data.encdec import check_objective as check_encdec_objective
from gerbil.model.config import SIZES, T5_SIZES, ModelConfig
from gerbil.suite.records import MANAGED, TRAIN_FIELDS
from gerbil.train.config import TrainConfig
from gerbil.units import DEFAULT_SEQ_LEN

# keys of the suite file itself (besides shared TrainConfig options), and of its blocks
SUITE_KEYS = {"name", "description", "data", "corpus", "models", "eval", "budget_scale", "name_suffix", "grid",
              "runs", "isoflop"}
GRID_KEYS = {"sizes", "classes", "objectives", "seeds", "cascade", "corpus", "ratio", "name_suffix"}
RUN_KEYS = {"name", "parent", "corpus", "ratio"}
ISOFLOP_KEYS = {"budgets", "sizes", "per_budget", "per_gap", "ratio_range", "corpus", "name_suffix"}
EVAL_KEYS = {"tasks", "limit"}
_ALIASES = {"class": "cls", "from": "from_run"}

#: an entry: (where it is in the file, its TrainConfig options, what the suite decides besides)
Entry = tuple[str, dict[str, Any], dict[str, Any]]


def fail(where: str, message: str) -> GerbilError:
    return GerbilError(f"{where}: {message}")


def _norm_key(key: Any) -> str:
    k = str(key).replace("-", "_")
    return _ALIASES.get(k, k)


def normalize(where: str, d: Any, allowed: set[str], what: str) -> dict[str, Any]:
    """Keys normalized (dashes, `class`, `from`); an unknown or suite-managed key is a one-line error."""
    if not isinstance(d, dict):
        raise fail(where, f"{what} must be a mapping of options, got {type(d).__name__}")
    out: dict[str, Any] = {}
    for key, value in d.items():
        k = _norm_key(key)
        if k in MANAGED and k not in allowed:
            hint = {"from_run": "name the run to continue with `parent: NAME`",
                    "runs": "the suite puts runs under --out DIR/runs",
                    "resume": "`gerbil suite run` resumes interrupted runs by itself"}[k]
            raise fail(where, f"key {key!r} is not set in a suite ({hint})")
        if k not in allowed:
            raise fail(where, f"unknown key {key!r} in {what} (known: {', '.join(sorted(allowed))})")
        out[k] = value
    return out


def as_list(where: str, key: str, value: Any, kind: type) -> list:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for x in items:
        if kind is str and isinstance(x, (int, float)) and not isinstance(x, bool):
            continue  # classes such as 300 written as numbers
        if not isinstance(x, kind) or isinstance(x, bool):
            raise fail(where, f"{key}: expected a list of {'strings' if kind is str else 'integers'}, got {value!r}")
    return [str(x) if kind is str else x for x in items]


def check_train_options(where: str, opts: dict[str, Any]) -> None:
    """TrainConfig's own validation of the options (the run's name and budget aside), one line."""
    opts = {k: v for k, v in opts.items() if k in TRAIN_FIELDS}
    if isinstance(opts.get("model"), str):
        opts.pop("model")  # the name of one of the suite's `models` (checked by _model_of)
    try:
        TrainConfig.from_dict(opts)
    except ValueError as e:
        raise fail(where, str(e)) from None


def model_of(where: str, opts: dict[str, Any], models: dict[str, dict]) -> tuple[str, dict | None]:
    """(size label, custom model dict or None): `size` may name a ladder rung or one of the suite's
    `models`; `model` may be a mapping or such a name."""
    model = opts.get("model")
    if isinstance(model, str):
        if model not in models:
            raise fail(where, f"model {model!r} is not one of the suite's models ({', '.join(models) or 'none'})")
        return model, dict(models[model], name=models[model].get("name") or model)
    if isinstance(model, dict):
        try:
            mc = ModelConfig.from_dict(dict(model))
        except (TypeError, ValueError) as e:
            raise fail(where, f"model: {e}") from None
        return mc.name or "custom", mc.to_dict()
    size = opts.get("size")
    if size is None:
        return "", None
    if not isinstance(size, str):
        raise fail(where, f"size: expected a string, got {size!r}")
    if size in models:
        return size, dict(models[size], name=models[size].get("name") or size)
    presets = T5_SIZES if opts.get("arch") == "t5" else SIZES  # `arch: t5` names a T5Blender preset
    if size.strip().lower() in presets:
        return size.strip().lower(), None
    known = list(presets) + list(models)
    raise fail(where, f"unknown size {size!r} (known: {', '.join(known)})")


def check_objective(where: str, objective: str, arch: str | None = None) -> None:
    """A known objective; for ``arch: t5`` one with an encoder-decoder format."""
    try:
        objective_class(objective)
        if arch == "t5":
            check_encdec_objective(objective)
    except (ValueError, GerbilError, KeyError) as e:
        raise fail(where, f"objective: {str(e).splitlines()[0] if str(e) else objective}") from None


def expand_grid(where: str, g: dict, shared: dict, corpus: str | None, models: dict[str, dict],
                 suffix: str) -> list[Entry]:
    sizes = as_list(where, "sizes", g.get("sizes"), str)
    if not sizes:
        raise fail(where, "sizes: at least one size is needed")
    classes = as_list(where, "classes", g.get("classes", ["A"]), str)
    objectives = as_list(where, "objectives", g.get("objectives", [shared.get("objective", "plain")]), str)
    seeds = as_list(where, "seeds", g.get("seeds", [shared.get("seed", 0) or 0]), int)
    cascade = g.get("cascade", False)
    if isinstance(cascade, bool):
        cascade_sizes = set(sizes) if cascade else set()
    else:
        cascade_sizes = set(as_list(where, "cascade", cascade, str))
        unknown = cascade_sizes - set(sizes)
        if unknown:
            raise fail(where, f"cascade: {', '.join(sorted(unknown))} not among the grid's sizes")
    opts_g = {k: v for k, v in g.items() if k in TRAIN_FIELDS}
    out = []
    for size in sizes:
        for objective in objectives:
            for seed in seeds:
                base = dict(shared, **opts_g, objective=objective, seed=seed)
                base["model" if size in models else "size"] = size
                base.pop("model" if size not in models else "size", None)
                tag = g.get("name_suffix", "") + (f"-s{seed}" if len(seeds) > 1 else "")
                extra = {"corpus": g.get("corpus", corpus), "ratio": g.get("ratio"), "suffix": suffix + tag}
                if size in cascade_sizes:
                    if len(classes) < 2:
                        raise fail(where, f"cascade {size}: needs at least two classes")
                    if "tokens" in base or g.get("ratio") is not None:
                        raise fail(where, f"cascade {size}: class budgets only (no tokens/ratio)")
                    labels = []
                    for c in classes:
                        try:
                            label, ratio, star = parse_class(c)
                        except ValueError as e:
                            raise fail(where, f"classes: {e}") from None
                        if star:
                            raise fail(where, f"cascade {size}: star class {c!r} (a cascade's branches are its "
                                               "continuations already)")
                        labels.append((ratio, label))
                    if len({r for r, _ in labels}) != len(labels):
                        raise fail(where, f"cascade {size}: two classes with the same budget")
                    labels.sort()
                    trunk_label = labels[-1][1]
                    key = (size, objective, seed, where)
                    out.append((f"{where} ({size} trunk)", dict(base, cls=trunk_label),
                                dict(extra, role="trunk", trunk_key=key)))
                    for _, lb in labels[:-1]:
                        out.append((f"{where} ({size} branch {lb})", dict(base, cls=lb),
                                    dict(extra, role="branch", branch_of=key)))
                else:
                    for c in classes:
                        out.append((f"{where} ({size} {c})", dict(base, cls=c), dict(extra)))
    return out


def _positive_float(x: Any) -> float | None:
    """A positive finite number, also written as a string (YAML reads 1e16 and 1.0e4 as strings)."""
    if isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def expand_isoflop(where: str, g: dict, shared: dict, corpus: str | None, models: dict[str, dict],
                    suffix: str) -> list[Entry]:
    """An IsoFLOP study's runs (Hoffmann et al. 2022, approach 2): for each FLOP budget, shapes from the
    ladder (or the given `sizes`, ladder rungs or the suite's `models`) and between its rungs, each with
    the whole sequences of tokens that spend the budget at the exact per-token FLOPs — so `gerbil fit`
    finds the runs of one budget together and fits a parabola through them."""
    budgets = g.get("budgets")
    if not isinstance(budgets, list) or not budgets:
        raise fail(where, f"budgets: expected a list of FLOP counts (e.g. [1e16, 3e16, 1e17]), got {budgets!r}")
    flops = []
    for b in budgets:
        f = _positive_float(b)
        if f is None:
            raise fail(where, f"budgets: {b!r} is not a positive number of FLOPs")
        flops.append(f)
    sizes: list[Any] = []
    for sz in as_list(where, "sizes", g.get("sizes"), str):
        label, model = model_of(where, {"size": sz}, models)  # a ladder rung, or one of the suite's models
        sizes.append(ModelConfig.from_dict(model) if model is not None else label)
    ints = {}
    for key, default in (("per_budget", 5), ("per_gap", 2)):
        v = g.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < (3 if key == "per_budget" else 0):
            raise fail(where, f"{key}: expected an integer ≥ {3 if key == 'per_budget' else 0}, got {v!r}")
        ints[key] = v
    rr = g.get("ratio_range", [2, 1000])
    lo_hi = [_positive_float(x) for x in rr] if isinstance(rr, list) and len(rr) == 2 else [None]
    if None in lo_hi or not lo_hi[0] < lo_hi[1]:
        raise fail(where, f"ratio_range: expected [low, high] tokens per parameter, got {rr!r}")
    opts_g = {k: v for k, v in g.items() if k in TRAIN_FIELDS}
    seq_len = int(opts_g.get("seq_len") or shared.get("seq_len") or DEFAULT_SEQ_LEN)
    try:
        rows = isoflop_grid(flops, sizes or None, per_budget=ints["per_budget"], seq_len=seq_len,
                            ratio_range=(lo_hi[0], lo_hi[1]), per_gap=ints["per_gap"])
    except GerbilError as e:
        raise fail(where, str(e)) from None
    out = []
    for row in rows:
        opts = dict(shared, **opts_g, model=dict(row["model"]), tokens=int(row["tokens"]))
        opts.pop("size", None)
        name = row["name"] + g.get("name_suffix", "") + suffix
        extra = {"corpus": g.get("corpus", corpus), "name": name}
        out.append((f"{where} ({name})", opts, extra))
    return out


def expand_runs(where: str, runs: Any, shared: dict, corpus: str | None, suffix: str) -> list[Entry]:
    """The suite's explicit `runs` list."""
    if not isinstance(runs, list):
        raise fail(where, "runs: expected a list of runs")
    out = []
    for ri, r in enumerate(runs):
        rw = f"{where}: runs[{ri}]"
        r = normalize(rw, r, RUN_KEYS | (TRAIN_FIELDS - MANAGED), "a run")
        if r.get("name") is not None:
            rw = f"{where}: run {r['name']}"
        opts = dict(shared, **{k: v for k, v in r.items() if k in TRAIN_FIELDS})
        extra = {"parent": r.get("parent"), "corpus": r.get("corpus", corpus), "ratio": r.get("ratio"),
                 "suffix": suffix, "name": r.get("name")}
        out.append((rw, opts, extra))
    return out


def check_corpus(where: str, corpus: Any) -> None:
    """A built-in corpus name (`gerbil.data.builtin.CORPORA`) or None."""
    if corpus is not None and corpus not in CORPORA:
        raise fail(where, f"corpus: {corpus!r} is not one of {', '.join(CORPORA)}")

"""A suite file: many runs as one unit of work, read, expanded and validated before anything trains.

A suite is YAML (every key: docs/suites.md). It holds shared options, a `grid` (sizes × classes ×
objectives × seeds, optionally as a class *cascade*) and/or an explicit list of `runs`; a run may name
a `parent` (a star continuation) and then waits for it; an `isoflop` block designs the runs of an IsoFLOP
study (a few FLOP budgets × model shapes, `gerbil.fit.isoflop.isoflop_grid`). `load_suite(name_or_path)` expands all of it
into `RunSpec`s — one per run directory, each with the `TrainConfig` options it will be trained with —
and checks the whole suite first:

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

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError
from gerbil.model.config import SIZES, ModelConfig
from gerbil.options import read_yaml_mapping
from gerbil.plan import CLASSES, make_plan, parse_class
from gerbil.schedules import BatchSchedule, build_schedule
from gerbil.train.config import TrainConfig
from gerbil.units import DEFAULT_SEQ_LEN

#: cascade mechanics: the trunk cools down over this share of its own budget; each branch leaves the
#: trunk at (1 − BRANCH_COOLDOWN) × its class budget and cools down over the rest
BRANCH_COOLDOWN = 0.2
#: the built-in corpora a suite may name instead of a store (`gerbil.assets.corpus_dir`)
CORPORA = ("shakespeare", "python")

# keys of the suite file itself (besides shared TrainConfig options)
_SUITE_KEYS = {"name", "description", "data", "corpus", "models", "eval", "budget_scale", "name_suffix", "grid",
               "runs", "isoflop"}
_GRID_KEYS = {"sizes", "classes", "objectives", "seeds", "cascade", "corpus", "ratio", "name_suffix"}
_RUN_KEYS = {"name", "parent", "corpus", "ratio"}
_ISOFLOP_KEYS = {"budgets", "sizes", "per_budget", "per_gap", "ratio_range", "corpus", "name_suffix"}
_EVAL_KEYS = {"tasks", "limit"}
#: TrainConfig fields a suite decides itself (the run's name, its parent, where runs live, resuming)
_MANAGED = {"from_run", "runs", "resume"}
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_ALIASES = {"class": "cls", "from": "from_run"}


# ------------------------------------------------------------------------------------------ records
@dataclass
class RunSpec:
    """One run of a suite: what it trains (TrainConfig options), what it waits for, what it costs.

    `options` are TrainConfig fields as given (plus the derived ones: `model`/`size`, `tokens` for a
    scaled or ratio budget, the cascade's schedule fields); `from_run` is never among them — it is
    derived at claim time from `parent` (the parent's run directory) or, for a cascade branch, from the
    trunk checkpoint at `branch_at` tokens.
    """

    name: str
    options: dict[str, Any]
    role: str = "run"  # run | star | trunk | branch
    parent: str | None = None
    branch_at: int | None = None  # branch: the trunk's tokens where it leaves (the first step at or after)
    cascade: str | None = None  # the trunk's name, for the trunk and its branches
    corpus: str | None = None
    cls_label: str = "A"  # the class the run stands for (a branch: its class, not "A*"; "custom": own tokens)
    size: str = ""
    model: dict = field(default_factory=dict)
    params: int = 0
    seq_len: int = DEFAULT_SEQ_LEN
    budget: int = 0  # total tokens at the end, counted from the very start (a parent's included)
    start: int = 0  # tokens already trained by the parent (the branch point for a branch)
    batch: str = ""
    flops_per_token: int = 0
    mfu: float = 0.0
    scaled: bool = False  # budget = budget_scale × class budget (a proxy, not the class itself)

    @property
    def tokens(self) -> int:
        """Tokens this run trains itself (the loop stops at exactly the budget)."""
        return self.budget - self.start

    @property
    def flops(self) -> float:
        return float(self.flops_per_token) * self.tokens

    def train_options(self) -> dict[str, Any]:
        """The options that decide what is trained (runtime knobs left out) — what a changed suite file
        is compared on, field by field."""
        cfg = TrainConfig.from_dict({k: v for k, v in self.options.items()})
        d = cfg.to_dict()
        runtime = TrainConfig.runtime_fields()
        return {k: v for k, v in d.items() if k not in runtime and k not in _MANAGED and k != "from_run"}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tokens"] = self.tokens
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Suite:
    """A validated, expanded suite: its runs in file order (which is also the table's row order)."""

    name: str
    runs: list[RunSpec]
    source: str = ""
    description: str = ""
    data: str | None = None
    corpus: str | None = None
    eval_tasks: list[str] = field(default_factory=list)
    eval_limit: int | None = None
    budget_scale: float = 1.0

    def get(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]

    def children(self, name: str) -> list[RunSpec]:
        return [r for r in self.runs if r.parent == name]

    def cascades(self) -> dict[str, list[RunSpec]]:
        """trunk name → [trunk, branches...]."""
        out: dict[str, list[RunSpec]] = {}
        for r in self.runs:
            if r.cascade:
                out.setdefault(r.cascade, []).append(r)
        return out

    def order(self) -> list[RunSpec]:
        """Runs in dependency order (parents first), otherwise in file order."""
        done: set[str] = set()
        out: list[RunSpec] = []
        pending = list(self.runs)
        while pending:
            rest = []
            for r in pending:
                if r.parent is None or r.parent in done:
                    out.append(r)
                    done.add(r.name)
                else:
                    rest.append(r)
            if len(rest) == len(pending):  # validated acyclic: unreachable
                raise GerbilError(f"suite {self.name}: dependency cycle among {', '.join(x.name for x in rest)}")
            pending = rest
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "description": self.description, "data": self.data,
                "corpus": self.corpus, "eval": {"tasks": list(self.eval_tasks), "limit": self.eval_limit},
                "budget_scale": self.budget_scale, "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> "Suite":
        ev = d.get("eval") or {}
        return cls(name=d["name"], runs=[RunSpec.from_dict(r) for r in d.get("runs", [])],
                   source=d.get("source", ""), description=d.get("description", ""), data=d.get("data"),
                   corpus=d.get("corpus"), eval_tasks=list(ev.get("tasks") or []), eval_limit=ev.get("limit"),
                   budget_scale=float(d.get("budget_scale", 1.0)))


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


# ------------------------------------------------------------------------------------------ helpers
def _fail(where: str, message: str) -> GerbilError:
    return GerbilError(f"{where}: {message}")


def _norm_key(key: Any) -> str:
    k = str(key).replace("-", "_")
    return _ALIASES.get(k, k)


def _normalize(where: str, d: Any, allowed: set[str], what: str) -> dict[str, Any]:
    """Keys normalized (dashes, `class`, `from`); an unknown or suite-managed key is a one-line error."""
    if not isinstance(d, dict):
        raise _fail(where, f"{what} must be a mapping of options, got {type(d).__name__}")
    out: dict[str, Any] = {}
    for key, value in d.items():
        k = _norm_key(key)
        if k in _MANAGED and k not in allowed:
            hint = {"from_run": "name the run to continue with `parent: NAME`",
                    "runs": "the suite puts runs under --out DIR/runs",
                    "resume": "`gerbil suite run` resumes interrupted runs by itself"}[k]
            raise _fail(where, f"key {key!r} is not set in a suite ({hint})")
        if k not in allowed:
            raise _fail(where, f"unknown key {key!r} in {what} (known: {', '.join(sorted(allowed))})")
        out[k] = value
    return out


def _as_list(where: str, key: str, value: Any, kind: type) -> list:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for x in items:
        if kind is str and isinstance(x, (int, float)) and not isinstance(x, bool):
            continue  # classes such as 300 written as numbers
        if not isinstance(x, kind) or isinstance(x, bool):
            raise _fail(where, f"{key}: expected a list of {'strings' if kind is str else 'integers'}, got {value!r}")
    return [str(x) if kind is str else x for x in items]


def _check_train_options(where: str, opts: dict[str, Any]) -> None:
    """TrainConfig's own validation of the options (the run's name and budget aside), one line."""
    opts = {k: v for k, v in opts.items() if k in _TRAIN_FIELDS}
    if isinstance(opts.get("model"), str):
        opts.pop("model")  # the name of one of the suite's `models` (checked by _model_of)
    try:
        TrainConfig.from_dict(opts)
    except ValueError as e:
        raise _fail(where, str(e)) from None


def _model_of(where: str, opts: dict[str, Any], models: dict[str, dict]) -> tuple[str, dict | None]:
    """(size label, custom model dict or None): `size` may name a ladder rung or one of the suite's
    `models`; `model` may be a mapping or such a name."""
    model = opts.get("model")
    if isinstance(model, str):
        if model not in models:
            raise _fail(where, f"model {model!r} is not one of the suite's models ({', '.join(models) or 'none'})")
        return model, dict(models[model], name=models[model].get("name") or model)
    if isinstance(model, dict):
        try:
            mc = ModelConfig.from_dict(dict(model))
        except (TypeError, ValueError) as e:
            raise _fail(where, f"model: {e}") from None
        return mc.name or "custom", mc.to_dict()
    size = opts.get("size")
    if size is None:
        return "", None
    if not isinstance(size, str):
        raise _fail(where, f"size: expected a string, got {size!r}")
    if size in models:
        return size, dict(models[size], name=models[size].get("name") or size)
    if size.strip().lower() in SIZES:
        return size.strip().lower(), None
    known = list(SIZES) + list(models)
    raise _fail(where, f"unknown size {size!r} (known: {', '.join(known)})")


def _objective_display(where: str, objective: str) -> None:
    from gerbil.data.objectives import objective_class

    try:
        objective_class(objective)
    except (ValueError, GerbilError, KeyError) as e:
        raise _fail(where, f"objective: {str(e).splitlines()[0] if str(e) else objective}") from None


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
    allowed = _SUITE_KEYS | (_TRAIN_FIELDS - {"name"} - _MANAGED)
    top = _normalize(where, raw, allowed, "the suite")
    name = top.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise _fail(where, f"name: expected a string, got {name!r}")
    for key in ("description", "data", "corpus", "name_suffix"):
        if top.get(key) is not None and not isinstance(top[key], str):
            raise _fail(where, f"{key}: expected a string, got {top[key]!r}")
    if top.get("corpus") is not None and top["corpus"] not in CORPORA:
        raise _fail(where, f"corpus: {top['corpus']!r} is not one of {', '.join(CORPORA)}")
    scale = top.get("budget_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale <= 1) or not math.isfinite(scale):
        raise _fail(where, f"budget_scale: expected a number in (0, 1], got {scale!r}")
    suffix = top.get("name_suffix") or ""

    models: dict[str, dict] = {}
    for mname, mdef in (top.get("models") or {}).items():
        if not isinstance(mdef, dict):
            raise _fail(where, f"models.{mname}: expected a mapping of ModelConfig fields, got {mdef!r}")
        try:
            models[str(mname)] = ModelConfig.from_dict(dict(mdef, name=mdef.get("name") or str(mname))).to_dict()
        except (TypeError, ValueError) as e:
            raise _fail(where, f"models.{mname}: {e}") from None
    if top.get("models") is not None and not isinstance(top.get("models"), dict):
        raise _fail(where, "models: expected a mapping of name → ModelConfig fields")

    ev = top.get("eval", {})
    tasks: list[str] = []
    limit = None
    if ev is False or ev is None:
        ev = {"tasks": []}
    ev = _normalize(f"{where}: eval", ev, _EVAL_KEYS, "eval")
    from gerbil.eval.tasks import DEFAULT_TASKS, resolve_tasks

    t = ev.get("tasks", list(DEFAULT_TASKS))
    if t:
        try:
            tasks = resolve_tasks(t if isinstance(t, (str, list)) else [t])
        except (GerbilError, AttributeError) as e:
            raise _fail(where, f"eval.tasks: {e}") from None
    limit = ev.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise _fail(where, f"eval.limit: expected a positive integer or null, got {limit!r}")

    shared = {k: v for k, v in top.items() if k in _TRAIN_FIELDS and k not in _SUITE_KEYS}
    _check_train_options(where, shared)
    entries: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (where, options, extra)

    blocks = (("grid", "a grid", _GRID_KEYS, {"name", "size", "cls", "objective", "seed"}, _expand_grid),
              ("isoflop", "an isoflop block", _ISOFLOP_KEYS, {"name", "size", "model", "tokens", "cls"},
               _expand_isoflop))
    for key, what, keys, decided, expand in blocks:  # each a mapping or a list of them
        items = top.get(key) or []
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise _fail(where, f"{key}: expected a mapping or a list of mappings")
        for i, g in enumerate(items):
            bw = f"{where}: {key}[{i}]" if len(items) > 1 else f"{where}: {key}"
            g = _normalize(bw, g, keys | (_TRAIN_FIELDS - decided - _MANAGED), what)
            entries += expand(bw, g, shared, top.get("corpus"), models, suffix)

    runs = top.get("runs") or []
    if not isinstance(runs, list):
        raise _fail(where, "runs: expected a list of runs")
    for ri, r in enumerate(runs):
        rw = f"{where}: runs[{ri}]"
        r = _normalize(rw, r, _RUN_KEYS | (_TRAIN_FIELDS - _MANAGED), "a run")
        if r.get("name") is not None:
            rw = f"{where}: run {r['name']}"
        opts = dict(shared, **{k: v for k, v in r.items() if k in _TRAIN_FIELDS})
        extra = {"parent": r.get("parent"), "corpus": r.get("corpus", top.get("corpus")),
                 "ratio": r.get("ratio"), "suffix": suffix, "name": r.get("name")}
        entries.append((rw, opts, extra))

    if not entries:
        raise _fail(where, "no runs (give a grid, a list of runs, or both)")
    specs = _resolve(where, entries, models, float(scale))
    default_data = data or top.get("data")
    for s in specs:
        if s.options.get("data") is None and s.corpus is None and default_data:
            s.options["data"] = default_data
    return Suite(name=name.strip(), runs=specs, source=source, description=top.get("description") or "",
                 data=top.get("data"), corpus=top.get("corpus"), eval_tasks=tasks, eval_limit=limit,
                 budget_scale=float(scale))


def _expand_grid(where: str, g: dict, shared: dict, corpus: str | None, models: dict[str, dict],
                 suffix: str) -> list[tuple[str, dict, dict]]:
    sizes = _as_list(where, "sizes", g.get("sizes"), str)
    if not sizes:
        raise _fail(where, "sizes: at least one size is needed")
    classes = _as_list(where, "classes", g.get("classes", ["A"]), str)
    objectives = _as_list(where, "objectives", g.get("objectives", [shared.get("objective", "plain")]), str)
    seeds = _as_list(where, "seeds", g.get("seeds", [shared.get("seed", 0) or 0]), int)
    cascade = g.get("cascade", False)
    if isinstance(cascade, bool):
        cascade_sizes = set(sizes) if cascade else set()
    else:
        cascade_sizes = set(_as_list(where, "cascade", cascade, str))
        unknown = cascade_sizes - set(sizes)
        if unknown:
            raise _fail(where, f"cascade: {', '.join(sorted(unknown))} not among the grid's sizes")
    opts_g = {k: v for k, v in g.items() if k in _TRAIN_FIELDS}
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
                        raise _fail(where, f"cascade {size}: needs at least two classes")
                    if "tokens" in base or g.get("ratio") is not None:
                        raise _fail(where, f"cascade {size}: class budgets only (no tokens/ratio)")
                    labels = []
                    for c in classes:
                        try:
                            label, ratio, star = parse_class(c)
                        except ValueError as e:
                            raise _fail(where, f"classes: {e}") from None
                        if star:
                            raise _fail(where, f"cascade {size}: star class {c!r} (a cascade's branches are its "
                                               "continuations already)")
                        labels.append((ratio, label))
                    if len({r for r, _ in labels}) != len(labels):
                        raise _fail(where, f"cascade {size}: two classes with the same budget")
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


def _expand_isoflop(where: str, g: dict, shared: dict, corpus: str | None, models: dict[str, dict],
                    suffix: str) -> list[tuple[str, dict, dict]]:
    """An IsoFLOP study's runs (Hoffmann et al. 2022, approach 2): for each FLOP budget, shapes from the
    ladder (or the given `sizes`, ladder rungs or the suite's `models`) and between its rungs, each with
    the whole sequences of tokens that spend the budget at the exact per-token FLOPs — so `gerbil fit`
    finds the runs of one budget together and fits a parabola through them."""
    from gerbil.fit.isoflop import isoflop_grid

    budgets = g.get("budgets")
    if not isinstance(budgets, list) or not budgets:
        raise _fail(where, f"budgets: expected a list of FLOP counts (e.g. [1e16, 3e16, 1e17]), got {budgets!r}")
    flops = []
    for b in budgets:
        f = _positive_float(b)
        if f is None:
            raise _fail(where, f"budgets: {b!r} is not a positive number of FLOPs")
        flops.append(f)
    sizes: list[Any] = []
    for sz in _as_list(where, "sizes", g.get("sizes"), str):
        label, model = _model_of(where, {"size": sz}, models)  # a ladder rung, or one of the suite's models
        sizes.append(ModelConfig.from_dict(model) if model is not None else label)
    ints = {}
    for key, default in (("per_budget", 5), ("per_gap", 2)):
        v = g.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < (3 if key == "per_budget" else 0):
            raise _fail(where, f"{key}: expected an integer ≥ {3 if key == 'per_budget' else 0}, got {v!r}")
        ints[key] = v
    rr = g.get("ratio_range", [2, 1000])
    lo_hi = [_positive_float(x) for x in rr] if isinstance(rr, list) and len(rr) == 2 else [None]
    if None in lo_hi or not lo_hi[0] < lo_hi[1]:
        raise _fail(where, f"ratio_range: expected [low, high] tokens per parameter, got {rr!r}")
    opts_g = {k: v for k, v in g.items() if k in _TRAIN_FIELDS}
    seq_len = int(opts_g.get("seq_len") or shared.get("seq_len") or DEFAULT_SEQ_LEN)
    try:
        rows = isoflop_grid(flops, sizes or None, per_budget=ints["per_budget"], seq_len=seq_len,
                            ratio_range=(lo_hi[0], lo_hi[1]), per_gap=ints["per_gap"])
    except GerbilError as e:
        raise _fail(where, str(e)) from None
    out = []
    for row in rows:
        opts = dict(shared, **opts_g, model=dict(row["model"]), tokens=int(row["tokens"]))
        opts.pop("size", None)
        name = row["name"] + g.get("name_suffix", "") + suffix
        extra = {"corpus": g.get("corpus", corpus), "name": name}
        out.append((f"{where} ({name})", opts, extra))
    return out


def _plan_fresh(where: str, size: str, model: dict | None, opts: dict, tokens: int | None):
    """gerbil.plan.make_plan for a run from scratch; its errors one line with the place."""
    seq_len = opts.get("seq_len") or DEFAULT_SEQ_LEN
    arg: Any = ModelConfig.from_dict(dict(model)) if model is not None else size
    try:
        return make_plan(arg, opts.get("cls"), seq_len=int(seq_len), batch_tokens=opts.get("batch_tokens"),
                         tokens=tokens)
    except (ValueError, GerbilError) as e:
        raise _fail(where, str(e)) from None


def _boundary(schedule: BatchSchedule, tokens: int) -> int:
    """The first step boundary at or after `tokens` (where `checkpoint_at` puts a checkpoint)."""
    t = schedule.start_tokens
    for st in schedule.stages:
        end = t + st.steps * st.batch_tokens
        if tokens <= end:
            steps = max(0, -(-(tokens - t) // st.batch_tokens))
            return t + steps * st.batch_tokens
        t = end
    return t


def _resolve(where: str, entries: list[tuple[str, dict, dict]], models: dict[str, dict], scale: float) -> list[RunSpec]:
    from gerbil.model.config import default_mfu
    from gerbil.plan import flops_per_token
    from gerbil.runs.rundir import model_name
    from gerbil.units import fmt_batch

    # --- per entry: options checked, the model it names (None: inherited from its parent)
    info: list[dict[str, Any]] = []
    for w, opts, extra in entries:
        _check_train_options(w, opts)
        _objective_display(w, opts.get("objective", "plain"))
        if extra.get("corpus") is not None and extra["corpus"] not in CORPORA:
            raise _fail(w, f"corpus: {extra['corpus']!r} is not one of {', '.join(CORPORA)}")
        ratio = extra.get("ratio")
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0):
            raise _fail(w, f"ratio: expected a positive number of tokens per parameter, got {ratio!r}")
        try:
            label, _, star = parse_class(opts.get("cls"), ratio)
        except ValueError as e:
            raise _fail(w, f"class: {e}") from None
        size_label, model = _model_of(w, opts, models)
        parent = extra.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise _fail(w, f"parent: expected a run name, got {parent!r}")
        if star and parent is None and extra.get("role") is None:
            raise _fail(w, f"class {label} has no budget of its own: a star class continues a run "
                           f"(give `parent: NAME`)")
        if not size_label and parent is None:
            raise _fail(w, "no model: give a size (e.g. 6.7m) or a model")
        info.append(dict(where=w, opts=opts, extra=extra, label=label + ("*" if parent and not star else ""),
                         size=size_label, model=model, parent=parent, name=extra.get("name")))

    # --- names: given, or the model name (a continuation without a size takes its parent's)
    for _ in range(len(info) + 1):
        known = {e["name"]: e for e in info if e["name"]}
        for e in info:
            if e["name"] is not None:
                continue
            size = (e["model"] or {}).get("name") or e["size"]
            if not size and e["parent"] in known:
                p = known[e["parent"]]
                size = (p["model"] or {}).get("name") or p["size"] or None
            if size:
                e["name"] = model_name(e["opts"].get("objective", "plain"), e["label"], size) + e["extra"].get("suffix", "")
    seen: dict[str, str] = {}
    for e in info:
        if e["name"] is None:
            raise _fail(e["where"], f"parent {e['parent']!r} is not a run of this suite")
        if not isinstance(e["name"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", e["name"]):
            raise _fail(e["where"], f"name: {e['name']!r} is not a usable directory name")
        if e["name"] in seen:
            raise _fail(e["where"], f"two runs are named {e['name']!r} (the other: {seen[e['name']]}); give one a "
                                    f"`name`")
        seen[e["name"]] = e["where"]

    # --- parents: a cascade branch's is its trunk; existence and cycles
    trunks = {e["extra"]["trunk_key"]: e["name"] for e in info if e["extra"].get("role") == "trunk"}
    for e in info:
        if e["extra"].get("role") == "branch":
            e["parent"] = trunks[e["extra"]["branch_of"]]
        if e["parent"] is not None and e["parent"] not in seen:
            raise _fail(e["where"], f"parent {e['parent']!r} is not a run of this suite")
        if e["parent"] == e["name"]:
            raise _fail(e["where"], f"parent: {e['name']!r} cannot continue itself")
    parent_of = {e["name"]: e["parent"] for e in info}
    for e in info:
        chain, cur = [e["name"]], parent_of[e["name"]]
        while cur is not None:
            if cur in chain:
                raise _fail(e["where"], f"parent cycle: {' -> '.join(chain[chain.index(cur):] + [cur])}")
            chain.append(cur)
            cur = parent_of[cur]

    # --- budgets, parents first
    by_name = {e["name"]: e for e in info}
    specs: dict[str, RunSpec] = {}
    schedules: dict[str, BatchSchedule] = {}

    def build(name: str) -> RunSpec:
        if name in specs:
            return specs[name]
        e = by_name[name]
        w, extra, parent = e["where"], e["extra"], e["parent"]
        opts = {k: v for k, v in e["opts"].items() if k != "name"}
        role = extra.get("role") or ("star" if parent else "run")
        cls_label, ratio, _ = parse_class(opts.get("cls"), extra.get("ratio"))
        if opts.get("tokens") is not None and opts.get("cls") is None and extra.get("ratio") is None \
                and parent is None:
            cls_label = "custom"  # its own token count (an IsoFLOP run, a micro run), not class A's budget
        if role == "trunk":
            opts.update(schedule="wsd", cooldown_fraction=BRANCH_COOLDOWN)
        if parent is not None:
            ps = build(parent)
            # a continuation trains its parent's model, at the parent's context and seed, on its objective
            if e["size"]:
                mine = ModelConfig.from_dict(dict(e["model"])) if e["model"] is not None else \
                    SIZES[e["size"]].model_config()
                if _shape(mine) != _shape(ModelConfig.from_dict(dict(ps.model))):
                    raise _fail(w, f"size: a continuation trains its parent's model ({ps.size}); leave it out")
            for key in ("seq_len", "seed"):
                if e["opts"].get(key) is not None and e["opts"][key] != ps.options[key]:
                    raise _fail(w, f"{key}: {e['opts'][key]} differs from the parent {ps.name}'s "
                                   f"{ps.options[key]} (a continuation keeps its parent's)")
            if opts.get("objective", "plain") != ps.options.get("objective", "plain"):
                raise _fail(w, f"objective: {opts.get('objective', 'plain')!r} differs from the parent "
                               f"{ps.name}'s {ps.options.get('objective', 'plain')!r}")
            for key in ("size", "model", "seq_len", "seed"):
                opts.pop(key, None)
                if ps.options.get(key) is not None:
                    opts[key] = ps.options[key]
            size_label, model = ps.size, ps.options.get("model")
        else:
            size_label, model = e["size"], e["model"]
            if model is not None:
                opts.pop("size", None)
                opts["model"] = model
            else:
                opts.pop("model", None)
                opts["size"] = size_label
        seq_len = int(opts.get("seq_len") or DEFAULT_SEQ_LEN)
        opts["seq_len"] = seq_len
        opts["seed"] = int(opts.get("seed") or 0)
        mc = ModelConfig.from_dict(dict(model)) if model is not None else SIZES[size_label].model_config(
            seq_len=max(DEFAULT_SEQ_LEN, seq_len))
        n = mc.n_params("total")
        tokens = opts.get("tokens")
        scaled = False
        if tokens is None and (scale != 1.0 or extra.get("ratio") is not None):
            tokens = int(round(scale * ratio * n))  # a proxy's budget keeps the classes' ratios
            scaled = scale != 1.0
            opts["tokens"] = tokens
        fresh = _plan_fresh(w, size_label, model, opts, tokens)
        budget = fresh.budget_tokens
        b0, b1 = fresh.schedule.stages[0].batch_tokens, fresh.schedule.stages[-1].batch_tokens
        start, branch_at = 0, None
        if role == "branch":
            branch_at = int(math.ceil((1 - BRANCH_COOLDOWN) * budget))
            start = _boundary(schedules[parent], branch_at)  # where the trunk checkpoints for it
            opts.update(schedule="wsd", cooldown_fraction=1.0, warmup_tokens=0)
        elif parent is not None:
            start = specs[parent].budget  # a run stops at exactly its budget
        if start >= budget:
            raise _fail(w, f"class {cls_label} has no budget left: its parent {parent} ends at {start:,} tokens "
                           f"and the class budget is {budget:,}")
        if start and budget - start < b1:
            # make_plan refuses a continuation of less than one step at training time: refuse it now
            what = "the cooldown branch" if role == "branch" else "the continuation"
            raise _fail(w, f"{what} trains only {budget - start:,} tokens, less than one batch of {b1:,} "
                           f"(a smaller batch_tokens, or a larger budget)")
        if start:
            try:
                # how make_plan continues a run: the ramp is complete at the parent's tokens (the seed's
                # star rows: parent at the first batch, the continuation at the second)
                schedule = build_schedule(budget - start, seq_len, b0, b1, ramp_tokens=start, start_tokens=start)
            except ValueError as err:
                raise _fail(w, str(err)) from None
        else:
            schedule = fresh.schedule
        schedules[name] = schedule
        label = schedule.label()
        if parent is not None and role != "branch":
            label = fmt_batch(schedules[parent].stages[0].batch_tokens, schedule.stages[-1].batch_tokens)
        spec = RunSpec(name=name, options=opts, role=role, parent=parent, branch_at=branch_at,
                       cascade=parent if role == "branch" else (name if role == "trunk" else None),
                       corpus=extra.get("corpus"), cls_label=cls_label.rstrip("*") if role == "branch" else cls_label,
                       size=size_label, model=mc.to_dict(), params=n, seq_len=seq_len, budget=budget, start=start,
                       batch=label, flops_per_token=flops_per_token(mc, seq_len), mfu=default_mfu(mc), scaled=scaled)
        specs[name] = spec
        return spec

    for e in info:
        build(e["name"])
    for spec in specs.values():
        if spec.role != "trunk":
            continue
        w = by_name[spec.name]["where"]
        b = schedules[spec.name]
        if len({st.batch_tokens for st in b.stages}) > 1:
            raise _fail(w, "a cascade trunk needs a constant batch (its branches leave it at step boundaries)")
        spec.options["checkpoint_at"] = sorted(s.branch_at for s in specs.values() if s.parent == spec.name
                                               and s.role == "branch")
    for spec in specs.values():  # every derived option set still passes TrainConfig
        _check_train_options(by_name[spec.name]["where"], spec.options)
    return [specs[e["name"]] for e in info]


def _shape(m: ModelConfig) -> tuple:
    return (m.d_model, m.n_layer, m.n_head, m.rotary_dim, m.vocab_size)


def class_ratio(label: str) -> float:
    """Tokens per parameter of a class label ('A' → 20, '300' → 300)."""
    return float(CLASSES.get(label.rstrip("*").upper()) or parse_class(label)[1])

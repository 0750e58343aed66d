"""Points to fit — (parameters, tokens, loss) — from run directories and CSV files; training curves.

Run directories and folders of runs are read with `gerbil.runs.registry.scan` (final validation loss by
default; `train_loss`, or an eval metric `TASK:METRIC` such as `hellaswag:acc` on request). A CSV file
has one row per point with columns `params`, `tokens`, `loss` (names configurable with `Columns`) and
optionally `flops`, `non_embedding_params`, `run` (rows of one run are resampled together by the
bootstrap) and `name`, so published tables can be fitted too.

Rows and runs with a missing value (empty, NaN, a run without the metric) are skipped and counted —
not refused — because published tables and run folders routinely hold a diverged or unfinished run,
and one hole should not block the fit; every skip is listed in the result (fit.json "skipped") and
logged. Values that are present but impossible (a non-positive loss, parameter or token count) are
refused with a one-line GerbilError: they mean the wrong column or a broken file, not a missing run.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from gerbil.errors import GerbilError
from gerbil.model.config import SIZES, ModelConfig
from gerbil.model.config import rung_by_params as ladder_match  # the ladder's one rule (model/config.py)
from gerbil.runs.registry import scan
from gerbil.runs.rundir import RunDir
from gerbil.units import DEFAULT_SEQ_LEN

log = logging.getLogger(__name__)

PARAM_KINDS = ("total", "non_embedding")
FLOPS_CONVENTIONS = ("auto", "6nd", "exact", "column")


@dataclass
class Point:
    """One (N, D, L) observation. `params` is the total count (embeddings and head included)."""

    name: str
    run: str  # bootstrap group: points of one run are resampled together
    params: float
    tokens: float
    loss: float
    non_embedding_params: float | None = None
    flops: float | None = None  # as given by the source (CSV `flops` column)
    model: dict | None = None  # ModelConfig fields, when the architecture is known
    seq_len: int = DEFAULT_SEQ_LEN
    source: str = ""


@dataclass
class Columns:
    """CSV column names (`gerbil fit --params-col ...`)."""

    params: str = "params"
    tokens: str = "tokens"
    loss: str = "loss"
    flops: str = "flops"
    non_embedding: str = "non_embedding_params"
    run: str = "run"
    name: str = "name"


@dataclass
class Curve:
    """One run's training curve: loss against tokens (for approach 1)."""

    name: str
    params: float
    non_embedding_params: float | None
    model: dict | None
    seq_len: int
    tokens: np.ndarray
    loss: np.ndarray


# ------------------------------------------------------------------------------------------- ladder
def _model_of(p: Point) -> ModelConfig | None:
    if p.model:
        try:
            return ModelConfig.from_dict(p.model)
        except (TypeError, ValueError):
            return None
    return None


# ------------------------------------------------------------------------------------------ dataset
@dataclass
class Dataset:
    """The points of all sources, what was skipped and why, and the metric they measure."""

    points: list[Point]
    metric: str = "loss"
    sources: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.points)

    def N(self, kind: str = "total") -> np.ndarray:
        """Parameter counts: "total" or "non_embedding" (from the column, the run's architecture, or
        an exact ladder match)."""
        if kind == "total":
            return np.array([p.params for p in self.points], float)
        if kind != "non_embedding":
            raise GerbilError(f"unknown parameter count {kind!r} (total, non_embedding)")
        out = []
        for p in self.points:
            ne = p.non_embedding_params
            if ne is None:
                m = _model_of(p) or ladder_match(p.params)
                ne = m.n_params("non_embedding") if m is not None else None
            if ne is None:
                raise GerbilError(f"{p.source or p.name}: no non-embedding parameter count for {p.name!r} "
                                  f"(add a non_embedding_params column, or fit --params total)")
            out.append(float(ne))
        return np.array(out, float)

    @property
    def D(self) -> np.ndarray:
        return np.array([p.tokens for p in self.points], float)

    @property
    def L(self) -> np.ndarray:
        return np.array([p.loss for p in self.points], float)

    @property
    def groups(self) -> list[str]:
        return [p.run for p in self.points]

    def flops(self, convention: str = "auto", kind: str = "total") -> tuple[np.ndarray, str]:
        """(training FLOPs per point, the convention used).

        "6nd": 6·N·D with N the `kind` count (with non-embedding counts this is Kaplan et al. 2020's
        C = 6·N·D; with total counts, Hoffmann et al. 2022's); "exact": `gerbil.plan.flops_per_token` ×
        D (non-embedding + head + attention, PaLM's convention — needs the architecture: run
        directories and ladder-size rows have it); "column": the source's `flops`; "auto": the column
        if every point has one, else exact if every architecture is known, else 6·N·D.
        """
        if convention not in FLOPS_CONVENTIONS:
            raise GerbilError(f"unknown FLOPs convention {convention!r} ({', '.join(FLOPS_CONVENTIONS)})")
        if convention == "auto":
            if self.points and all(p.flops is not None for p in self.points):
                convention = "column"
            elif self.points and all(self.model_of(p) is not None for p in self.points):
                convention = "exact"
            else:
                convention = "6nd"
        if convention == "column":
            missing = [p.name for p in self.points if p.flops is None]
            if missing:
                raise GerbilError(f"--flops column: {len(missing)} points have no flops value (first: {missing[0]!r}; "
                                  f"--flops-col names the CSV column)")
            return np.array([p.flops for p in self.points], float), "column"
        if convention == "6nd":
            return 6.0 * self.N(kind) * self.D, "6nd"
        from gerbil.plan import flops_per_token

        out = []
        for p in self.points:
            m = self.model_of(p)
            if m is None:
                raise GerbilError(f"exact FLOPs need the architecture, unknown for {p.name!r} "
                                  f"({p.params:,.0f} params is no ladder size): use --flops 6nd or a flops column")
            out.append(float(flops_per_token(m, p.seq_len)) * p.tokens)
        return np.array(out, float), "exact"

    @staticmethod
    def model_of(p: Point) -> ModelConfig | None:
        """The point's architecture: recorded, or the ladder size with exactly its parameter count."""
        return _model_of(p) or ladder_match(p.params, p.non_embedding_params)

    def curves(self, min_points: int = 3) -> list[Curve]:
        """Runs with several points (a CSV with a run column) as training curves."""
        by_run: dict[str, list[Point]] = {}
        for p in self.points:
            by_run.setdefault(p.run, []).append(p)
        out = []
        for run, pts in by_run.items():
            if len(pts) < min_points or len({p.params for p in pts}) != 1:
                continue
            pts.sort(key=lambda p: p.tokens)
            m = self.model_of(pts[0])
            out.append(Curve(run, pts[0].params, pts[0].non_embedding_params,
                             m.to_dict() if m else None, pts[0].seq_len,
                             np.array([p.tokens for p in pts]), np.array([p.loss for p in pts])))
        return out

    def records(self) -> list[dict]:
        """The points as plain dicts (fit.json "data")."""
        return [{k: v for k, v in asdict(p).items() if k != "model" or v is not None} for p in self.points]


# ---------------------------------------------------------------------------------------------- CSV
def _number(text: Any) -> float:
    """A number from a CSV cell: 1.34e8, 134000000, '134,000,000', '134M' (decimal suffixes k m b t).
    Empty, 'nan' or 'NA' → NaN (a missing value)."""
    s = str(text if text is not None else "").strip().replace("_", "").replace(",", "")
    if s.lower() in ("", "nan", "na", "n/a", "none", "null", "-"):
        return float("nan")
    try:
        return float(s)
    except ValueError:
        pass
    units = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    if s and s[-1].lower() in units:
        try:
            return float(s[:-1]) * units[s[-1].lower()]
        except ValueError:
            pass
    raise ValueError(s)


def read_table(path: str | Path, required: Sequence[tuple[str, str]] = ()) -> tuple[list[str], list[dict]]:
    """(header, rows as dicts) of a CSV/TSV file (delimiter sniffed, names stripped); refuses, in one
    line, an unreadable or empty file, a missing `required` (column, flag naming it) and no rows."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            reader = csv.DictReader(f, dialect=dialect)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except OSError as e:
        raise GerbilError(f"cannot read {path}: {e.strerror or e}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise GerbilError(f"{path}: not a readable CSV file ({e})") from None
    if not header:
        raise GerbilError(f"{path}: empty CSV file")
    for need, flag in required:
        if need not in header:
            raise GerbilError(f"{path}: no column {need!r} (columns: {', '.join(header)}; choose with {flag})")
    if not rows:
        raise GerbilError(f"{path}: no rows")
    return header, [{(k or "").strip(): v for k, v in r.items()} for r in rows]


# beyond these a value is no real model or run (the largest trained models have ~1e12 parameters and ~1e13
# tokens): a wrong column or unit, refused rather than fitted (one such point moves the whole law)
PLAUSIBLE_MAX = {"params": 1e15, "non_embedding": 1e15, "tokens": 1e17, "flops": 1e35, "loss": 1e6}


def check_value(where: str, what: str, v: float) -> None:
    """A present value of a point: positive, finite and below `PLAUSIBLE_MAX`, else a one-line error."""
    if not math.isfinite(v) or v <= 0:
        raise GerbilError(f"{where}: {what} {v:g} is not a positive number")
    top = PLAUSIBLE_MAX.get(what)
    if top is not None and v > top:
        raise GerbilError(f"{where}: {what} {v:g} is beyond any real model or run (at most {top:g}): a wrong "
                          f"column or unit?")


def read_csv(path: str | Path, columns: Columns | None = None) -> tuple[list[Point], list[dict]]:
    """(points, skipped rows) of one CSV file; see the module docstring for what is skipped."""
    cols = columns or Columns()
    path = Path(path)
    # an optional column named explicitly (--flops-col X) must be there: never silently fitted without it
    named = [(getattr(cols, k), f"--{k.replace('_', '-')}-col") for k in ("flops", "non_embedding", "run", "name")
             if getattr(cols, k) != getattr(Columns(), k)]
    header, rows = read_table(path, ((cols.params, "--params-col"), (cols.tokens, "--tokens-col"),
                                     (cols.loss, "--loss-col"), *named))
    points, skipped = [], []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        label = (row.get(cols.name) or "").strip() or f"{path.name}:{i}"
        try:
            vals = {k: _number(row.get(c)) for k, c in (("params", cols.params), ("tokens", cols.tokens),
                                                         ("loss", cols.loss))}
            opt = {k: _number(row.get(c)) if c in header else float("nan")
                   for k, c in (("flops", cols.flops), ("non_embedding", cols.non_embedding))}
        except ValueError as e:
            raise GerbilError(f"{path}: line {i}: {str(e)!r} is not a number") from None
        missing = [k for k, v in vals.items() if math.isnan(v)]
        if missing:
            skipped.append({"source": str(path), "row": i, "name": label,
                            "reason": f"missing {', '.join(missing)}"})
            continue
        for k, v in list(vals.items()) + [(k, v) for k, v in opt.items() if not math.isnan(v)]:
            check_value(f"{path}: line {i}", k, v)
        run = (row.get(cols.run) or "").strip() if cols.run in header else ""
        points.append(Point(name=label, run=run or label, params=vals["params"], tokens=vals["tokens"],
                            loss=vals["loss"], non_embedding_params=None if math.isnan(opt["non_embedding"])
                            else opt["non_embedding"], flops=None if math.isnan(opt["flops"]) else opt["flops"],
                            source=str(path)))
    return points, skipped


# --------------------------------------------------------------------------------------------- runs
def _run_model(run_dir: Path, size: str | None) -> tuple[dict | None, int]:
    """(model config dict, seq_len) of a run: as recorded (`RunDir.model_config`: its latest checkpoint,
    else its config.yaml), or the ladder size it names — plain file reads, no torch."""
    model, seq_len = RunDir(run_dir).model_config()
    if model is None and size and str(size).lower() in SIZES:
        model = SIZES[str(size).lower()].model_config().to_dict()
    if model is not None:
        try:
            ModelConfig.from_dict(model)
        except (TypeError, ValueError):
            model = None
    return model, seq_len or DEFAULT_SEQ_LEN


def _metric_value(rec: Any, metric: str) -> tuple[float | None, str | None]:
    """(value to fit, reason it is missing). Accuracies are fitted as errors, 1 − acc."""
    if metric in ("val_loss", "train_loss"):
        v = getattr(rec, metric)
        return (float(v), None) if v is not None else (None, f"no {metric}")
    task, _, name = metric.partition(":")
    if not name:
        raise GerbilError(f"unknown metric {metric!r} (val_loss, train_loss, or TASK:METRIC such as hellaswag:acc)")
    e = rec.evals.get(task)
    if e is None:
        return None, f"no {task} evaluation"
    if e.partial:
        return None, f"{task} evaluated on a subset only (--limit)"
    if name not in e.metrics:
        return None, f"{task} has no metric {name!r} (has {', '.join(e.metrics)})"
    v = float(e.metrics[name])
    if name.startswith("acc"):
        v = 1.0 - (v / 100.0 if v > 1.0 else v)  # error rate; the seed's tables write accuracy in %
    return v, None


def metric_label(metric: str) -> str:
    """What is fitted for a metric name (accuracies become error rates)."""
    task, _, name = metric.partition(":")
    return f"1 − {metric} (error rate)" if name.startswith("acc") else metric


def read_runs(path: str | Path, metric: str = "val_loss") -> tuple[list[Point], list[dict]]:
    """(points, skipped runs) for a run directory or a folder of runs (one point per run)."""
    records = scan([path])
    if not records:
        raise GerbilError(f"{path}: no runs found (a run directory has config.yaml or checkpoints/)")
    points, skipped = [], []
    for rec in records:
        value, why = _metric_value(rec, metric)
        if rec.task:
            why = f"a fine-tuning run (task {rec.task}): its loss is no language-model loss"
        elif rec.unfinished:
            why = f"unfinished: {rec.tokens:,} of {rec.budget:,} tokens (not at the end of its schedule)"
        elif value is None or not math.isfinite(value):
            why = why or f"{metric} is {value}"
        elif rec.params is None or rec.tokens is None:
            why = "no parameter count" if rec.params is None else "no token count (no checkpoint)"
        if why:
            skipped.append({"source": str(rec.run_dir), "name": rec.name, "reason": why})
            continue
        for what, v in (("loss", value), ("params", rec.params), ("tokens", rec.tokens)):
            check_value(str(rec.run_dir), metric if what == "loss" else what, float(v))
        model, seq_len = _run_model(Path(rec.run_dir), rec.size)
        ne = ModelConfig.from_dict(model).n_params("non_embedding") if model else None
        points.append(Point(name=rec.name, run=str(Path(rec.run_dir).resolve()), params=float(rec.params),
                            tokens=float(rec.tokens), loss=value, non_embedding_params=ne, model=model,
                            seq_len=seq_len, source=str(rec.run_dir)))
    return points, skipped


def load_points(sources: Sequence[str | Path], metric: str = "val_loss", columns: Columns | None = None
                ) -> Dataset:
    """All points of `sources` (CSV files, run directories, folders of runs), skips counted.

    `metric` applies to runs; a CSV's `loss` column is taken as it is.
    """
    if not sources:
        raise GerbilError("no sources: give CSV files, run directories or folders of runs")
    points: list[Point] = []
    skipped: list[dict] = []
    kinds = set()
    for src in map(Path, sources):
        if src.is_file():
            if src.suffix.lower() not in (".csv", ".tsv", ".txt"):
                raise GerbilError(f"{src}: not a CSV file or run directory")
            pts, sk = read_csv(src, columns)
            kinds.add("csv")
        elif src.is_dir():
            pts, sk = read_runs(src, metric)
            kinds.add("runs")
        else:
            raise GerbilError(f"{src}: no such file or directory")
        if not pts:
            raise GerbilError(f"{src}: no usable points ({len(sk)} skipped: "
                              f"{sk[0]['reason'] if sk else 'empty'})")
        points += pts
        skipped += sk
    for s in skipped:
        log.warning("skipped %s: %s", s.get("name") or s.get("source"), s["reason"])
    label = metric_label(metric) if "runs" in kinds else "loss"
    if kinds == {"csv", "runs"}:
        label = f"{label} (runs) and loss (CSV)"
    ds = Dataset(points, metric=label, sources=[str(s) for s in sources], skipped=skipped)
    if skipped:
        ds.notes.append(f"{len(skipped)} rows/runs skipped: missing values, unfinished or fine-tuning runs "
                        f"(listed under 'skipped' with the reason)")
    return ds


# ------------------------------------------------------------------------------------------- curves
def read_curves(paths: Iterable[str | Path], metric: str = "loss") -> list[Curve]:
    """Training curves from the `metrics.jsonl` of run directories (and folders of runs).

    Lines carry `tokens` and `loss` (and `val_loss` at evaluation steps); `metric` picks which. Runs
    without at least 3 usable lines are left out (logged).
    """
    out = []
    for rec in scan(list(paths)):
        toks, vals = [], []
        try:
            records = list(RunDir(rec.run_dir).read_metrics())
        except OSError:
            records = []
        for r in records:
            if r.get("tokens") and r.get(metric) is not None:
                t, v = float(r["tokens"]), float(r[metric])
                if t > 0 and math.isfinite(v) and v > 0:
                    toks.append(t)
                    vals.append(v)
        model, seq_len = _run_model(Path(rec.run_dir), rec.size)
        params = rec.params or (ModelConfig.from_dict(model).n_params("total") if model else None)
        if len(toks) < 3 or not params:
            log.info("no %s curve for %s (%d points)", metric, rec.name, len(toks))
            continue
        order = np.argsort(toks, kind="stable")
        ne = ModelConfig.from_dict(model).n_params("non_embedding") if model else None
        out.append(Curve(rec.name, float(params), ne, model, seq_len, np.array(toks)[order], np.array(vals)[order]))
    return out

"""The compute planner: which size, token budget and class a fitted L(N, D) says to train.

Forward (`plan_for_time`, `gerbil plan --gpu T4 --hours 2`): every ladder size (and shapes between
rungs) trains for the given hours at its throughput on that GPU — measured by the project where runs on
that GPU exist (median `tok_s` of their `metrics.jsonl`), else estimated as GPU peak × `default_mfu`
÷ FLOPs per token (labelled an estimate); the fit predicts each one's loss. The answer is the ladder
size with the lowest predicted loss, its tokens per parameter snapped to the nearest class (A 20 …
E 284), and the best class-sized run that fits in the time.

Inverse (`plan_for_loss`, `--loss 4.0`): the cheapest (N, D) whose predicted loss reaches the target,
continuous under C = 6·N·D, and on the ladder (tokens each size needs; FLOPs at the exact per-token
count; hours when a GPU is given).

Without a fit file the planner uses a published fit and says which (`PUBLISHED_FITS`); note those were
fitted on models of 70M–16B parameters (Hoffmann et al. 2022), so at 3.3m–104m they extrapolate
downwards — fit the project's own runs (`gerbil fit`) to plan from measurements.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gerbil.errors import GerbilError
from gerbil.model.config import SIZES, ModelConfig
from gerbil.runs.registry import scan
from gerbil.runs.rundir import RunDir
from gerbil.units import DEFAULT_SEQ_LEN

log = logging.getLogger(__name__)

# Published approach-3 fits, total parameters, C = 6·N·D.
PUBLISHED_FITS: dict[str, dict] = {
    "besiroglu2024": {
        "form": "chinchilla", "param_count": "total",
        "params": {"E": 1.817, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3658},
        "label": "Besiroglu et al. 2024 (\"Chinchilla Scaling: A replication attempt\"), "
                 "their refit of Hoffmann et al.'s approach 3",
    },
    "chinchilla2022": {
        "form": "chinchilla", "param_count": "total",
        "params": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
        "label": "Hoffmann et al. 2022 (Chinchilla), approach 3",
    },
}
DEFAULT_FIT = "besiroglu2024"


@dataclass
class FitSpec:
    """A law to plan with: form, parameters, which parameter count N means, and where it came from."""

    form: str
    params: dict[str, float]
    param_count: str  # "total" or "non_embedding"
    label: str
    warnings: list[str] = field(default_factory=list)

    def predict(self, N: float, D: float) -> float:
        from gerbil.fit.laws import get_form

        return float(get_form(self.form).predict(self.params, N, D))

    def n_of(self, model: ModelConfig) -> int:
        """The model's parameter count in the fit's counting."""
        return model.n_params(self.param_count)


def load_fit(source: str | Path | None = None) -> FitSpec:
    """A fit from a `gerbil fit` fit.json, a published fit's name (`PUBLISHED_FITS`), or the default
    published fit (None)."""
    from gerbil.fit.laws import get_form

    if source is None or str(source).lower() in PUBLISHED_FITS:
        key = str(source).lower() if source is not None else DEFAULT_FIT
        p = PUBLISHED_FITS[key]
        return FitSpec(p["form"], dict(p["params"]), p["param_count"], f"published fit {key}: {p['label']}")
    path = Path(source)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise GerbilError(f"{path}: no such fit file (or published fit: {', '.join(PUBLISHED_FITS)})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise GerbilError(f"{path}: not a readable fit.json ({e})") from None
    law = d.get("law") if isinstance(d, dict) else None
    if not isinstance(law, dict) or "params" not in law:
        raise GerbilError(f"{path}: no 'law' block (write it with `gerbil fit`)")
    try:
        form = get_form(str(law.get("form", "chinchilla")))
    except GerbilError as e:
        raise GerbilError(f"{path}: {e}") from None
    params = law["params"]
    if not isinstance(params, dict):
        raise GerbilError(f"{path}: the law's params are {json.dumps(params)}, not the fitted parameters "
                          f"(write it with `gerbil fit`)")
    missing = [k for k in form.param_names
               if not isinstance(params.get(k), (int, float)) or isinstance(params.get(k), bool)]
    if missing:
        raise GerbilError(f"{path}: the {form.name} law lacks {', '.join(missing)}")
    count = law.get("param_count", "total")
    if count not in ("total", "non_embedding"):
        raise GerbilError(f"{path}: unknown param_count {count!r}")
    warns = list(d.get("warnings") or [])
    label = f"fit {path} ({form.name}, {count} parameters, {d.get('n_points', '?')} points)"
    if not law.get("converged", True):
        warns.append("that fit did not converge")
    spec = FitSpec(form.name, {k: float(params[k]) for k in form.param_names}, count, label,
                   [str(w) for w in warns])
    check_law(spec, str(path))
    return spec


# the loss a law may predict on the ladder: far above any language model's (ln 50,257 = 10.8 nats for a
# uniform guess over the vocabulary), far below what only a broken or hand-edited fit.json yields
MAX_PLAUSIBLE_LOSS = 1e6


def check_law(fit: FitSpec, where: str) -> None:
    """Refuse (one line) a law nothing can be planned from: a non-finite parameter, a non-positive one (E
    may be 0) — with an exponent ≤ 0 the loss does not fall with size or data — or predictions on the
    ladder (3.3m-104m, 1M-10T tokens) that are not finite or not a plausible loss."""
    import numpy as np

    from gerbil.fit.laws import get_form

    for k, v in fit.params.items():
        if not math.isfinite(v):
            raise GerbilError(f"{where}: {k} = {v}: a law with a non-finite parameter predicts nothing")
        if k == "E" and v < 0:
            raise GerbilError(f"{where}: E = {v:g}: the irreducible loss cannot be negative")
        if v <= 0 and k != "E":
            raise GerbilError(f"{where}: {k} = {v:g}: the {fit.form} law needs it positive (an exponent ≤ 0 "
                              f"means the loss does not fall with size or data)")
    N = np.array([fit.n_of(m) for _, m in _ladder()], float)[:, None]
    with np.errstate(all="ignore"):
        L = np.asarray(get_form(fit.form).predict(fit.params, N, np.geomspace(1e6, 1e13, 8)[None, :]), float)
    bad = ~np.isfinite(L) | (L > MAX_PLAUSIBLE_LOSS)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise GerbilError(f"{where}: the law predicts a loss of {L[i, j]:.3g} at {N[i, 0]:,.0f} parameters: "
                          f"not a plausible loss (a damaged or hand-edited fit?)")


# --------------------------------------------------------------------------------------- throughput
def _gpu_matches(recorded: str, gpu_name: str) -> bool:
    """'Tesla T4' matches T4, 'NVIDIA H100 80GB HBM3' matches H100 (as gerbil.train.resolve does)."""
    key = gpu_name.upper().replace(" ", "").replace("-", "")
    return key in recorded.upper().replace(" ", "").replace("-", "")


def measured_throughput(runs: Sequence[str | Path], gpu_name: str) -> tuple[dict[tuple, tuple[float, str]], list[str]]:
    """{(d_model, n_layer, n_head): (tokens/s, label)} from runs on `gpu_name`, and notes on runs not used.

    tokens/s is the median `tok_s` of a run's `metrics.jsonl` after its first 10% of lines (compile
    warm-up); several runs of one shape: the median of their medians. A run whose env.json names
    another GPU (or the CPU) is not used; one without env.json is used and said to be unverified.
    """
    from gerbil.fit.sources import _run_model

    per: dict[tuple, list[tuple[float, str]]] = {}
    notes = []
    for rec in scan(list(runs)):
        run = RunDir(rec.run_dir)
        env = run.read_env()
        gpu = env.get("gpu")
        if env and not gpu:
            notes.append(f"{rec.name}: trained on {env.get('device', 'an unknown device')}, not used")
            continue
        if gpu and not _gpu_matches(str(gpu), gpu_name):
            notes.append(f"{rec.name}: trained on {gpu}, not used for {gpu_name}")
            continue
        try:
            vals = [float(r["tok_s"]) for r in run.read_metrics()
                    if isinstance(r.get("tok_s"), (int, float)) and r["tok_s"] > 0]
        except OSError:
            vals = []
        model, _ = _run_model(run.path, rec.size)
        if not vals or model is None:
            notes.append(f"{rec.name}: no tok_s or model in the run, not used")
            continue
        vals = vals[len(vals) // 10:]
        m = ModelConfig.from_dict(model)
        where = f"measured, {rec.name}" + ("" if gpu else f" (env.json missing: GPU assumed {gpu_name})")
        per.setdefault((m.d_model, m.n_layer, m.n_head), []).append((statistics.median(vals), where))
    out = {}
    for key, v in per.items():
        med = statistics.median(x for x, _ in v)
        out[key] = (med, v[0][1] if len(v) == 1 else f"measured, median of {len(v)} runs")
    return out, notes


def throughput(model: ModelConfig, gpu: Any, measured: dict | None = None, mfu: float | None = None,
               seq_len: int = DEFAULT_SEQ_LEN) -> tuple[float, str]:
    """(training tokens/s of `model` on `gpu`, where the number comes from)."""
    from gerbil.model.config import default_mfu
    from gerbil.plan import flops_per_token

    key = (model.d_model, model.n_layer, model.n_head)
    if measured and key in measured:
        return measured[key]
    u = mfu if mfu is not None else default_mfu(model)
    src = f"estimate: peak × {u:.0%} MFU" + (" (given)" if mfu is not None else "")
    return gpu.peak_flops * u / flops_per_token(model, seq_len), src


# ------------------------------------------------------------------------------------------ classes
def nearest_class(ratio: float) -> str:
    """The class (A 20, B 42, C 76, D 142, E 284 tokens per parameter) nearest in log ratio."""
    from gerbil.plan import CLASSES

    return min(CLASSES, key=lambda c: abs(math.log(ratio / CLASSES[c])))


def _ladder() -> list[tuple[str, ModelConfig]]:
    return [(name, spec.model_config()) for name, spec in SIZES.items()]


# -------------------------------------------------------------------------------------------- time
MAX_HOURS = 1e6
@dataclass
class TimePlan:
    """`plan_for_time`'s answer; `rows` has one entry per ladder size."""

    gpu: str
    hours: float
    fit: FitSpec
    rows: list[dict]
    best: dict
    best_class_run: dict | None
    between: dict  # best shape of the ladder + interpolated family
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"gpu": self.gpu, "hours": self.hours, "fit": self.fit.label, "fit_params": self.fit.params,
                "param_count": self.fit.param_count, "rows": self.rows, "best": self.best,
                "best_class_run": self.best_class_run, "best_between_rungs": self.between,
                "notes": self.notes + self.fit.warnings}


def _time_row(name: str, m: ModelConfig, fit: FitSpec, gpu: Any, seconds: float, measured: dict | None,
              mfu: float | None, seq_len: int) -> dict:
    from gerbil.plan import CLASSES

    tok_s, src = throughput(m, gpu, measured, mfu, seq_len)
    tokens = tok_s * seconds
    n_total = m.n_params("total")
    ratio = tokens / n_total
    cls = nearest_class(ratio)
    class_tokens = CLASSES[cls] * n_total
    # the largest class whose budget fits in the time
    fits = [c for c in CLASSES if CLASSES[c] * n_total <= tokens]
    row = {"size": name, "params": n_total, "params_non_embedding": m.n_params("non_embedding"),
           "tok_s": tok_s, "tok_s_source": src, "tokens": tokens, "ratio": ratio,
           "loss": fit.predict(fit.n_of(m), tokens), "class": cls, "class_tokens": class_tokens,
           "class_hours": class_tokens / tok_s / 3600, "class_loss": fit.predict(fit.n_of(m), class_tokens),
           "largest_class_in_time": fits[-1] if fits else None}
    if fits:
        t = CLASSES[fits[-1]] * n_total
        row["largest_class_loss"] = fit.predict(fit.n_of(m), t)
        row["largest_class_hours"] = t / tok_s / 3600
    return row


def plan_for_time(gpu: str, hours: float, fit: FitSpec | None = None, runs: Sequence[str | Path] = (),
                  mfu: float | None = None, seq_len: int = DEFAULT_SEQ_LEN) -> TimePlan:
    """The ladder size, tokens and class with the lowest predicted loss after `hours` on one `gpu`."""
    from gerbil.fit.isoflop import shape_family
    from gerbil.plan import get_gpu

    g = get_gpu(gpu)
    if not (hours > 0 and math.isfinite(hours)):
        raise GerbilError(f"--hours must be a positive number, got {hours}")
    if hours > MAX_HOURS:
        raise GerbilError(f"--hours {hours:g} is more than {MAX_HOURS:,.0f} GPU hours ({MAX_HOURS / 8766:.0f} years "
                          f"on one GPU): no plan")
    fit = fit or load_fit(None)
    measured, notes = measured_throughput(runs, g.name) if runs else ({}, [])
    secs = hours * 3600.0
    rows = [_time_row(n, m, fit, g, secs, measured, mfu, seq_len) for n, m in _ladder()]
    best = min(rows, key=lambda r: r["loss"])
    in_time = [r for r in rows if r["largest_class_in_time"]]
    best_class = min(in_time, key=lambda r: r["largest_class_loss"]) if in_time else None
    fam = [_time_row(m.name, m, fit, g, secs, None, mfu, seq_len) for m in shape_family(per_gap=3)]
    between = min(fam, key=lambda r: r["loss"])
    if best is rows[0] or best is rows[-1]:
        notes.append(f"the best size is at the end of the ladder ({best['size']}): the optimum may lie beyond it")
    if not all("measured" in r["tok_s_source"] for r in rows):
        how = "as given" if mfu is not None else \
            "gerbil.model.config.default_mfu (plain compiled PyTorch measured per size on an H200, not gerbil; assumed on this GPU)"
        notes.append(f"estimated throughputs: {g.name} peak {g.peak_flops / 1e12:g} TFLOP/s ({g.source}) × MFU "
                     f"{how} ÷ FLOPs per token; pass runs trained on this GPU (--runs DIR) to use measured tok/s")
    return TimePlan(g.name, hours, fit, rows, best, best_class, between, notes)


# -------------------------------------------------------------------------------------------- loss
@dataclass
class LossPlan:
    """`plan_for_loss`'s answer."""

    loss: float
    fit: FitSpec
    continuous: dict
    rows: list[dict]
    cheapest: dict | None
    gpu: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"loss": self.loss, "fit": self.fit.label, "fit_params": self.fit.params,
                "param_count": self.fit.param_count, "continuous": self.continuous, "rows": self.rows,
                "cheapest_on_ladder": self.cheapest, "gpu": self.gpu, "notes": self.notes + self.fit.warnings}


def plan_for_loss(loss: float, fit: FitSpec | None = None, gpu: str | None = None,
                  runs: Sequence[str | Path] = (), mfu: float | None = None, seq_len: int = DEFAULT_SEQ_LEN) -> LossPlan:
    """The cheapest (N, D) whose predicted loss is `loss`: continuous under C = 6·N·D, and per ladder size."""
    import numpy as np

    from gerbil.fit.laws import get_form
    from gerbil.plan import flops_per_token, get_gpu

    fit = fit or load_fit(None)
    law = get_form(fit.form)
    floor = law.floor(fit.params)
    if not (loss > 0 and math.isfinite(loss)):
        raise GerbilError(f"--loss must be a positive number, got {loss}")
    if loss <= floor:
        raise GerbilError(f"loss {loss:g} is at or below the fit's irreducible loss E = {floor:.4g}: "
                          f"no model reaches it")
    # continuous: minimise 6·N·D(N) on a fine log grid of N (D(N) from the law's inverse)
    Ns = np.geomspace(1e4, 1e14, 20001)
    Ds = law.tokens_for_loss(fit.params, Ns, loss)
    C = 6.0 * Ns * Ds
    i = int(np.argmin(C))
    notes = []
    if not np.isfinite(C[i]):
        raise GerbilError(f"loss {loss:g} is not reached by any model up to 1e14 parameters under this fit")
    if i in (0, len(Ns) - 1):
        notes.append("the cheapest size is at the edge of the searched range (1e4–1e14 parameters)")
    count = "non-embedding" if fit.param_count == "non_embedding" else "total"
    cont = {"N": float(Ns[i]), "D": float(Ds[i]), "flops_6nd": float(C[i]), "ratio": float(Ds[i] / Ns[i]),
            "param_count": count}
    g = get_gpu(gpu) if gpu else None
    measured = measured_throughput(runs, g.name)[0] if (g and runs) else {}
    rows = []
    for name, m in _ladder():
        D = float(law.tokens_for_loss(fit.params, fit.n_of(m), loss))
        row: dict[str, Any] = {"size": name, "params": m.n_params("total"), "tokens": D,
                               "reachable": math.isfinite(D)}
        if math.isfinite(D):
            row.update(ratio=D / m.n_params("total"), **{"class": nearest_class(D / m.n_params("total"))},
                       flops=float(flops_per_token(m, seq_len)) * D)
            if g:
                tok_s, src = throughput(m, g, measured, mfu, seq_len)
                row.update(tok_s=tok_s, tok_s_source=src, hours=D / tok_s / 3600)
        rows.append(row)
    ok = [r for r in rows if r["reachable"]]
    cheapest = min(ok, key=lambda r: r["hours"] if g else r["flops"]) if ok else None
    if not ok:
        notes.append(f"no ladder size reaches loss {loss:g} under this fit (the smallest loss a size can reach "
                     f"is its E + A/N^α)")
    return LossPlan(loss, fit, cont, rows, cheapest, g.name if g else None, notes)


# --------------------------------------------------------------------------------------- rendering
def _tok(x: float) -> str:
    from gerbil.plan import fmt_tokens

    return fmt_tokens(int(round(x))) if math.isfinite(x) else "never"


def format_time_plan(p: TimePlan) -> str:
    """The `gerbil plan --gpu G --hours H` report."""
    from gerbil.plan import CLASSES, fmt_duration, fmt_params

    lines = [f"Compute-optimal plan for {p.hours:g} h on one {p.gpu}", f"  law: {p.fit.label}",
             f"  N counts {p.fit.param_count.replace('_', '-')} parameters; D is tokens trained", "",
             f"  {'size':<5} {'params':>7} {'tok/s':>8} {'tokens':>7} {'tok/param':>9} {'class':>5} "
             f"{'pred. loss':>10}  throughput"]
    for r in p.rows:
        mark = " <- best" if r is p.best else ""
        lines.append(f"  {r['size']:<5} {fmt_params(r['params']):>7} {r['tok_s']:>8,.0f} {_tok(r['tokens']):>7} "
                     f"{r['ratio']:>9.3g} {r['class']:>5} {r['loss']:>10.4f}  {r['tok_s_source']}{mark}")
    lines.append("  (class = the class nearest to tok/param; tokens = tok/s × the hours)")
    b = p.best
    lines += ["", f"  answer: {b['size']} ({fmt_params(b['params'])} params) on {_tok(b['tokens'])} tokens, "
                  f"{b['ratio']:.3g} tokens per parameter, predicted loss {b['loss']:.4f}",
              f"          nearest class {b['class']} ({CLASSES[b['class']]} per parameter): "
              f"Gerbil-{b['class']}-{b['size']} "
              f"= {_tok(b['class_tokens'])} tokens, {fmt_duration(b['class_hours'] * 3600)}, predicted loss "
              f"{b['class_loss']:.4f}"]
    c = p.best_class_run
    if c:
        lines.append(f"  best class run that fits in {p.hours:g} h: Gerbil-{c['largest_class_in_time']}-{c['size']}, "
                     f"{_tok(CLASSES[c['largest_class_in_time']] * c['params'])} tokens, "
                     f"{fmt_duration(c['largest_class_hours'] * 3600)}, predicted loss {c['largest_class_loss']:.4f}")
    else:
        lines.append(f"  no class run (A = 20 tokens per parameter) of a ladder size fits in {p.hours:g} h")
    bt = p.between
    lines.append(f"  between rungs: best shape {bt['size']} ({fmt_params(bt['params'])}), {_tok(bt['tokens'])} tokens, "
                 f"predicted loss {bt['loss']:.4f} (throughput estimated)")
    lines += [f"  note: {n}" for n in p.notes + p.fit.warnings]
    return "\n".join(lines)


def format_loss_plan(p: LossPlan) -> str:
    """The `gerbil plan --loss L` report."""
    from gerbil.plan import fmt_duration, fmt_flops, fmt_params

    c = p.continuous
    lines = [f"Cheapest run reaching loss {p.loss:g}", f"  law: {p.fit.label}",
             f"  continuous (C = 6·N·D): N = {fmt_params(c['N'])} {c['param_count']} params, D = {_tok(c['D'])} "
             f"tokens ({c['ratio']:.3g} per parameter), {fmt_flops(c['flops_6nd'])} FLOPs", "",
             f"  {'size':<5} {'params':>7} {'tokens':>8} {'tok/param':>9} {'class':>5} {'FLOPs':>9}"
             + (f" {'time':>8}" if p.gpu else "")]
    for r in p.rows:
        if not r["reachable"]:
            lines.append(f"  {r['size']:<5} {fmt_params(r['params']):>7} {'never':>8}")
            continue
        mark = " <- cheapest" if r is p.cheapest else ""
        lines.append(f"  {r['size']:<5} {fmt_params(r['params']):>7} {_tok(r['tokens']):>8} {r['ratio']:>9.3g} "
                     f"{r['class']:>5} {fmt_flops(r['flops']):>9}"
                     + (f" {fmt_duration(r['hours'] * 3600):>8}" if p.gpu else "") + mark)
    if p.cheapest:
        r = p.cheapest
        when = f", {fmt_duration(r['hours'] * 3600)} on one {p.gpu} ({r['tok_s_source']})" if p.gpu else ""
        lines += ["", f"  answer on the ladder: {r['size']} for {_tok(r['tokens'])} tokens "
                      f"({r['ratio']:.3g} per parameter, nearest class {r['class']}){when}"]
    lines += [f"  note: {n}" for n in p.notes + p.fit.warnings]
    return "\n".join(lines)

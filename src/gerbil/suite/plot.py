"""`gerbil suite plot`: PNGs of a suite's runs (matplotlib, Agg backend — no display needed).

* ``loss.png`` — validation loss vs tokens trained (log x) for every run, from metrics.jsonl (a
  continuation's curve starts where its parent's ended);
* ``evals.png`` — each eval column of the seed's table, then each evaluated task's loss (bits per byte,
  `gerbil table --metrics bpb`), vs training FLOPs (the model's whole training compute: a continuation
  counts its parent's tokens), log x; hollow markers for partial (`--limit`) results — written once some
  run has an evaluation;
* ``cascade-<trunk>.png`` — each cascade as a tree: the learning rate vs tokens of the trunk (constant,
  then its own cooldown) and of each branch (leaving the trunk at its branch point, cooling to 0), with
  the final validation losses;
* ``curves.png`` — metrics (top row) and task losses in bits per byte (bottom row) vs tokens trained for
  runs evaluated at every checkpoint (`gerbil eval --all-checkpoints`, read back with
  `RunDir.eval_history`), when there are any.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from gerbil.eval.table import EVAL_COLUMNS, extra_columns
from gerbil.eval.tasks import TASKS
from gerbil.extras import pyplot
from gerbil.fsutil import mkdir
from gerbil.runs.registry import read_run
from gerbil.suite.state import SuiteDir

log = logging.getLogger(__name__)


def plot_suite(suite_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the PNGs (see the module docstring) into `out` (default DIR/plots); returns their paths."""
    sdir = SuiteDir(suite_dir)
    suite = sdir.read_suite()
    dest = mkdir(Path(out) if out else sdir.plots)
    plt = pyplot("gerbil suite plot")
    written = [_loss(sdir, suite, dest, plt)]
    e = _evals(sdir, suite, dest, plt)
    if e is not None:
        written.append(e)
    for trunk, members in suite.cascades().items():
        written.append(_cascade(sdir, trunk, members, dest, plt))
    c = _curves(sdir, suite, dest, plt)
    if c is not None:
        written.append(c)
    return written


def _save(fig, path: Path) -> Path:
    """Into a temporary name, then renamed: a reader never sees a half-written PNG."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def _loss(sdir: SuiteDir, suite, dest: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    # tab10 repeats after 10 runs; a bigger suite gets tab20 (then repeats with another marker)
    cmap = plt.get_cmap("tab20") if len(suite.runs) > 10 else None
    for i, spec in enumerate(suite.runs):
        run = sdir.run_dir(spec.name)
        pts = [(m["tokens"], m["val_loss"]) for m in run.read_metrics() if m.get("val_loss") is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        style = "--" if spec.role == "branch" else "-"
        color = cmap(i % 20) if cmap is not None else f"C{i % 10}"
        ax.plot(xs, ys, style, marker="os^"[(i // 20) % 3], markersize=3, label=spec.name, color=color)
        drawn += 1
    ax.set_xscale("log")
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"suite {suite.name}: validation loss")
    if drawn:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no validation losses yet", ha="center", transform=ax.transAxes)
    ax.grid(True, which="both", alpha=0.3)
    path = _save(fig, dest / "loss.png")
    plt.close(fig)
    return path


def _evals(sdir: SuiteDir, suite, dest: Path, plt) -> Path | None:
    """evals.png, or None (nothing written) when no run has an evaluation result yet."""
    recs = []
    for spec in suite.runs:
        run = sdir.run_dir(spec.name)
        if run.path.is_dir():
            rec = read_run(run.path)
            if rec.tokens:
                recs.append((spec, rec))
    cols = list(EVAL_COLUMNS + extra_columns("bpb", [r for _, r in recs]))  # the seed's columns, the task losses
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 4), squeeze=False)
    drawn = 0
    for spec, rec in recs:
        flops = float(spec.flops_per_token) * rec.tokens  # the model's whole training compute
        for ax, (col, task, metric, kind) in zip(axes[0], cols):
            e = rec.evals.get(task)
            if e is None or metric not in e.metrics:
                continue
            y = e.metrics[metric] * (100 if kind == "pct" else 1)
            ax.scatter([flops], [y], facecolors="none" if e.partial else None, edgecolors="C0", color="C0", s=25)
            ax.annotate(spec.name, (flops, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax, (col, task, metric, kind) in zip(axes[0], cols):
        ax.set_xscale("log")
        if kind == "ppl":
            ax.set_yscale("log")
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("training FLOPs")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"suite {suite.name}: evaluation vs compute (hollow: partial, --limit)")
    path = _save(fig, dest / "evals.png")
    plt.close(fig)
    return path


def _cascade(sdir: SuiteDir, trunk: str, members, dest: Path, plt) -> Path:
    """The cascade's tree: LR vs tokens (recorded in metrics.jsonl; planned shape before training)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for spec in members:
        run = sdir.run_dir(spec.name)
        rows = [(m["tokens"], m["lr"]) for m in run.read_metrics() if m.get("lr") is not None]
        if spec.role == "branch":
            label = f"{spec.name} (class {spec.cls_label})"
        else:
            label = f"{spec.name} (trunk, class {spec.cls_label})"
        if rows:
            xs, ys = zip(*rows)
        else:  # not trained yet: where it will go
            xs, ys = (spec.start, spec.budget), (1.0, 0.0)
        line, = ax.plot(xs, ys, "-" if spec.role == "trunk" else "--", label=label, linewidth=2 if spec.role == "trunk" else 1.2)
        result = run.read_result() or {}
        if result.get("val_loss") is not None:
            ax.annotate(f"val {result['val_loss']:.3f}", (xs[-1], ys[-1]), fontsize=7, color=line.get_color(),
                        xytext=(2, 6), textcoords="offset points")
        if spec.role == "branch":
            ax.axvline(spec.start, color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("learning rate")
    ax.set_title(f"cascade {trunk}: constant-LR trunk, (1 - sqrt) cooldown branches")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    path = _save(fig, dest / f"cascade-{trunk}.png")
    plt.close(fig)
    return path


def _curves(sdir: SuiteDir, suite, dest: Path, plt) -> Path | None:
    series: dict[str, dict[str, list]] = {}
    for spec in suite.runs:
        pts = sdir.run_dir(spec.name).eval_history()
        by_task: dict[str, list] = {}
        for p in pts:
            by_task.setdefault(p.task, []).append(p)
        if any(len(v) > 1 for v in by_task.values()):
            series[spec.name] = by_task
    if not series:
        return None
    tasks = [t for t in TASKS if any(t in s for s in series.values())]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 8), squeeze=False)
    for col, task in enumerate(tasks):
        for ax, metric in zip(axes[:, col], (TASKS[task].metrics[0], "bpb")):
            for name, by_task in series.items():
                pts = sorted((p for p in by_task.get(task, []) if metric in p.metrics), key=lambda p: p.tokens)
                if pts:
                    ax.plot([max(1, p.tokens) for p in pts], [p.metrics[metric] for p in pts], marker="o",
                            markersize=3, label=name)
            ax.set_xscale("log")
            if metric == "perplexity":
                ax.set_yscale("log")
            ax.set_title(f"{task} {metric}" + (" (task loss)" if metric == "bpb" else ""), fontsize=9)
            if metric == "bpb":  # the bottom row
                ax.set_xlabel("tokens trained")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6)
    fig.suptitle(f"suite {suite.name}: metrics at every checkpoint")
    fig.tight_layout()
    path = _save(fig, dest / "curves.png")
    plt.close(fig)
    return path

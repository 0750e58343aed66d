"""The main job (`gerbil demo`, README command 1): assets → Shakespeare store → a Gerbil-A-6.7m → its row.

The store is the built-in Shakespeare store (`gerbil.data.builtin`), shared with suites and `gerbil
prepare --corpus shakespeare`.

Offline after the first fetch, no arguments. On a GPU it trains the real Gerbil-A-6.7m budget (20 tokens
per parameter = 133.7M tokens at the seed's 131k batch and context 2048). On a CPU that would take days,
so it trains the same model on a reduced budget at a short context, labelled as such wherever it is
printed (the row's class reads "CPU demo"). Re-running it reuses the store, and a finished run is
reported again instead of being retrained (an interrupted one is resumed).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gerbil.data.builtin import builtin_store
from gerbil.eval.evaluate import evaluate
from gerbil.eval.table import COLUMNS, row_for_run
from gerbil.runs.rundir import RunDir
from gerbil.train.config import TrainConfig
from gerbil.train.device import pick_device
from gerbil.train.loop import RunResult, train

log = logging.getLogger(__name__)

# CPU demo: the recipe recipes/cpu-demo-6.7m.yaml — 6.7m at context 256, 8k-token batches, 262k tokens
# (32 steps), LR 1e-2 after a 2-step warmup. The LR was picked by a measurement on the Shakespeare store
# (2026-11-26): after 5 steps the loss was 8.99 at 1e-2 vs 10.06 at 3e-3 (3e-3 needed 10 steps to get
# there); a short run needs the larger step. 6.7m training costs ≈ 21 MFLOP per token (the 50k head
# dominates): 731 tok/s, 358 s on two lightly loaded cores (measured), much slower on a busy machine.
CPU_DEMO_RECIPE = "cpu-demo-6.7m.yaml"


@dataclass
class DemoResult:
    result: RunResult
    store: Path
    reduced: bool
    evals: dict | None
    row: str


def demo_config(device: str, store: Path, runs: str = "runs") -> tuple[TrainConfig, bool]:
    """(config, reduced): the real Gerbil-A-6.7m on CUDA, the labelled CPU budget otherwise."""
    dev = pick_device(device)
    if dev.type == "cuda":
        return TrainConfig(size="6.7m", cls="A", data=str(store), runs=runs, device=device,
                           name="demo-Gerbil-A-6.7m"), False
    recipe = resources.files("gerbil").joinpath("recipes", CPU_DEMO_RECIPE)
    return TrainConfig.from_yaml(str(recipe), dict(data=str(store), runs=runs, device=device,
                                                   name="demo-Gerbil-6.7m-cpu")), True


def evaluate_hook(checkpoint: Path, progress: bool = True) -> dict:
    """Evaluate the checkpoint on hellaswag / lambada / winogrande (`gerbil.eval.evaluate.evaluate`, harness
    semantics, fp32) and store the results in the run's `eval/` folder, where `gerbil table` finds them.

    Returns ``{task: {metric: value}}``.
    """
    records = evaluate(str(checkpoint), progress=progress)
    return {task: dict(rec["metrics"]) for task, rec in records.items()}


def format_row(result: RunResult, reduced: bool) -> str:
    """The model's row in the seed's table format (README of GerbilLab; docs/reference.md §4).

    Cells come from `gerbil.eval.table.row_for_run` (the same code as `gerbil table`: eval columns from the
    run's `eval/*.json`, "pending" where missing); a reduced CPU run is relabelled so it can never be
    mistaken for a Gerbil-A result.
    """
    cells = row_for_run(result.run_dir)
    if reduced:
        cells["Model Name"] = f"{cells['Model Name']} (CPU demo, reduced budget)"
        cells["Class"] = "CPU demo (not A)"
        cells["Ratio"] = f"{result.tokens / result.n_params:.3g}"
    header = "| " + " | ".join(COLUMNS) + " |"
    rule = "| " + " | ".join("---" for _ in COLUMNS) + " |"
    return "\n".join([header, rule, "| " + " | ".join(str(cells.get(c, "")) for c in COLUMNS) + " |"])


def run_demo(runs: str = "runs", device: str = "auto", evaluate: bool = True,
             progress: bool | None = None) -> DemoResult:
    """Fetch assets, prepare Shakespeare, train (or reuse/resume) the demo run, evaluate, format the row.

    evaluate: run the three full sets (harness semantics, fp32) and fill the eval columns. Measured
    2026-11-26 for the 6.7m on 2 lightly loaded CPU cores: 4 min 8 s (hellaswag 46, lambada 532,
    winogrande 349 items/s).
    """
    store = builtin_store("shakespeare", progress=progress is not False)  # the suites' and `prepare --corpus`'s
    cfg, reduced = demo_config(device, store, runs)
    cfg.progress = progress
    run = RunDir(Path(runs) / cfg.name)
    latest = run.latest_checkpoint() if run.path.is_dir() else None
    done = run.read_result()
    if latest is not None and done is not None and done.get("checkpoint") == str(latest):
        done["run_dir"], done["checkpoint"] = Path(done["run_dir"]), Path(done["checkpoint"])
        result = RunResult(**done)
        log.info("demo run %s already finished; reporting it (delete the folder to retrain)", run.path)
    else:
        cfg.resume = run.path.is_dir()  # continue a checkpoint, or start again a run killed before its first
        result = train(cfg)
    evals = None
    if evaluate:
        try:
            evals = evaluate_hook(result.checkpoint, progress=progress is not False)
        except Exception as e:  # never lose a finished training run to an evaluation problem
            log.warning("evaluation failed (%s); eval columns left pending", e)
    return DemoResult(result, store, reduced, evals, format_row(result, reduced))

"""A continuation (a star run): a run that starts where another one stopped — one rule for `gerbil train
--from`, `gerbil plan --from` and a suite's ``parent:`` (docs/reference.md §3 and §7). No torch.

* It trains its parent's model, at the parent's context (`seq_len`) and seed — the loader cursor it takes
  over is only meaningful for those — on the parent's objective: a given size, model, seq_len or seed
  that differs is refused (`inherit`), one left out is the parent's.
* It starts at the parent's tokens and step: its class budget counts from the parent's very start, and a
  batch ramp is complete there (the seed's star rows: the parent at the first batch, the continuation at
  the second; `gerbil.plan.make_plan` plans it), so its batch reads "parent's first - its own last"
  (`ParentPoint.batch_label`).
* Its class is a star class (`gerbil.classes.star`).

A parent is a `ParentPoint`: read from a trained run or checkpoint (`ParentPoint.read`), or, for a suite
planned before anything trains, built from the parent run's plan. An encoder-decoder continues the same
way (`ModelConfig.shape` compares its architecture too).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError, OptionError
from gerbil.model.config import ModelConfig, arch_model_config
from gerbil.runs.rundir import RunDir, meta_file, read_meta, resolve_source
from gerbil.units import DEFAULT_SEQ_LEN, fmt_batch


@dataclass(frozen=True)
class ParentPoint:
    """Where a continuation starts: its parent's model and settings and how far the parent trained."""

    model: dict  # the parent's ModelConfig (to_dict), as recorded
    size: str  # its ladder name, or the custom model's name
    seq_len: int
    seed: int
    objective: str
    tokens: int  # trained by the parent: where the continuation starts
    step: int = 0
    first_batch: int | None = None  # the parent's first batch in tokens (the continuation's batch label)
    who: str = "parent run"  # how errors name it ("parent run", "parent r1")
    child: str = "the continuation"  # how errors name the run continuing it ("the cooldown branch")
    checkpoint: Path | None = None  # None: a suite's parent, planned but not trained yet
    run: RunDir | None = None  # the parent's run directory, when the checkpoint is in one
    meta: dict = field(default_factory=dict)  # the checkpoint's meta.json

    @classmethod
    def read(cls, path: str | Path, runs: str | Path | None = None, check_hash: bool = True) -> "ParentPoint":
        """The parent a `--from PATH` names: the latest intact checkpoint of a run (PATH, or a run of that
        name under `runs`), or the checkpoint given. Bad ones are one-line GerbilErrors."""
        p = Path(path).expanduser()
        if not p.exists() and runs is not None and (Path(runs) / str(path)).exists():
            p = Path(runs) / str(path)
        try:
            src = resolve_source(p, check_hash=check_hash)
        except GerbilError as e:
            raise GerbilError(f"--from: {e}") from None
        if src.checkpoint is None:
            raise GerbilError(f"--from: {p}: an export folder has no training state to continue; give its run "
                              f"or checkpoint")
        meta = _read_parent_meta(src.checkpoint)
        model = ModelConfig.from_dict(dict(meta["model"]))
        run = src.run
        return cls(model=dict(meta["model"]), size=str(meta.get("size") or model.name or "custom"),
                   seq_len=int(meta.get("seq_len") or DEFAULT_SEQ_LEN), seed=int(meta.get("seed") or 0),
                   objective=str(meta.get("objective") or "plain"), tokens=int(meta["tokens"]),
                   step=int(meta["step"]), first_batch=_first_batch(run), checkpoint=src.checkpoint, run=run,
                   meta=meta)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(dict(self.model))

    def batch_label(self, last_batch: int, own: str) -> str:
        """A continuation's batch as the seed writes its star rows: the parent's first batch, then this
        run's last ("131k-262k"); `own` (the run's own schedule label) when the parent's is unknown."""
        return fmt_batch(self.first_batch, last_batch) if self.first_batch else own

    def data_record(self) -> dict:
        """The parent run's `data` record of config.yaml (the store a continuation must read), or {}."""
        return dict((self.run.read_config().get("data") or {}) if self.run is not None else {})

    def final_lr(self) -> float | None:
        """The LR of the parent's last step, where the continuation's schedule starts: recorded in meta.json
        since 0.2; for older checkpoints the metrics.jsonl line of that step."""
        if self.meta.get("lr") is not None:
            return float(self.meta["lr"])
        if self.run is not None:
            for rec in self.run.read_metrics():
                if rec.get("step") == self.meta.get("step") and rec.get("lr") is not None:
                    return float(rec["lr"])
        return None


def inherit(parent: ParentPoint, where: str, *, size: str | None = None, model: ModelConfig | None = None,
            seq_len: int | None = None, seed: int | None = None, objective: str | None = None) -> dict[str, Any]:
    """The settings a continuation takes from `parent` — ``model`` (dict), ``size``, ``seq_len``, ``seed`` —
    after refusing a given one that differs (a size or model of another shape, another seq_len, seed or
    objective), one line starting with `where` ("--from", a suite run's place)."""
    theirs = parent.model_config()  # a size names a preset of the parent's architecture (GPT-J ladder, T5)
    mine = model if model is not None else (arch_model_config(theirs.arch, size) if size is not None else None)
    if mine is not None and mine.shape != theirs.shape:
        what = ("--size " if where.startswith("--") else "size ") + str(size) if model is None else "the given model"
        raise OptionError(f"{where}: {what} is not the parent's model ({parent.size}: d_model {theirs.d_model}, "
                          f"n_layer {theirs.n_layer}); leave it out")
    for key, given in (("seq_len", seq_len), ("seed", seed)):
        value = getattr(parent, key)
        if given is not None and given != value:
            raise OptionError(f"{where}: {key} {given} differs from the {parent.who}'s {value} (a continuation "
                              f"keeps its parent's {key}; leave it out)")
    if objective is not None and objective != parent.objective:
        raise OptionError(f"{where}: objective {objective!r} differs from the {parent.who}'s {parent.objective!r} "
                          f"(a continuation trains its parent's objective)")
    return {"model": dict(parent.model), "size": parent.size, "seq_len": parent.seq_len, "seed": parent.seed}


def _read_parent_meta(ckpt: Path) -> dict:
    try:
        meta = read_meta(ckpt)
    except (OSError, json.JSONDecodeError) as e:
        raise GerbilError(f"--from: cannot read {meta_file(ckpt)}: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise GerbilError(f"--from: {meta_file(ckpt)} has no model config")
    for key in ("tokens", "step"):
        if isinstance(meta.get(key), bool) or not isinstance(meta.get(key), int) or meta[key] < 0:
            raise GerbilError(f"--from: {meta_file(ckpt)}: {key!r} must be a non-negative integer")
    try:
        ModelConfig.from_dict(dict(meta["model"]))
    except (TypeError, ValueError) as e:
        raise GerbilError(f"--from: {meta_file(ckpt)}: bad model config: {e}") from None
    return meta


def _first_batch(run: RunDir | None) -> int | None:
    """The parent's first batch in tokens, from its config.yaml's resolved batch schedule."""
    try:
        conf = run.read_config() if run is not None else {}
        return int(conf["resolved"]["batch_schedule"]["stages"][0]["batch_tokens"]) or None
    except (GerbilError, KeyError, TypeError, ValueError, IndexError):
        return None

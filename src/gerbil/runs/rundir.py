"""The run directory's one owner: its layout and every file name in it, small readers and writers for its
files, run names, and the rule that tells a run, a checkpoint and an export apart.

    runs/<name>/
      config.yaml        resolved configuration (model, data, objective, train, resolved numbers, parent)
      env.json           git sha, package versions, device, torch/cuda versions
      metrics.jsonl      one JSON line per logged step (strict JSON: a skipped step's NaN is null)
      result.json        the RunResult of a finished run
      checkpoints/       step-XXXXXXXX/ {model.safetensors, state.pt, meta.json} + `latest`, the newest
                         complete one's name (written by gerbil.train.checkpoint through the paths here)
      eval/TASK.json     per-task results (TASK.partial.json for --limit; step-XXXXXXXX/ for older ones)
      export/            transformers folder (on demand)
      tensorboard/       event files of `--log tensorboard`; wandb/: W&B's files of `--log wandb`
      .lock              the training process that owns the run (pid, host), while it runs

Every reader and writer (registry, eval, export, plan, fit, suites, loggers, checkpoints, the CLI) asks this
module for these paths: the names are spelled here only, in private constants (tests/test_layout.py). No torch.

The rule (`kind`): an **export** is a folder with a transformers ``config.json`` (never in a run or a
checkpoint); a **checkpoint** is a folder with a ``meta.json`` (not a token store's) or named
``step-XXXXXXXX``; a **run** is a folder with ``checkpoints/``, ``config.yaml`` or ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from gerbil.classes import name_part
from gerbil.data.objectives import objective_class
from gerbil.data.store import is_token_store
from gerbil.errors import GerbilError
from gerbil.fsutil import (atomic_write_json, atomic_write_text, disk_error, fsync_dir, fsync_file, json_safe,
                           read_json_object, sha256_file)
from gerbil.runs.evals import EvalRecord, read_record

log = logging.getLogger(__name__)

_CONFIG = "config.yaml"
_ENV = "env.json"
_METRICS = "metrics.jsonl"
_RESULT = "result.json"
_CHECKPOINTS = "checkpoints"
_EVAL = "eval"
_EXPORT = "export"
_LOCK = ".lock"
_TENSORBOARD = "tensorboard"
_WANDB = "wandb"  # W&B's own folder name: wandb.init(dir=RUN) writes RUN/wandb
_EXPORT_CONFIG = "config.json"  # the transformers file that makes a folder an export
# one checkpoint directory and the folder of them
_WEIGHTS = "model.safetensors"
_STATE = "state.pt"
_META = "meta.json"
_LATEST = "latest"
_STEP_RE = re.compile(r"^step-(\d{8,})$")
_TMP_PREFIX = ".tmp-"  # a checkpoint being written: .tmp-step-XXXXXXXX-PID
_PARTIAL = ".partial"  # eval/TASK.partial.json: a --limit result


def model_name(objective: str | None, cls: str | None, size: str | None, arch: str | None = None) -> str:
    """The seed's naming, for every objective: ``Gerbil-A-6.7m``, ``GerbilBlender-E-star-6.7m``,
    ``GerbilFIM-A-3.3m``; no class for a custom token budget (``Gerbil-6.7m``); a T5 model (``arch="t5"``)
    is ``T5`` + the objective's family (``T5Blender-A-24m``, ``T5FIM-A-24m``). A run's default name, hence
    its table row and its export, are this name (the class spelled by `gerbil.classes.name_part`)."""
    family = objective_class(objective).display
    if arch == "t5":
        family = "T5" + family.removeprefix("Gerbil")
    return "-".join(p for p in (family, name_part(cls), size or "custom") if p)


def eval_file_name(task: str, partial: bool = False) -> str:
    """``TASK.json``, or ``TASK.partial.json`` for a `--limit` result (so it never replaces a full one)."""
    return f"{task}{_PARTIAL}.json" if partial else f"{task}.json"


def _eval_file(path: Path) -> tuple[str, bool]:
    """(task, partial) an eval file's name says."""
    stem = path.name.removesuffix(".json")
    return stem.removesuffix(_PARTIAL), stem.endswith(_PARTIAL)


class RunDir:
    """One run directory: where each of its files lives, and small readers/writers for them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------------------ paths
    config = property(lambda self: self.path / _CONFIG, doc="config.yaml")
    env = property(lambda self: self.path / _ENV, doc="env.json")
    metrics = property(lambda self: self.path / _METRICS, doc="metrics.jsonl")
    result = property(lambda self: self.path / _RESULT, doc="result.json")
    checkpoints = property(lambda self: self.path / _CHECKPOINTS, doc="the checkpoints folder")
    eval_dir = property(lambda self: self.path / _EVAL, doc="eval/")
    export_dir = property(lambda self: self.path / _EXPORT, doc="export/, `gerbil export`'s default")
    lock = property(lambda self: self.path / _LOCK, doc="the training process's lock file")
    tensorboard_dir = property(lambda self: self.path / _TENSORBOARD, doc="`--log tensorboard`'s event files")
    wandb_dir = property(lambda self: self.path / _WANDB, doc="`--log wandb`'s files (W&B names the folder)")

    def checkpoint_path(self, checkpoint: int | str) -> Path:
        """A checkpoint of this run by step or by name (``step-XXXXXXXX``); relative when the run's path
        is (a suite refers to a trunk's checkpoint as ``TRUNK/checkpoints/step-…`` relative to its runs)."""
        return self.checkpoints / (checkpoint_name(checkpoint) if isinstance(checkpoint, int) else str(checkpoint))

    def eval_path(self, task: str, partial: bool = False, checkpoint: str | Path | None = None) -> Path:
        """Where a task's result goes: ``eval/TASK.json`` (``TASK.partial.json`` for a `--limit` result,
        so it never replaces a full-set one); a checkpoint older than the latest writes under
        ``eval/step-XXXXXXXX/``."""
        base = self.eval_dir
        if checkpoint is not None:
            latest = self.latest_checkpoint(check_hash=False)
            if latest is not None and Path(latest).resolve() != Path(checkpoint).resolve():
                base = base / Path(checkpoint).name
        return base / eval_file_name(task, partial)

    # ------------------------------------------------------------------------------ config, env
    def read_config(self) -> dict:
        """config.yaml as a dict ({} when absent); a damaged file is a one-line GerbilError."""
        if not self.config.is_file():
            return {}
        try:
            data = yaml.safe_load(self.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise GerbilError(f"{self.config}: unreadable ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise GerbilError(f"{self.config}: not a mapping")
        return data

    def run_files(self) -> list[str]:
        """Names of the run's own files present here (config.yaml, env.json, metrics.jsonl, result.json)."""
        return [n for n in (_CONFIG, _ENV, _METRICS, _RESULT) if (self.path / n).exists()]

    def write_config(self, resolved: dict) -> None:
        atomic_write_text(self.config, yaml.safe_dump(json_safe(resolved), sort_keys=False))

    def write_env(self, info: dict) -> None:
        atomic_write_json(self.env, info, indent=2)

    def read_env(self) -> dict:
        """env.json ({} when absent or unreadable: a run from before it was written, or a torn copy)."""
        return read_json_object(self.env) or {}

    def model_config(self) -> tuple[dict | None, int | None]:
        """(ModelConfig fields, seq_len) of the run as recorded: its latest checkpoint's meta.json, else
        its config.yaml; (None, None) where neither says (the dict is not validated here)."""
        meta = self.latest_meta()
        model, seq_len = meta.get("model"), meta.get("seq_len")
        if not isinstance(model, dict):
            try:
                cfg = self.read_config()
            except GerbilError as e:  # a damaged config leaves the architecture unknown, nothing more
                log.warning("%s", e)
                cfg = {}
            model = cfg.get("model")
            seq_len = seq_len or cfg.get("seq_len") or (cfg.get("train") or {}).get("seq_len")
        return (model if isinstance(model, dict) else None), (seq_len if isinstance(seq_len, int) else None)

    # ------------------------------------------------------------------------------ checkpoints
    def list_checkpoints(self) -> list[Path]:
        return list_checkpoints(self.checkpoints)

    def latest_checkpoint(self, check_hash: bool = True) -> Path | None:
        """The newest intact checkpoint (falls back over damaged ones with a warning), or None."""
        return latest_checkpoint(self.checkpoints, check_hash)

    def latest_meta(self) -> dict:
        """meta.json of the latest checkpoint, sizes checked but not hashed ({} when there is none)."""
        c = self.latest_checkpoint(check_hash=False)
        if c is None:
            return {}
        try:
            return read_meta(c)
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable %s (%s)", c / _META, e)
            return {}

    def model_checkpoint(self, latest: Path | None = None, check_hash: bool = True) -> Path | None:
        """The run's model: its latest intact checkpoint (`latest`, when already found), or for a run
        that keeps its best (fine-tuning) the best one the latest's meta.json names, when that one is
        intact (else the latest, with a warning)."""
        latest = latest or self.latest_checkpoint(check_hash)
        if latest is None:
            return None
        best = (read_meta(latest).get("best") or {}).get("checkpoint")
        if not best or best == latest.name:
            return latest
        path = latest.parent / best
        reason = verify_checkpoint(path, check_hash)
        if reason is None:
            return path
        log.warning("best checkpoint %s is damaged (%s); using the latest, %s", path, reason, latest.name)
        return latest

    # ------------------------------------------------------------------------------ metrics
    def append_metrics(self, record: dict) -> None:
        """One line of strict JSON (NaN/inf written as null); a full disk is a one-line GerbilError."""
        try:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        except OSError as e:
            raise disk_error(e, str(self.metrics)) from None

    def read_metrics(self) -> Iterator[dict]:
        """The records of metrics.jsonl in order; a torn last line (a kill during the append) is skipped."""
        if not self.metrics.is_file():
            return
        with open(self.metrics) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    yield rec

    def tail_metrics(self, max_bytes: int = 65536) -> list[dict]:
        """The last records of metrics.jsonl, read from the end (the file can be long): those in its last
        `max_bytes`, the first of which may be cut and is dropped."""
        try:
            with open(self.metrics, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                lines = f.read().decode("utf-8", errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for line in lines[1:] if size > max_bytes else lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def truncate_metrics(self, step: int) -> None:
        """Drop lines past `step` (written after the checkpoint a resume continues from)."""
        if not self.metrics.exists():
            return
        keep = [r for r in self.read_metrics() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    def start_metrics(self) -> None:
        atomic_write_text(self.metrics, "")  # an empty metrics.jsonl: a fresh run's

    # ------------------------------------------------------------------------------ result
    def write_result(self, result: dict) -> None:
        atomic_write_json(self.result, result, indent=2)

    def read_result(self) -> dict | None:
        """result.json (None when absent or unreadable: the run has not finished)."""
        return read_json_object(self.result)

    # ------------------------------------------------------------------------------ eval results
    def read_eval(self, task: str, partial: bool = False, checkpoint: str | Path | None = None) -> EvalRecord | None:
        """One stored result (the file `eval_path` names), or None when it is absent or unreadable."""
        path = self.eval_path(task, partial, checkpoint)
        return read_record(path, task, partial) if path.is_file() else None

    def read_evals(self, latest_step: int | None = None) -> dict[str, EvalRecord]:
        """The run's current result per task (``eval/``): the full-set one when it is readable, else the
        partial one — never mixed; flagged `stale` when computed at another step than `latest_step`."""
        found = sorted(p for p in self.eval_dir.glob("*.json") if p.is_file()) if self.eval_dir.is_dir() else []
        out: dict[str, EvalRecord] = {}
        for task in dict.fromkeys(_eval_file(p)[0] for p in found):
            for partial in (False, True):
                p = self.eval_dir / eval_file_name(task, partial)
                e = read_record(p, task, partial) if p.is_file() else None
                if e is None:
                    continue
                e.stale = latest_step is not None and e.step is not None and int(e.step) != int(latest_step)
                out[e.task] = e
                break  # the full-set file wins
        return out

    def eval_history(self) -> list[EvalRecord]:
        """Every stored result at every checkpoint (latest and older), sorted by task and step; at one
        checkpoint a full-set result wins over a partial one."""
        if not self.eval_dir.is_dir():
            return []
        folders = [self.eval_dir] + sorted(p for p in self.eval_dir.iterdir() if p.is_dir() and _STEP_RE.match(p.name))
        points: dict[tuple[int, str], EvalRecord] = {}
        for folder in folders:
            for f in sorted(folder.glob("*.json")):
                e = read_record(f, *_eval_file(f))
                if e is None or e.step is None:
                    continue
                key = (int(e.step), e.task)
                if key not in points or points[key].partial:
                    points[key] = e
        return sorted(points.values(), key=lambda e: (e.task, int(e.step or 0)))


# ------------------------------------------------------------------------------------ checkpoints
def checkpoint_name(step: int) -> str:
    """``step-XXXXXXXX``: a checkpoint directory's name."""
    return f"step-{step:08d}"


def weights_file(ckpt: str | Path) -> Path:
    """A checkpoint's safetensors weights."""
    return Path(ckpt) / _WEIGHTS


def state_file(ckpt: str | Path) -> Path:
    """A checkpoint's training state (torch.save: optimizer, scaler, step, tokens, RNG, loader cursor)."""
    return Path(ckpt) / _STATE


def meta_file(ckpt: str | Path) -> Path:
    """A checkpoint's plain-JSON meta.json (written last: without it the checkpoint is incomplete)."""
    return Path(ckpt) / _META


def payload_files(ckpt: str | Path) -> dict[str, Path]:
    """The files meta.json lists with their byte size and sha256, by the name it lists them under."""
    return {_WEIGHTS: weights_file(ckpt), _STATE: state_file(ckpt)}


def temporary_checkpoint(root: str | Path, step: int) -> Path:
    """Where a checkpoint is built before it is renamed into place (one per writing process)."""
    return Path(root) / f"{_TMP_PREFIX}{checkpoint_name(step)}-{os.getpid()}"


def set_latest(root: str | Path, name: str) -> None:
    """Point `root/latest` at checkpoint `name` atomically (temp file, fsync, replace, fsync the folder)."""
    root = Path(root)
    tmp = root / f".{_LATEST}{_TMP_PREFIX}{os.getpid()}"
    tmp.write_text(name + "\n")
    fsync_file(tmp)
    os.replace(tmp, root / _LATEST)
    fsync_dir(root)


def clean_temporaries(root: str | Path) -> list[Path]:
    """Remove `.tmp-step-…` directories and `latest` temporaries left by killed writers (11–40 MB each
    at 6.7m); returns what was removed. Call it only while holding the run's lock (no live writer)."""
    root = Path(root)
    if not root.is_dir():
        return []
    gone = []
    for p in root.iterdir():
        if p.name.startswith(f"{_TMP_PREFIX}step-") or p.name.startswith(f".{_LATEST}{_TMP_PREFIX}"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    if gone:
        log.info("removed %d leftover temporary checkpoint file(s) in %s", len(gone), root)
    return gone


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories in a checkpoints folder (complete or not), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path, check_hash: bool = True) -> str | None:
    """None if the checkpoint is complete and intact, else a short reason."""
    path = Path(path)
    try:
        meta = json.loads(meta_file(path).read_text())
    except FileNotFoundError:
        return f"no {_META} (incomplete)"
    except (OSError, ValueError) as e:
        return f"unreadable {_META} ({e})"
    for name, info in meta.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} missing"
        size = f.stat().st_size
        if size != info["bytes"]:
            return f"{name} has {size} bytes, expected {info['bytes']} (truncated?)"
        if check_hash and sha256_file(f) != info["sha256"]:
            return f"{name} sha256 mismatch"
    if not meta.get("files"):
        return f"{_META} lists no files"
    return None


def is_checkpoint_dir(path: str | Path) -> bool:
    """A single checkpoint directory: it holds a meta.json (not a token store's) or is named step-XXXXXXXX."""
    path = Path(path)
    named = _STEP_RE.match(path.name) is not None
    return path.is_dir() and (named or (meta_file(path).is_file() and not is_token_store(path)))


def latest_checkpoint(root: str | Path, check_hash: bool = True) -> Path | None:
    """The newest intact checkpoint in a checkpoints folder: follows `latest`; if that checkpoint (or the
    pointer) is damaged, warns and walks back to the newest intact one. None when there is none."""
    root = Path(root)
    candidates = list_checkpoints(root)
    pointer = root / _LATEST
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named in candidates:  # try the pointer's choice first, then everything older
            candidates = candidates[: candidates.index(named) + 1]
    for ckpt in reversed(candidates):
        reason = verify_checkpoint(ckpt, check_hash)
        if reason is None:
            return ckpt
        log.warning("checkpoint %s is damaged (%s); falling back to the previous one", ckpt, reason)
    return None


def check_checkpoint(path: str | Path, check_hash: bool = True) -> Path:
    """`path` itself if it is an intact checkpoint directory, else a one-line GerbilError."""
    reason = verify_checkpoint(path, check_hash)
    if reason:
        raise GerbilError(f"checkpoint {path} is damaged: {reason}")
    return Path(path)


def read_meta(ckpt: str | Path) -> dict:
    """meta.json of one checkpoint directory (plain JSON, no torch)."""
    return json.loads(meta_file(ckpt).read_text())


# ------------------------------------------------------------------------------------ the rule
def kind(path: str | os.PathLike) -> str | None:
    """"export", "checkpoint", "run" or None — the one rule, see the module docstring."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / _EXPORT_CONFIG).is_file() and not meta_file(p).is_file():
        return "export"
    if is_checkpoint_dir(p):
        return "checkpoint"
    if (p / _CHECKPOINTS).is_dir() or (p / _CONFIG).is_file() or (p / _METRICS).is_file():
        return "run"
    return None


@dataclass(frozen=True)
class Source:
    """What a path names: `kind`, the run it belongs to (if any), the checkpoint to load (for a run:
    its latest intact one) or the export folder."""

    kind: str
    path: Path
    run: RunDir | None = None
    checkpoint: Path | None = None
    export: Path | None = None


def resolve_source(path: str | os.PathLike, require_checkpoint: bool = True, check_hash: bool = True) -> Source:
    """A run directory, a checkpoint directory or an export folder → `Source`; anything else, or a run
    without an intact checkpoint (when `require_checkpoint`), is a one-line GerbilError. `check_hash`:
    verify checkpoint files by sha256 too (sizes are always checked)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GerbilError(f"{p}: no such run, checkpoint or export")
    k = kind(p)
    if k == "export":
        parent = RunDir(p.parent) if p.name == _EXPORT and kind(p.parent) == "run" else None
        return Source("export", p, run=parent, export=p)
    if k == "checkpoint":
        check_checkpoint(p, check_hash)
        run = RunDir(p.parent.parent) if p.parent.name == _CHECKPOINTS else None
        return Source("checkpoint", p, run=run, checkpoint=p)
    if k == "run":
        run = RunDir(p)
        c = run.latest_checkpoint(check_hash)
        if c is None and require_checkpoint:
            raise GerbilError(f"{p}: no complete checkpoint (train it first, or pass an export folder)")
        return Source("run", p, run=run, checkpoint=c)
    if is_token_store(p):
        raise GerbilError(f"{p}: a token store (data from gerbil prepare), not a model: pass a run, checkpoint or "
                          f"export")
    raise GerbilError(f"{p}: not a run, checkpoint or export directory")

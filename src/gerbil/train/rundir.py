"""The run directory's one owner: its layout, its files, names, and the rule that tells a run, a
checkpoint and an export apart.

    runs/<name>/
      config.yaml        resolved configuration (model, data, objective, train, resolved numbers, parent)
      env.json           git sha, package versions, device, torch/cuda versions
      metrics.jsonl      one JSON line per logged step (strict JSON: a skipped step's NaN is null)
      result.json        the RunResult of a finished run
      checkpoints/       step-XXXXXXXX/ + `latest` (gerbil.train.checkpoint)
      eval/TASK.json     per-task results (TASK.partial.json for --limit; step-XXXXXXXX/ for older ones)
      export/            transformers folder (on demand)
      .lock              the training process that owns the run (pid, host), while it runs

Every reader (registry, evaluation, export, generation, plan, the CLI) asks `RunDir` for these paths
and `resolve_source` for what a path is; nothing else spells them. Torch-free.

The rule (`kind`): an **export** is a folder with a transformers ``config.json`` (never in a run or a
checkpoint); a **checkpoint** is a folder with a ``meta.json`` or named ``step-XXXXXXXX``; a **run** is a
folder with ``checkpoints/``, ``config.yaml`` or ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_json, atomic_write_text, disk_error, json_safe
from gerbil.train import checkpoint as ckpt

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
RESULT = "result.json"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
EXPORT = "export"
LOCK = ".lock"
#: the transformers file that makes a folder an export
EXPORT_CONFIG = "config.json"


def model_name(objective: str | None, cls: str | None, size: str | None) -> str:
    """The seed's naming, for every objective: ``Gerbil-A-6.7m``, ``GerbilBlender-E-star-6.7m``,
    ``GerbilFIM-A-3.3m``; no class for a custom token budget (``Gerbil-6.7m``). A run's default name,
    hence its table row and its export, are this name."""
    from gerbil.data.objectives import objective_class

    family = objective_class(objective).display
    cls_part = str(cls).replace("*", "-star") if cls else None
    return "-".join(p for p in (family, cls_part, size or "custom") if p)


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
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def env(self) -> Path:
        return self.path / ENV

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def result(self) -> Path:
        return self.path / RESULT

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    def eval_path(self, task: str, partial: bool = False, checkpoint: str | Path | None = None) -> Path:
        """Where a task's result goes: ``eval/TASK.json`` (``TASK.partial.json`` for a `--limit` result,
        so it never replaces a full-set one); a checkpoint older than the latest writes under
        ``eval/step-XXXXXXXX/``."""
        base = self.eval_dir
        if checkpoint is not None:
            latest = self.latest_checkpoint(check_hash=False)
            if latest is not None and Path(latest).resolve() != Path(checkpoint).resolve():
                base = base / Path(checkpoint).name
        return base / (f"{task}.partial.json" if partial else f"{task}.json")

    # ------------------------------------------------------------------------------ what it holds
    def is_run(self) -> bool:
        return kind(self.path) == "run"

    def read_config(self) -> dict:
        """config.yaml as a dict ({} when absent); a damaged file is a one-line GerbilError."""
        if not self.config.is_file():
            return {}
        import yaml

        try:
            data = yaml.safe_load(self.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise GerbilError(f"{self.config}: unreadable ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise GerbilError(f"{self.config}: not a mapping")
        return data

    def write_config(self, resolved: dict) -> None:
        import yaml

        atomic_write_text(self.config, yaml.safe_dump(json_safe(resolved), sort_keys=False))

    def write_env(self, info: dict) -> None:
        atomic_write_json(self.env, info, indent=2)

    def list_checkpoints(self) -> list[Path]:
        return ckpt.list_checkpoints(self.checkpoints)

    def latest_checkpoint(self, check_hash: bool = True) -> Path | None:
        """The newest intact checkpoint (falls back over damaged ones with a warning), or None."""
        return ckpt.latest_checkpoint(self.checkpoints, check_hash)

    def latest_meta(self) -> dict:
        """meta.json of the latest checkpoint, sizes checked but not hashed ({} when there is none)."""
        c = self.latest_checkpoint(check_hash=False)
        if c is None:
            return {}
        try:
            return ckpt.read_meta(c)
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable %s (%s)", c / ckpt.META, e)
            return {}

    def check_fresh(self, restart: bool, hint: str) -> None:
        """Before a fresh run writes here: a folder holding run files (config.yaml, env.json, metrics.jsonl,
        result.json) but no checkpoint is refused in one line. A gerbil run's (config.yaml a run record:
        one killed before its first checkpoint) is started again only with `restart` (``--resume auto``;
        `hint` says how); files gerbil did not write are never replaced."""
        found = [n for n in (CONFIG, ENV, METRICS, RESULT) if (self.path / n).exists()]
        if not found or self.list_checkpoints():
            return
        try:
            ours = "resolved" in self.read_config()
        except GerbilError:
            ours = False
        if not ours:
            raise GerbilError(f"{self.path} holds files that are not a gerbil run's ({', '.join(found)}); "
                              f"choose another folder")
        if not restart:
            raise GerbilError(f"{self.path} holds a run that has no checkpoint yet ({', '.join(found)}; killed "
                              f"before its first?): {hint}")

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

    def truncate_metrics(self, step: int) -> None:
        """Drop lines past `step` (written after the checkpoint a resume continues from)."""
        if not self.metrics.exists():
            return
        keep = [r for r in self.read_metrics() if int(r.get("step", 0)) <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    def start_metrics(self) -> None:
        atomic_write_text(self.metrics, "")

    # ------------------------------------------------------------------------------ result
    def write_result(self, result: dict) -> None:
        atomic_write_json(self.result, result, indent=2)

    def read_result(self) -> dict | None:
        try:
            data = json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------ the lock
#: A holder on another host whose heartbeat (the lock file's mtime) is older than this is presumed dead.
STALE_AFTER_S = 120.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lock:
    """An exclusive claim on a path by one process: a file created with O_EXCL holding its pid, host and
    start time, whose mtime is a heartbeat (`beat`). Refused while the holder lives (one line naming it);
    taken over when the holder is dead — on this host: its pid is gone; on another host (a shared
    filesystem): no heartbeat for `STALE_AFTER_S` seconds. Taking over renames the stale file away first
    (only one contender's rename succeeds), so two processes never both take a stale lock.

    Used as a context manager; `what` names the thing locked in messages.
    """

    def __init__(self, path: str | os.PathLike, what: str, stale_after: float = STALE_AFTER_S):
        self.path, self.what, self.stale_after = Path(path), what, stale_after
        self.held = False

    def holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or torn: treat as a live unknown holder until it goes stale

    def is_stale(self, info: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if info.get("host") == platform.node() and isinstance(info.get("pid"), int):
            return not _pid_alive(info["pid"])
        return age > self.stale_after

    def acquire(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for _ in range(8):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released meanwhile: try again
                if not self.is_stale(info):
                    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
                    raise GerbilError(f"{self.what} is in use by {who} (since {info.get('since', '?')}); "
                                      f"wait for it, or stop it (its lock: {self.path})")
                grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, grave)  # only one contender wins this rename
                except FileNotFoundError:
                    continue
                log.warning("%s: taking over from a dead holder (pid %s on %s)", self.what, info.get("pid"),
                            info.get("host"))
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise GerbilError(f"{self.what}: could not take its lock {self.path} (contended)")

    def beat(self) -> None:
        """Refresh the heartbeat (cheap: one utime)."""
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            info = self.holder() or {}
            if info.get("pid") == os.getpid() and info.get("host") == platform.node():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ------------------------------------------------------------------------------------ the rule
def kind(path: str | os.PathLike) -> str | None:
    """"export", "checkpoint", "run" or None — the one rule, see the module docstring."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / EXPORT_CONFIG).is_file() and not (p / ckpt.META).is_file():
        return "export"
    if ckpt.is_checkpoint_dir(p):
        return "checkpoint"
    if (p / CHECKPOINTS).is_dir() or (p / CONFIG).is_file() or (p / METRICS).is_file():
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
        parent = RunDir(p.parent) if p.name == EXPORT and kind(p.parent) == "run" else None
        return Source("export", p, run=parent, export=p)
    if k == "checkpoint":
        ckpt.check_checkpoint(p, check_hash)
        run = RunDir(p.parent.parent) if p.parent.name == CHECKPOINTS else None
        return Source("checkpoint", p, run=run, checkpoint=p)
    if k == "run":
        run = RunDir(p)
        c = run.latest_checkpoint(check_hash)
        if c is None and require_checkpoint:
            raise GerbilError(f"{p}: no complete checkpoint (train it first, or pass an export folder)")
        return Source("run", p, run=run, checkpoint=c)
    if ckpt.is_token_store(p):
        raise GerbilError(f"{p}: a token store (data from gerbil prepare), not a model: pass a run, checkpoint or "
                          f"export")
    raise GerbilError(f"{p}: not a run, checkpoint or export directory")


# ------------------------------------------------------------------------------------ env.json
def env_info(device: Any = "cpu") -> dict:
    """Code version, library versions and hardware: what a result needs to be reproduced."""
    from importlib import metadata

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    here = Path(__file__).resolve().parent
    git = {}
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=5)
        if sha.returncode == 0:
            git = {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    info: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv, "git": git or None,
        "python": platform.python_version(), "platform": platform.platform(), "hostname": platform.node(),
        "packages": {p: version(p) for p in ("gerbil-lab", "torch", "numpy", "safetensors", "tokenizers",
                                                "transformers", "pyyaml", "tqdm")},
        "device": str(device), "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info.update(torch_threads=torch.get_num_threads(), cuda=torch.version.cuda)
        if str(device).startswith("cuda"):
            p = torch.cuda.get_device_properties(torch.device(device))
            info.update(gpu=p.name, gpu_memory=p.total_memory, capability=f"{p.major}.{p.minor}",
                        cudnn=torch.backends.cudnn.version())
    except ImportError:
        pass
    return info

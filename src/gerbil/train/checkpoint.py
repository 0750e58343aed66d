"""Checkpoints: atomic writes, a `latest` pointer, truncation detection, exact-resume state.

Layout of a checkpoints folder (`RunDir.checkpoints` puts it at ``runs/<name>/checkpoints/``;
docs/architecture.md, "Run directory")::

    ROOT/step-00001234/
        model.safetensors   weights of the *uncompiled* module (no `_orig_mod.` prefixes)
        state.pt            optimizer, GradScaler, scheduler position, step, tokens, RNG states, loader cursor
        meta.json           plain JSON: step, tokens, model (ModelConfig dict), size, class, objective,
                            parent, and the byte size + sha256 of the two files above
    ROOT/latest             text file naming the newest complete checkpoint directory

Every function here takes that folder (`root`) or one checkpoint directory; where the folder sits in
a run, and how a path is told to be a run, a checkpoint or an export, is `gerbil.train.rundir`'s.

A checkpoint is written into a hidden temporary directory, every file fsync'ed, `meta.json` last, then
the directory is renamed into place and only then is `latest` replaced (temp file + `os.replace`). A
crash at any point leaves either the previous state or the new one, never a half checkpoint that looks
complete. A checkpoint damaged later (a truncated copy, a full disk) fails its size/sha256 check and
`latest_checkpoint` falls back to the previous complete one with a warning.

torch is imported lazily: `read_meta` / `latest_checkpoint` serve `gerbil plan --from` without it.
Leftover temporaries of killed writers (``.tmp-step-…-PID``) are removed by `clean_temporaries`.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

from gerbil.fsutil import disk_error, fsync_dir, fsync_file, sha256_file

log = logging.getLogger(__name__)

LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# ------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Every RNG a run may touch: torch CPU, each CUDA device, numpy's and Python's global ones."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a machine with more GPUs: restore the devices this one has (each process of a
        # data-parallel job uses its own device's generator)
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(root: str | Path, step: int, model: Any, train_state: dict, meta: dict,
                    keep: int = 0) -> Path:
    """Write `root/step-XXXXXXXX` atomically and point `root/latest` at it; returns its path.

    model: the module (a compiled wrapper is unwrapped: weights are saved under the plain names).
    train_state: anything `torch.save` can write and `torch.load(weights_only=True)` can read back.
    meta: plain-JSON fields (step, tokens, model, size, class, objective, parent, ...).
    keep: keep only the newest `keep` complete checkpoints (0 = keep all); checkpoints whose meta says
    ``"keep": true`` (log-spaced or requested ones) are never pruned and do not count.
    A full disk or another write error is a one-line GerbilError; the half-written temporary directory
    is removed and the previous checkpoint (and `latest`) stay as they were.
    """
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        module = getattr(model, "_orig_mod", model)  # torch.compile wrapper → the real module
        weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS))
        torch.save(train_state, tmp / STATE)
        files = {}
        for name in (WEIGHTS, STATE):
            fsync_file(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        meta = dict(meta, step=int(step), files=files, format_version=FORMAT_VERSION,
                    saved_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        # meta.json is written last: a directory without it is never taken for a checkpoint
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        fsync_file(tmp / META)
        fsync_dir(tmp)
    except Exception as e:  # noqa: BLE001 — torch reports a full disk as RuntimeError, safetensors as its own
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise disk_error(e, f"checkpoint {final}") from None
        from gerbil.errors import GerbilError

        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "No space left" in text or "os error 28" in text:
            raise GerbilError(f"no space left on the device while writing checkpoint {final}") from None
        raise GerbilError(f"cannot write checkpoint {final}: {text}") from None

    if final.exists():  # e.g. a damaged checkpoint of the same step that a resume fell back over
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    fsync_file(pointer_tmp)
    os.replace(pointer_tmp, root / LATEST)
    fsync_dir(root)

    if keep and keep > 0:
        prunable = [c for c in list_checkpoints(root) if c != final and not _kept(c)]
        if not _kept(final):
            prunable.append(final)
        for old in prunable[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _kept(ckpt: Path) -> bool:
    try:
        return bool(read_meta(ckpt).get("keep"))
    except (OSError, ValueError):
        return False


def clean_temporaries(root: str | Path) -> list[Path]:
    """Remove `.tmp-step-…` directories and `latest` temporaries left by killed writers (11–40 MB each
    at 6.7m); returns what was removed. Call it only while holding the run's lock (no live writer)."""
    root = Path(root)
    if not root.is_dir():
        return []
    gone = []
    for p in root.iterdir():
        if p.name.startswith(".tmp-step-") or p.name.startswith(f".{LATEST}.tmp-"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            gone.append(p)
    if gone:
        log.info("removed %d leftover temporary checkpoint file(s) in %s", len(gone), root)
    return gone


# ------------------------------------------------------------------------------------ reading
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
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        return "no meta.json (incomplete)"
    except (OSError, ValueError) as e:
        return f"unreadable meta.json ({e})"
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
        return "meta.json lists no files"
    return None


def is_checkpoint_dir(path: str | Path) -> bool:
    """A single checkpoint directory: it holds a meta.json (not a token store's) or is named step-XXXXXXXX."""
    path = Path(path)
    named = _STEP_RE.match(path.name) is not None
    return path.is_dir() and (named or ((path / META).is_file() and not is_token_store(path)))


def is_token_store(path: str | Path) -> bool:
    """A token store of `gerbil prepare` (its meta.json says so): data, never a model."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("magic") == "gerbil-token-store"  # gerbil.data.store.MAGIC


def latest_checkpoint(root: str | Path, check_hash: bool = True) -> Path | None:
    """The newest intact checkpoint in a checkpoints folder.

    Follows `latest`; if that checkpoint (or the pointer) is damaged, warns and walks back to the newest
    intact one. Returns None when there is no intact checkpoint.
    """
    root = Path(root)
    candidates = list_checkpoints(root)
    pointer = root / LATEST
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
    """`path` itself if it is an intact checkpoint directory, else a one-line ValueError."""
    reason = verify_checkpoint(path, check_hash)
    if reason:
        raise ValueError(f"checkpoint {path} is damaged: {reason}")
    return Path(path)


def read_meta(ckpt: str | Path) -> dict:
    """meta.json of one checkpoint directory (plain JSON, no torch)."""
    return json.loads((Path(ckpt) / META).read_text())


def load_train_state(path: str | Path, map_location: str = "cpu") -> dict:
    """state.pt of a checkpoint directory (optimizer, scaler, step, tokens, RNG, loader cursor)."""
    import torch

    return torch.load(Path(path) / STATE, map_location=map_location, weights_only=True)


def load_weights(model: Any, path: str | Path, device: str = "cpu") -> None:
    """Load a checkpoint's safetensors weights into `model` (strict: same names and shapes)."""
    from safetensors.torch import load_file

    module = getattr(model, "_orig_mod", model)
    module.load_state_dict(load_file(str(Path(path) / WEIGHTS), device=str(device)), strict=True)


def load_checkpoint(ckpt: str | Path, device: str = "cpu"):
    """(GPT, meta) from one checkpoint directory; `meta["path"]` is the directory."""
    from gerbil.model.config import ModelConfig
    from gerbil.model.model import GPT

    meta = read_meta(ckpt)
    model = GPT(ModelConfig.from_dict(meta["model"]))
    load_weights(model, ckpt, device="cpu")
    meta["path"] = str(ckpt)
    return model.to(device), meta

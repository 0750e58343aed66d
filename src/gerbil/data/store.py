"""The token store: a directory of flat uint16 token arrays, document offsets and a meta.json.

Layout (``docs/architecture.md`` is the contract)::

    STORE/
      meta.json     magic "gerbil-token-store", format_version, dtype "uint16", vocab_size, eot_id,
                    tokenizer_sha256, splits.{train,val}.{n_tokens,n_docs}, sources, bad_input, ...,
                    complete: true   ← written last; a store without it is refused
      train.bin     uint16 tokens, every document followed by <|endoftext|> (50256)
      train.idx     int64 offsets, n_docs + 1 of them: document i with its EOT is bin[idx[i]:idx[i+1]]
      val.bin, val.idx   the same for the validation split

A flat array (nanoGPT's format) lets plain causal training read any contiguous window with one memmap
slice; the offsets let document-level objectives (FIM, MLM) find whole documents.

How a store is written (the validation split rule, staging beside the output): `gerbil.data.store_writer`.

Reading checks
--------------
`TokenStore.open` checks sizes against meta.json and, vectorised (well under a second per GB), that the
offsets are increasing and in bounds, that every document ends with EOT and that no token id reaches the
vocabulary size — so a flipped bit in an offset, or ids a model cannot embed, are refused before
training rather than crashing it or training on garbage. `verify` also checks the files' sha256
(`gerbil prepare --verify STORE`).

The pipeline that writes stores from corpus files is `gerbil.data.prepare`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gerbil.data.store_writer import (DTYPE, FORMAT_VERSION, MAGIC, SPLITS, STORE_FILES, STORE_META,
                                      StoreWriter, is_val_document)
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.fsutil import sha256_file

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ reading
@dataclass
class Split:
    """One split of a store: ``tokens`` (uint16 memmap, EOT after every document) and ``offsets``
    (int64, ``n_docs + 1``; document i with its EOT is ``tokens[offsets[i]:offsets[i+1]]``)."""

    name: str
    tokens: np.ndarray
    offsets: np.ndarray
    n_tokens: int
    n_docs: int

    def document(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` without its trailing EOT (a view into the memmap)."""
        if not -self.n_docs <= i < self.n_docs:
            raise IndexError(f"document {i} out of range for split {self.name!r} "
                             f"with {self.n_docs} documents")
        i %= self.n_docs
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1]) - 1]

    def __len__(self) -> int:
        return self.n_docs


def _refuse(path: Path, why: str) -> GerbilError:
    return GerbilError(f"token store {path}: {why}")


def is_token_store(path: str | os.PathLike) -> bool:
    """Whether `path` is a token store (its meta.json has the store's magic) — data, never a model: a
    checkpoint also holds a meta.json (`gerbil.runs.rundir.kind` tells them apart with this)."""
    try:
        meta = json.loads((Path(path) / STORE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("magic") == MAGIC


class TokenStore:
    """A token store opened for reading; see the module docstring for the format.

    Use :meth:`open`, :meth:`write` (already tokenized documents) or :func:`prepare` (corpus files).
    """

    def __init__(self, path: Path, meta: dict[str, Any], splits: dict[str, Split]):
        self.path = path
        self.meta = meta
        self._splits = splits

    @classmethod
    def open(cls, path: str | os.PathLike, tokenizer_sha256: str | None = None, check: bool = True) -> TokenStore:
        """Open and check a store. Refuses (one-line :class:`GerbilError`) a missing or incomplete
        meta.json, a wrong magic / format version / dtype, a ``.bin``/``.idx`` whose size disagrees with
        meta.json (truncated or over-long), inconsistent offsets, or — when ``tokenizer_sha256`` is
        given — a store made with a different tokenizer. With `check` (default) the contents are checked
        too, vectorised (module docstring, "Reading checks")."""
        path = Path(path)
        meta_path = path / STORE_META
        if not path.is_dir():
            raise _refuse(path, "not found" if not path.exists() else "not a directory")
        if not meta_path.is_file():
            partial = any(p.name.endswith(".tmp") or p.name in STORE_FILES for p in path.iterdir())
            raise _refuse(path, "incomplete (prepare did not finish: no meta.json)" if partial
                          else "no meta.json (not a token store)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise _refuse(path, f"meta.json is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("magic") != MAGIC:
            magic = meta.get("magic") if isinstance(meta, dict) else None
            raise _refuse(path, f"meta.json magic is {magic!r}, expected {MAGIC!r}")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise _refuse(path, f"format version {version!r}, this gerbil reads {FORMAT_VERSION}"
                                + (" (written by a newer gerbil)" if newer else ""))
        if meta.get("dtype") != DTYPE:
            raise _refuse(path, f"dtype {meta.get('dtype')!r}, expected {DTYPE!r}")
        if meta.get("complete") is not True:
            raise _refuse(path, "incomplete (meta.json lacks complete: true)")
        if tokenizer_sha256 is not None and meta.get("tokenizer_sha256") != tokenizer_sha256:
            raise _refuse(path, f"made with tokenizer sha256 {str(meta.get('tokenizer_sha256'))[:12]}…, "
                                f"not this tokenizer's {tokenizer_sha256[:12]}… (re-run prepare)")
        splits = {}
        try:
            eot = int(meta.get("eot_id", EOT_ID))
            int(meta["vocab_size"]), str(meta["tokenizer_sha256"])
            for name in SPLITS:
                info = meta["splits"][name]
                n_tokens, n_docs = int(info["n_tokens"]), int(info["n_docs"])
                if n_tokens < 0 or n_docs < 0:
                    raise ValueError("negative count")
                splits[name] = (n_tokens, n_docs)
        except (KeyError, TypeError, ValueError) as e:
            raise _refuse(path, f"meta.json is malformed ({type(e).__name__}: {e})") from None
        opened = {name: _open_split(path, name, n_tokens, n_docs, eot)
                  for name, (n_tokens, n_docs) in splits.items()}
        if check:
            for split in opened.values():
                _check_contents(path, split, eot, int(meta["vocab_size"]))
        return cls(path, meta, opened)

    # ------------------------------------------------------------------------------------ accessors
    def split(self, name: str) -> Split:
        """The ``"train"`` or ``"val"`` split."""
        if name not in self._splits:
            raise GerbilError(f"token store {self.path}: no split {name!r} (have {', '.join(self._splits)})")
        return self._splits[name]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta.get("eot_id", EOT_ID))

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.meta["tokenizer_sha256"])

    @property
    def bad_input(self) -> dict[str, int]:
        return dict(self.meta.get("bad_input", {}))

    @property
    def n_tokens(self) -> int:
        """Tokens in all splits (EOTs included)."""
        return sum(s.n_tokens for s in self._splits.values())

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self._splits.values())

    def verify(self) -> list[str]:
        """Full check (reads every byte): the contents checks of `open`, then each file's sha256 against
        the one recorded at prepare time. Returns what was checked; a mismatch is a one-line GerbilError.
        Stores written before checksums were recorded (gerbil 0.1) get the contents checks only."""
        done = []
        for s in self._splits.values():
            _check_contents(self.path, s, self.eot_id, self.vocab_size)
            done.append(f"{s.name}: {s.n_docs:,} documents, {s.n_tokens:,} tokens, offsets and ids ok")
        recorded = self.meta.get("sha256") or {}
        for name, want in sorted(recorded.items()):
            got = sha256_file(self.path / name)
            if got != want:
                raise _refuse(self.path, f"{name} sha256 {got[:12]}… differs from the recorded {want[:12]}… "
                                         f"(the file changed after prepare)")
            done.append(f"{name}: sha256 ok")
        if not recorded:
            done.append("no checksums recorded (a store from gerbil 0.1): contents checked only")
        return done

    def identity(self) -> dict[str, Any]:
        """What makes this store *this* store, cheaply: tokenizer, counts and a fingerprint of sampled
        bytes (`fingerprint`). A run records it and refuses to continue on a store that differs — e.g.
        one re-prepared at the same path from other data."""
        return {"tokenizer_sha256": self.tokenizer_sha256, "vocab_size": self.vocab_size,
                "splits": {s.name: {"n_tokens": s.n_tokens, "n_docs": s.n_docs} for s in self._splits.values()},
                "fingerprint": self.fingerprint()}

    def fingerprint(self, blocks: int = 64, block_bytes: int = 4096) -> str:
        """sha256 over `blocks` evenly spaced `block_bytes` slices (first and last included) of every
        split's token and offset files, with their sizes: 512 KiB read for any store size (a few
        milliseconds), yet two different corpora — or one re-prepared with another seed or split — give
        different fingerprints with near certainty. Not a checksum: a single flipped token is found by
        `verify` (`gerbil prepare --verify`), not here."""
        h = hashlib.sha256()
        for s in self._splits.values():
            for arr in (s.tokens, s.offsets):
                raw = np.asarray(arr).view(np.uint8).reshape(-1)
                h.update(f"{s.name}:{arr.dtype}:{raw.size}\n".encode())
                if raw.size <= blocks * block_bytes:
                    h.update(raw.tobytes())
                    continue
                for start in np.linspace(0, raw.size - block_bytes, blocks).astype(np.int64):
                    h.update(raw[start:start + block_bytes].tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}={s.n_tokens:,} tokens/{s.n_docs:,} docs" for s in self._splits.values())
        return f"TokenStore({str(self.path)!r}, {parts})"

    # ------------------------------------------------------------------------------------- writing
    @classmethod
    def write(cls, path: str | os.PathLike, docs: Iterable[Sequence[int] | np.ndarray], *,
              tokenizer_sha256: str, vocab_size: int, eot_id: int = EOT_ID,
              val_fraction: float = 0.01, seed: int = 0, overwrite: bool = False,
              extra_meta: dict[str, Any] | None = None) -> TokenStore:
        """Write already-tokenized documents (each without EOT; it is appended) as a store."""
        with StoreWriter(path, tokenizer_sha256=tokenizer_sha256, vocab_size=vocab_size, eot_id=eot_id,
                         val_fraction=val_fraction, seed=seed, overwrite=overwrite) as w:
            for doc in docs:
                w.add_document(np.asarray(doc))
            w.finish(extra_meta or {})
        return cls.open(path, tokenizer_sha256)


def _open_split(path: Path, name: str, n_tokens: int, n_docs: int, eot: int) -> Split:
    bin_path, idx_path = path / f"{name}.bin", path / f"{name}.idx"
    for p, want in ((bin_path, 2 * n_tokens), (idx_path, 8 * (n_docs + 1))):
        if not p.is_file():
            raise _refuse(path, f"{p.name} is missing")
        have = p.stat().st_size
        if have < want:
            raise _refuse(path, f"{p.name} is truncated ({have:,} bytes, meta.json says {want:,})")
        if have > want:
            raise _refuse(path, f"{p.name} is longer than meta.json says ({have:,} bytes, expected {want:,})")
    # np.memmap cannot map an empty file: an empty split gets an empty in-memory array.
    tokens = (np.memmap(bin_path, dtype=np.uint16, mode="r", shape=(n_tokens,)) if n_tokens
              else np.zeros(0, dtype=np.uint16))
    offsets = np.memmap(idx_path, dtype=np.int64, mode="r", shape=(n_docs + 1,))
    if int(offsets[0]) != 0 or int(offsets[-1]) != n_tokens:
        raise _refuse(path, f"{name}.idx does not span {name}.bin (first {int(offsets[0])}, "
                            f"last {int(offsets[-1])}, tokens {n_tokens})")
    if n_docs and int(tokens[-1]) != eot:
        raise _refuse(path, f"{name}.bin does not end with the EOT id {eot}")
    return Split(name, tokens, offsets, n_tokens, n_docs)


def _check_contents(path: Path, s: Split, eot: int, vocab_size: int) -> None:
    """Vectorised checks of a split's contents (one pass over the offsets, one over the tokens)."""
    if s.n_docs == 0:
        return
    off = np.asarray(s.offsets)
    if np.any(np.diff(off) < 1):
        bad = int(np.flatnonzero(np.diff(off) < 1)[0])
        raise _refuse(path, f"{s.name}.idx offsets are not increasing (document {bad}): the file is damaged")
    if np.any(s.tokens[off[1:] - 1] != eot):
        bad = int(np.flatnonzero(s.tokens[off[1:] - 1] != eot)[0])
        raise _refuse(path, f"{s.name}.bin: document {bad} does not end with EOT {eot}: the file is damaged")
    top = int(s.tokens.max())
    if top >= vocab_size:
        raise _refuse(path, f"{s.name}.bin holds token id {top} >= vocab_size {vocab_size}: the file is damaged")


__all__ = ["DTYPE", "FORMAT_VERSION", "MAGIC", "SPLITS", "Split", "StoreWriter", "TokenStore", "is_token_store",
           "is_val_document"]

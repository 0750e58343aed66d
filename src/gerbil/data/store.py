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

Validation split
----------------
By whole documents, decided while streaming: document ``i`` (0-based, in corpus order, empty documents
not counted) goes to ``val`` when ``blake2b-64("{seed}:{i}") / 2**64 < val_fraction``. The same inputs,
reader settings and seed always give the same split, with no pass over the corpus beforehand. If that
rule leaves ``val`` empty (a corpus of 78 plays at 1 %) while ``val_fraction > 0`` and there are at
least two documents, the last document is moved to ``val`` so a validation loss always exists.

Writing
-------
Tokens are appended to ``{split}.bin.tmp`` / ``{split}.idx.tmp`` in a staging directory *beside* the
output (``.NAME.partial-PID``) as they are produced; at the end they are renamed, their sha256 and
``meta.json`` (with ``complete: true``, written last) are added, and the staging directory is swapped in
for the output. A crash, Ctrl-C or an input that yields no documents therefore leaves an existing store
exactly as it was (a killed writer's staging directory is removed by the next prepare).

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
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.fsutil import sha256_file
from gerbil.lock import pid_alive

log = logging.getLogger(__name__)

MAGIC = "gerbil-token-store"
FORMAT_VERSION = 1
DTYPE = "uint16"
SPLITS = ("train", "val")
#: the store's index, written last (a store without it is incomplete); a token store's file, not a run's
_META = "meta.json"
_STORE_FILES = {_META} | {f"{s}.{ext}" for s in SPLITS for ext in ("bin", "idx")}


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
        meta = json.loads((Path(path) / _META).read_text(encoding="utf-8"))
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
        meta_path = path / _META
        if not path.is_dir():
            raise _refuse(path, "not found" if not path.exists() else "not a directory")
        if not meta_path.is_file():
            partial = any(p.name.endswith(".tmp") or p.name in _STORE_FILES for p in path.iterdir())
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
        import hashlib

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


def is_val_document(index: int, val_fraction: float, seed: int) -> bool:
    """The streaming split rule: document ``index`` belongs to ``val`` (see the module docstring)."""
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2.0**64


class StoreWriter:
    """Appends documents to a store's temp files; :meth:`finish` makes it a complete store.

    Used as a context manager: leaving the block without :meth:`finish` (an exception, Ctrl-C) deletes
    the temp files, so nothing that looks like a store is left. Documents may arrive in pieces
    (:meth:`add_piece` with ``last=False``) so a huge document never has to be in memory whole.
    """

    def __init__(self, path: str | os.PathLike, *, tokenizer_sha256: str, vocab_size: int,
                 eot_id: int = EOT_ID, val_fraction: float = 0.01, seed: int = 0,
                 overwrite: bool = False):
        if not 0.0 <= val_fraction < 1.0:
            raise GerbilError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0 < vocab_size <= 65536:
            raise GerbilError(f"vocab_size {vocab_size} does not fit the store's uint16 tokens")
        self.final = Path(path)
        self.tokenizer_sha256 = tokenizer_sha256
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.val_fraction = val_fraction
        self.seed = seed
        self._check_destination(overwrite)
        # Everything is written beside the destination and swapped in only when complete, so an
        # existing store survives a new input that yields nothing, a crash or Ctrl-C.
        self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self._bin = {s: open(self.path / f"{s}.bin.tmp", "wb") for s in SPLITS}
        self._idx = {s: open(self.path / f"{s}.idx.tmp", "wb") for s in SPLITS}
        self.n_tokens = {s: 0 for s in SPLITS}
        self.n_docs = {s: 0 for s in SPLITS}
        self._pending_offsets: dict[str, list[int]] = {s: [0] for s in SPLITS}
        self._last_doc_start = {s: 0 for s in SPLITS}  # start of the newest document per split
        self._doc_index = 0       # documents started so far (the split rule's index)
        self._open_split: str | None = None  # split of a document whose last piece has not come yet
        self._finished = False

    def _check_destination(self, overwrite: bool) -> None:
        p = self.final
        if p.exists() and not p.is_dir():
            raise GerbilError(f"output {p} exists and is not a directory")
        if p.is_dir():
            names = {q.name for q in p.iterdir()}
            foreign = sorted(n for n in names if n not in _STORE_FILES and not n.endswith(".tmp"))
            if foreign:
                raise GerbilError(f"output {p} holds other files ({', '.join(foreign[:3])}); "
                                  "choose an empty or new directory")
            if _META in names and not overwrite:
                raise GerbilError(f"output {p} is already a token store (pass --overwrite to replace it)")
        p.parent.mkdir(parents=True, exist_ok=True)
        for stale in p.parent.glob(f".{p.name}.partial-*"):  # left by a killed prepare
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
                log.info("removed %s, left by an interrupted prepare", stale)

    # ------------------------------------------------------------------------------------- appending
    def split_of_next(self) -> str:
        """Split of the next document to start (advances the document index)."""
        s = "val" if is_val_document(self._doc_index, self.val_fraction, self.seed) else "train"
        self._doc_index += 1
        return s

    def add_document(self, tokens: np.ndarray) -> None:
        """Append one whole document (ids without EOT)."""
        self.add_piece(tokens, last=True)

    def add_piece(self, tokens: np.ndarray, last: bool) -> None:
        """Append the next piece of the current document (starting one if none is open)."""
        if self._open_split is None:
            self._open_split = self.split_of_next()
            self._last_doc_start[self._open_split] = self.n_tokens[self._open_split]
        s = self._open_split
        tokens = self._check(tokens)
        if last:
            tokens = np.concatenate([tokens, np.array([self.eot_id], dtype=np.uint16)])
        self._write(s, tokens)
        if last:
            self._end_doc(s)
            self._open_split = None

    def add_encoded(self, ids: np.ndarray, piece_lens: np.ndarray, last: np.ndarray) -> None:
        """Append many pieces at once, vectorized: ``ids`` is the concatenation of every piece's tokens
        each followed by one EOT, ``piece_lens`` the length of each (EOT included), ``last`` whether
        the piece ends its document. EOTs after non-final pieces are dropped."""
        n = len(piece_lens)
        if n == 0:
            return
        if int(piece_lens.sum()) != len(ids) or len(last) != n or piece_lens.min() < 1:
            raise RuntimeError(f"encoder output out of shape: {len(ids)} ids, {n} pieces, "
                               f"lengths sum {int(piece_lens.sum())}")  # a bug, never bad input
        ids = self._check(ids)
        # Split of each piece: a new document starts at piece 0 unless one is open, and after each last.
        starts = np.empty(n, dtype=bool)
        starts[0] = self._open_split is None
        starts[1:] = last[:-1]
        piece_split = np.empty(n, dtype=np.int8)  # 0 train, 1 val
        cur = 0 if self._open_split in (None, "train") else 1
        for i in range(n):  # per piece, but only a hash and a compare
            if starts[i]:
                cur = 1 if self.split_of_next() == "val" else 0
            piece_split[i] = cur
        keep = np.ones(len(ids), dtype=bool)
        ends = np.cumsum(piece_lens) - 1                   # position of each piece's EOT
        keep[ends[~last]] = False                          # a non-final piece carries no EOT
        kept_lens = piece_lens - (~last).astype(np.int64)  # (n,)
        tok_split = np.repeat(piece_split, piece_lens)     # (len(ids),) split of every token
        for k, s in enumerate(SPLITS):
            in_s = piece_split == k
            if not in_s.any():
                continue
            base = self.n_tokens[s]
            lens_s = kept_lens[in_s]
            cum = base + np.cumsum(lens_s)                 # end offset of each piece in split s
            # remember where the newest document of s starts (for the empty-val rule)
            starts_s = starts[in_s]
            if starts_s.any():
                last_start_piece = np.flatnonzero(starts_s)[-1]
                self._last_doc_start[s] = int(cum[last_start_piece] - lens_s[last_start_piece])
            self._write(s, ids[keep & (tok_split == k)])
            doc_ends = cum[last[in_s]]
            self._pending_offsets[s].extend(doc_ends.tolist())
            self.n_docs[s] += len(doc_ends)
            self._flush_offsets(s)
        self._open_split = None if last[-1] else SPLITS[int(piece_split[-1])]

    def _check(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.size and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise GerbilError(f"token id {int(tokens.max())} outside the vocabulary (size {self.vocab_size})")
        return tokens.astype(np.uint16, copy=False)

    def _write(self, s: str, tokens: np.ndarray) -> None:
        self._bin[s].write(np.ascontiguousarray(tokens, dtype=np.uint16).tobytes())
        self.n_tokens[s] += len(tokens)

    def _end_doc(self, s: str) -> None:
        self._pending_offsets[s].append(self.n_tokens[s])
        self.n_docs[s] += 1
        self._flush_offsets(s)

    def _flush_offsets(self, s: str, force: bool = False) -> None:
        if force or len(self._pending_offsets[s]) >= 8192:
            self._idx[s].write(np.asarray(self._pending_offsets[s], dtype=np.int64).tobytes())
            self._pending_offsets[s] = []

    # ------------------------------------------------------------------------------------- finishing
    def _ensure_val(self) -> None:
        """If the split rule left ``val`` empty, move the newest train document there (see module doc)."""
        if self.val_fraction <= 0 or self.n_docs["val"] or self.n_docs["train"] < 2:
            return
        for s in SPLITS:
            self._flush_offsets(s, force=True)
            self._bin[s].flush()
            self._idx[s].flush()
        start, end = self._last_doc_start["train"], self.n_tokens["train"]
        with open(self.path / "train.bin.tmp", "rb") as f:
            f.seek(2 * start)
            moved = np.frombuffer(f.read(2 * (end - start)), dtype=np.uint16)
        self._bin["train"].truncate(2 * start)
        self._bin["train"].seek(2 * start)
        self._idx["train"].truncate(8 * self.n_docs["train"])  # drop the last of n_docs + 1 offsets
        self._idx["train"].seek(8 * self.n_docs["train"])
        self.n_tokens["train"], self.n_docs["train"] = start, self.n_docs["train"] - 1
        self._write("val", moved)
        self._end_doc("val")
        log.info("validation split was empty: moved the last training document (%d tokens) to it", len(moved))

    def finish(self, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Close the files, rename them into place and write meta.json (``complete: true``) last."""
        if self._open_split is not None:
            self.add_piece(np.zeros(0, dtype=np.uint16), last=True)  # close a cut-off document
        self._ensure_val()
        for s in SPLITS:
            self._flush_offsets(s, force=True)
            for f in (self._bin[s], self._idx[s]):
                f.flush()
                os.fsync(f.fileno())
                f.close()
        for s in SPLITS:
            for ext in ("bin", "idx"):
                os.replace(self.path / f"{s}.{ext}.tmp", self.path / f"{s}.{ext}")
        from gerbil import __version__

        meta: dict[str, Any] = {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "dtype": DTYPE,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "tokenizer_sha256": self.tokenizer_sha256,
            "splits": {s: {"n_tokens": self.n_tokens[s], "n_docs": self.n_docs[s]} for s in SPLITS},
            "n_tokens": sum(self.n_tokens.values()),
            "n_docs": sum(self.n_docs.values()),
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "split_rule": "blake2b-64('{seed}:{doc_index}') / 2**64 < val_fraction; "
                          "last document moved to val if val is empty",
            "sha256": {f"{s}.{ext}": sha256_file(self.path / f"{s}.{ext}") for s in SPLITS for ext in ("bin", "idx")},
            **(extra_meta or {}),
            "gerbil_version": __version__,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "complete": True,
        }
        tmp = self.path / "meta.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / _META)
        self._swap_in()
        self._finished = True
        return meta

    def _swap_in(self) -> None:
        """Put the complete store at its destination: the old one (if any) is moved aside, the new one
        renamed in, the old one deleted — a crash in between leaves the old store beside, never a mix."""
        dest = self.final
        old = None
        if dest.exists():
            if any(dest.iterdir()):
                old = dest.parent / f".{dest.name}.old-{os.getpid()}"
                os.rename(dest, old)
            else:
                dest.rmdir()
        os.rename(self.path, dest)
        self.path = dest
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Close and delete what was written (the destination is untouched)."""
        for f in (*self._bin.values(), *self._idx.values()):
            f.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._finished:
            self.abort()

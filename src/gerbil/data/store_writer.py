"""Writing a token store (`gerbil.data.store`, whose reader checks what this writes): its format constants,
the validation split rule and `StoreWriter`.

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
exactly as it was (a killed writer's staging directory is removed by the next prepare). The staging
directory is held with a `gerbil.lock.Lock` beside it (``.NAME.partial-PID.lock``), so whether its writer
is dead is the lock's rule (pid, boot, namespace, start time, heartbeat), never "is that pid alive" alone:
a reused pid does not keep a dead writer's leftovers forever, and a live writer on another host sharing
the filesystem keeps its own.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import gerbil
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError
from gerbil.fsutil import sha256_file
from gerbil.lock import Lock, pid_alive

log = logging.getLogger(__name__)

MAGIC = "gerbil-token-store"
FORMAT_VERSION = 1
DTYPE = "uint16"
SPLITS = ("train", "val")
#: the store's index, written last (a store without it is incomplete); a token store's file, not a run's
STORE_META = "meta.json"
#: the files of a complete store: its index and each split's tokens and offsets
STORE_FILES = {STORE_META} | {f"{s}.{ext}" for s in SPLITS for ext in ("bin", "idx")}


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
        self._lock = _staging_lock(self.path).acquire()  # a dead holder's (even with this pid) is taken over
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
            foreign = sorted(n for n in names if n not in STORE_FILES and not n.endswith(".tmp"))
            if foreign:
                raise GerbilError(f"output {p} holds other files ({', '.join(foreign[:3])}); "
                                  "choose an empty or new directory")
            if STORE_META in names and not overwrite:
                raise GerbilError(f"output {p} is already a token store (pass --overwrite to replace it)")
        p.parent.mkdir(parents=True, exist_ok=True)
        for stale in p.parent.glob(f".{p.name}.partial-*"):  # left by a killed prepare
            pid = stale.name.rsplit("-", 1)[-1]
            if not (stale.is_dir() and pid.isdigit()):
                continue
            lock = _staging_lock(stale)
            info = lock.holder()
            if info is None:  # no lock beside it (an older gerbil's): its pid is all there is
                dead, why = not pid_alive(int(pid)), f"pid {pid} is gone"
            else:
                dead, why = lock.state(info)
            if dead:
                shutil.rmtree(stale, ignore_errors=True)
                lock.path.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted prepare (%s)", stale, why)

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
            "gerbil_version": gerbil.__version__,
            "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "complete": True,
        }
        tmp = self.path / "meta.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / STORE_META)
        self._swap_in()
        self._finished = True
        self._lock.release()
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
        self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._finished:
            self.abort()


def _staging_lock(staging: Path) -> Lock:
    """The lock beside a writer's staging directory (`StoreWriter`'s docstring)."""
    return Lock(staging.with_name(staging.name + ".lock"), f"the token store being written in {staging}")

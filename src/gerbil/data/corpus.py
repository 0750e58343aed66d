"""Corpus readers: stream documents out of jsonl / jsonl.zst / txt / parquet files and source trees.

A corpus is never loaded whole. Readers yield *pieces*: ``(text, last)`` pairs where ``last`` says the
piece ends its document. A document shorter than ``max_piece_chars`` is one piece; a longer one (a 50 MB
log file, a minified bundle, a whole book in one jsonl line) is cut into bounded pieces so the tokenizer
never sees more than ``max_piece_chars`` characters at once — HF ``tokenizers`` and tiktoken both build
per-call buffers proportional to the input, and a single 50 MB call costs gigabytes. The store joins the
pieces' tokens back into *one* document (one ``<|endoftext|>`` at its end).

Where a document is cut
-----------------------
GPT-2's pre-tokenizer (``'s|'t|... | ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``) has no
look-behind, so encoding a text in two halves gives exactly the ids of encoding it whole *if* the cut
falls on a pre-token boundary that both halves agree on. Two kinds of cut are safe:

* just after a ``\\n`` that has a non-space before it and a non-space after it (``a\\n|b``): whole or
  cut, the pre-tokens are ``a``, ``\\n``, ``b``;
* just before a single space between two non-spaces (``a| b``): the pre-tokens are ``a``, `` b``.

The cutter looks for the last such point in the second half of the window and, only when a piece has
none (e.g. 1 MB without a space), cuts hard at ``max_piece_chars`` — the only case where ids may differ
from an uncut encoding, and only at that one seam.

Memory: plain-text files (either ``txt_mode``) are read in 1 MiB blocks, so their size is unbounded.
A jsonl line or a parquet cell is one JSON/Arrow value and must be parsed whole: memory is then a small
multiple of the largest single document, never of the corpus.

Bad input
---------
Bad input never stops a long prepare. Each kind is counted in :class:`BadInputCounts` (reported at the
end and stored in the token store's meta.json):

* ``invalid_json``     a jsonl line that is not JSON, or not a JSON object (skipped);
* ``missing_field``    a record / parquet row without the text field, or with null (skipped);
* ``non_string``       the text field holds a number, list, ... (skipped);
* ``non_utf8``         a document or line with bytes that are not UTF-8 (or JSON lone surrogates):
                       *kept*, the bad bytes decoded as U+FFFD;
* ``empty``            a document that is empty or whitespace only (skipped);
* ``unreadable_files`` a file that could not be opened or stopped decoding part-way (truncated .zst,
                       corrupt parquet): what was read before the error is kept, the rest is skipped;
* ``binary_files``     a plain-text file with NUL bytes (an image picked up by a broad glob; skipped).

``split_documents`` counts documents cut into pieces; it is not an error and not in ``total``.
"""
from __future__ import annotations

import codecs
import fnmatch
import json
import logging
import os
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gerbil.data.text import (BLOCK, MAX_PIECE_CHARS, PieceBuffer, Tally, decode_utf8, fix_surrogates, is_jsonl,
                              is_lossy, open_binary, split_text)
from gerbil.errors import GerbilError

log = logging.getLogger(__name__)


TXT_MODES = ("file", "paragraph")
#: Files picked from a directory when no ``include`` glob is given: the formats gerbil can parse.
DEFAULT_INCLUDE = ("*.jsonl", "*.jsonl.zst", "*.jsonl.zstd", "*.jsonl.gz", "*.ndjson", "*.txt", "*.parquet")


@dataclass
class BadInputCounts(Tally):
    """How many records of each bad kind were skipped or repaired (see the module docstring)."""

    INFORMATIONAL = ("split_documents",)

    invalid_json: int = 0
    missing_field: int = 0
    non_string: int = 0
    non_utf8: int = 0
    empty: int = 0
    unreadable_files: int = 0
    binary_files: int = 0
    split_documents: int = 0  # informational: documents longer than one piece

    def summary(self) -> str:
        """One line, e.g. ``"bad input: 3 invalid_json, 1 empty"`` or ``"bad input: none"``."""
        line = super().summary()
        if self.split_documents:
            line += f" ({self.split_documents} long documents tokenized in pieces)"
        return line


# ------------------------------------------------------------------------------------------ the reader
class Corpus:
    """A stream of documents from files and directories.

    Args:
        inputs: files and/or directories. Directories are walked recursively in sorted order (so the
            document order, and with it the validation split, is deterministic); hidden directories
            (``.git``) are skipped. Explicitly named files are always read, whatever their name.
        text_field: the JSON key (or parquet column) holding the text; a dotted name (``meta.body``)
            walks nested objects when the literal key is absent.
        txt_mode: ``"file"`` — a plain-text file is one document; ``"paragraph"`` — documents are
            separated by blank lines.
        include: glob patterns choosing files inside directories (matched against the file name and
            the path relative to the directory), e.g. ``("*.py",)``. Default: the known data formats.
        max_piece_chars: largest piece of text handed on at once (see the module docstring).

    The format of a file comes from its name: ``.jsonl``/``.ndjson`` (``.zst``/``.zstd``/``.gz``
    compressed too), ``.parquet``; anything else is plain text (``.txt``, ``.py``, ...).
    """

    def __init__(self, inputs: Iterable[str | os.PathLike], text_field: str = "text",
                 txt_mode: str = "file", include: Sequence[str] | None = None,
                 max_piece_chars: int = MAX_PIECE_CHARS):
        self.inputs = [Path(p) for p in inputs]
        if not self.inputs:
            raise GerbilError("no input files or directories given")
        for p in self.inputs:
            if not p.exists():
                raise FileNotFoundError(f"input not found: {p}")
        if txt_mode not in TXT_MODES:
            raise GerbilError(f"txt_mode must be one of {', '.join(TXT_MODES)}, got {txt_mode!r}")
        if max_piece_chars < 2:
            raise GerbilError(f"max_piece_chars must be at least 2, got {max_piece_chars}")
        self.text_field = text_field
        self.txt_mode = txt_mode
        self.include = tuple(include) if include else DEFAULT_INCLUDE
        self.max_piece_chars = max_piece_chars
        self.counts = BadInputCounts()
        #: per input: {"path", "files", "documents"} — filled while streaming, stored in meta.json
        self.sources: list[dict[str, Any]] = []
        self.n_files = 0
        self.n_documents = 0
        self._para_open = False   # paragraph mode: pieces of the current paragraph are already out
        self._para_lossy = False  # ...and one of them held a U+FFFD from bad bytes

    # -------------------------------------------------------------------------------------- files
    def _matches(self, rel: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(rel, g) for g in self.include)

    def files(self, root: Path) -> Iterator[Path]:
        """The files of one input, in deterministic (sorted) order."""
        if root.is_file():
            yield root
            return
        for dirpath, dirnames, filenames in os.walk(root):
            # sorted + in place: os.walk then descends in this order; skip .git, .venv, ...
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                if self._matches(rel, name) and path.is_file():
                    yield path

    # ------------------------------------------------------------------------------------- streams
    def pieces(self) -> Iterator[tuple[str, bool]]:
        """All documents of all inputs as ``(text, last)`` pieces (``last``: the piece ends a document).

        Empty documents are never yielded. Statistics and bad-input counts accumulate on ``self``
        while the stream is consumed.
        """
        for root in self.inputs:
            src = {"path": str(root), "files": 0, "documents": 0}
            self.sources.append(src)
            for path in self.files(root):
                src["files"] += 1
                self.n_files += 1
                for text, last in self._file_pieces(path):
                    if last:
                        src["documents"] += 1
                        self.n_documents += 1
                    yield text, last

    def documents(self) -> Iterator[str]:
        """Whole documents (pieces joined). Convenient for small corpora; a huge document is then one
        huge string — use :meth:`pieces` where memory matters."""
        parts: list[str] = []
        for text, last in self.pieces():
            parts.append(text)
            if last:
                yield "".join(parts)
                parts = []

    def _file_pieces(self, path: Path) -> Iterator[tuple[str, bool]]:
        name = path.name.lower()
        if name.endswith(".parquet"):
            reader = self._parquet(path)
        elif is_jsonl(name):
            reader = self._jsonl(path)
        elif self.txt_mode == "paragraph":
            reader = self._text_paragraphs(path)
        else:
            reader = self._text_file(path)
        open_doc = False  # a long document has pieces out but not its last one
        try:
            for text, last in reader:
                open_doc = not last
                yield text, last
        except Exception as e:  # noqa: BLE001 - see below
            # A truncated .zst raises zstandard.ZstdError, gzip EOFError / BadGzipFile, a corrupt
            # parquet pyarrow.ArrowInvalid, an unreadable file OSError: keep what was read, count it.
            # Anything else is a bug in gerbil and propagates.
            if not (isinstance(e, (OSError, EOFError, UnicodeError))
                    or type(e).__module__.split(".")[0] in ("zstandard", "pyarrow", "gzip", "zlib")):
                raise
            self._unreadable(path, e)
            if open_doc:  # close the cut-off document so the store stays consistent
                yield "", True

    def _unreadable(self, path: Path, e: Exception) -> None:
        self.counts.unreadable_files += 1
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.warning("%s: stopped reading (%s: %s); documents before the error are kept",
                    path, type(e).__name__, msg)

    def _emit(self, text: str) -> Iterator[tuple[str, bool]]:
        """Pieces of one whole in-memory document, or nothing (counted) when it is empty."""
        if not text or text.isspace():
            self.counts.empty += 1
            return
        if len(text) <= self.max_piece_chars:
            yield text, True
            return
        self.counts.split_documents += 1
        pieces = split_text(text, self.max_piece_chars)
        for i, p in enumerate(pieces):
            yield p, i == len(pieces) - 1

    # ---------------------------------------------------------------------------------------- jsonl
    def _get_text(self, obj: Any) -> Any:
        """The text field of a record, or ``_MISSING``."""
        if not isinstance(obj, dict):
            return _NOT_OBJECT
        if self.text_field in obj:
            return obj[self.text_field]
        if "." in self.text_field:
            cur: Any = obj
            for key in self.text_field.split("."):
                if not isinstance(cur, dict) or key not in cur:
                    return _MISSING
                cur = cur[key]
            return cur
        return _MISSING

    def _jsonl(self, path: Path) -> Iterator[tuple[str, bool]]:
        with open_binary(path) as f:
            for raw in f:
                if not raw.strip():
                    continue  # blank lines (a trailing newline) are not records
                line, lossy = decode_utf8(raw)
                try:
                    obj = json.loads(line)
                except ValueError:
                    self.counts.invalid_json += 1
                    continue
                text = self._get_text(obj)
                if text is _NOT_OBJECT:
                    self.counts.invalid_json += 1
                    continue
                if text is _MISSING or text is None:
                    self.counts.missing_field += 1
                    continue
                if not isinstance(text, str):
                    self.counts.non_string += 1
                    continue
                # Only lines that spell a \u escape can hold a lone surrogate: skip the check otherwise.
                if b"\\ud" in raw or b"\\uD" in raw:
                    text, bad = fix_surrogates(text)
                    lossy = lossy or bad
                if lossy:
                    self.counts.non_utf8 += 1
                yield from self._emit(text)

    # -------------------------------------------------------------------------------------- parquet
    def _parquet(self, path: Path) -> Iterator[tuple[str, bool]]:
        import pyarrow as pa  # lazy: pyarrow: only parquet / Arrow inputs need it
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if self.text_field not in names:
            self.counts.missing_field += pf.metadata.num_rows
            log.warning("%s: no column %r (columns: %s); %d rows skipped", path, self.text_field,
                        ", ".join(names[:10]), pf.metadata.num_rows)
            return
        typ = pf.schema_arrow.field(self.text_field).type
        is_text = pa.types.is_string(typ) or pa.types.is_large_string(typ)
        is_bytes = pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
        if not (is_text or is_bytes):
            self.counts.non_string += pf.metadata.num_rows
            log.warning("%s: column %r has type %s, not text; %d rows skipped", path, self.text_field,
                        typ, pf.metadata.num_rows)
            return
        # Row-group-sized batches: memory is one batch of one column, whatever the file size.
        for batch in pf.iter_batches(batch_size=1024, columns=[self.text_field]):
            col = batch.column(0)
            if is_text:
                try:
                    values = col.to_pylist()
                except UnicodeDecodeError:  # a writer that skipped UTF-8 validation
                    values = col.cast(pa.large_binary()).to_pylist()
            else:
                values = col.to_pylist()
            for v in values:
                if v is None:
                    self.counts.missing_field += 1
                    continue
                if isinstance(v, bytes):
                    v, lossy = decode_utf8(v)
                    if lossy:
                        self.counts.non_utf8 += 1
                yield from self._emit(v)

    # ----------------------------------------------------------------------------------------- text
    def _decoded_blocks(self, path: Path) -> Iterator[tuple[bytes, str]]:
        """``(raw, text)`` per 1 MiB block, decoded incrementally (bad bytes → U+FFFD); the last pair is
        ``(b"", tail)``. A file whose first block holds NUL bytes is counted as binary and yields nothing."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        with open(path, "rb") as f:
            first = True
            while True:
                raw = f.read(BLOCK)
                if first and b"\x00" in raw:
                    self.counts.binary_files += 1
                    log.warning("%s: NUL bytes, looks binary; skipped", path)
                    return
                first = False
                yield raw, decoder.decode(raw, final=not raw)
                if not raw:
                    return

    def _text_file(self, path: Path) -> Iterator[tuple[str, bool]]:
        """One document per file, read in blocks: memory stays bounded for any file size."""
        buf = PieceBuffer(self.max_piece_chars)
        lossy = False
        nonblank = False
        seen = False
        for raw, text in self._decoded_blocks(path):
            seen = True
            lossy = lossy or is_lossy(raw, text)
            nonblank = nonblank or (bool(text) and not text.isspace())
            for p in buf.add(text):
                yield p, False
        if not seen:  # binary file, already counted
            return
        rest = buf.finish()
        if lossy:
            self.counts.non_utf8 += 1
        if buf.emitted:  # a long document: already partly out, finish it even if the tail is blank
            self.counts.split_documents += 1
            yield rest, True
        elif nonblank:
            yield rest, True
        else:
            self.counts.empty += 1

    def _text_paragraphs(self, path: Path) -> Iterator[tuple[str, bool]]:
        """Documents separated by blank (whitespace-only) lines, read in 1 MiB blocks.

        A paragraph is its lines without the line break that ends the last one. Blocks are split with
        one regex per block (not a Python loop per line). Only separators before the last
        non-whitespace character of the buffer are final (one after it could still grow), so the
        buffer holds at most the current paragraph — and a paragraph longer than a piece is released
        in pieces, so memory stays bounded even for one giant paragraph or line.
        """
        # A virtual line break before the file turns blank lines at its top into a separator too.
        pending = "\n"
        virtual = True      # pending[0] is that virtual "\n", not yet consumed
        self._para_open = self._para_lossy = False
        lossy_file = False
        produced = 0
        seen = False
        for raw, text in self._decoded_blocks(path):
            seen = True
            final = not raw
            lossy_file = lossy_file or is_lossy(raw, text)
            pending += text
            # Separators are whitespace, so any ending before the last non-space are complete.
            limit = len(pending) if final else len(pending.rstrip())
            pos = 0
            for m in _BLANK_RUN.finditer(pending, 0, limit):
                para = pending[pos + virtual:m.start()] if pos == 0 else pending[pos:m.start()]
                virtual = False
                produced += yield from self._paragraph(para, lossy_file, last=True)
                pos = m.end()
            if final:
                tail = pending[pos + virtual:] if pos == 0 else pending[pos:]
                produced += yield from self._paragraph(tail, lossy_file, last=True)
                break
            if pos:
                pending, limit, virtual = pending[pos:], limit - pos, False
            if limit > self.max_piece_chars:  # a huge unfinished paragraph: release all but its tail
                head = pending[virtual:limit]
                pieces = split_text(head, self.max_piece_chars)
                for piece in pieces[:-1]:
                    yield from self._paragraph(piece, lossy_file, last=False)
                pending, virtual = pieces[-1] + pending[limit:], False
        if seen and not produced:
            self.counts.empty += 1  # a file with no text at all is one empty document

    def _paragraph(self, text: str, lossy_file: bool,
                   last: bool) -> Generator[tuple[str, bool], None, int]:
        """Yield one paragraph (or a non-final piece of one); return how many documents it closed."""
        if lossy_file and "\ufffd" in text:  # bad bytes were decoded somewhere in this file
            self._para_lossy = True
        if not last:
            self._para_open = True
            yield text, False
            return 0
        text = text.rstrip("\r\n")
        was_open, self._para_open = self._para_open, False
        lossy, self._para_lossy = self._para_lossy, False
        if not was_open and (not text or text.isspace()):
            return 0  # blank lines at the top or bottom: separators, not documents
        self.counts.non_utf8 += lossy
        if was_open:
            self.counts.split_documents += 1
            pieces = split_text(text, self.max_piece_chars)
            for i, piece in enumerate(pieces):
                yield piece, i == len(pieces) - 1
            return 1
        n = 0
        for piece, end in self._emit(text):
            n += end
            yield piece, end
        return n


class _Sentinel:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_MISSING = _Sentinel("MISSING")
_NOT_OBJECT = _Sentinel("NOT_OBJECT")


#: A line break followed by one or more blank (whitespace-only) lines: a paragraph separator.
_BLANK_RUN = re.compile(r"\n(?:[^\S\n]*\n)+")

"""Text from corpus files: bytes decoded as UTF-8 (counting what had to be replaced), compressed files
streamed line by line (.zst, .gz), and long texts cut into pieces at points that leave their GPT-2
pre-tokens unchanged (`split_text`; why those points: `gerbil.data.corpus`). Used by `gerbil.data.corpus`."""
from __future__ import annotations

import dataclasses
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

#: Largest piece handed to the tokenizer in one call (characters). ~250k GPT-2 tokens of English.
MAX_PIECE_CHARS = 1 << 20
#: Block size for streaming text files and decompressors (bytes).
BLOCK = 1 << 20
#: The UTF-8 encoding of U+FFFD: a file may contain the replacement character legitimately, so a
#: decode is "lossy" only when it produced more U+FFFD than the raw bytes spelled out.
_FFFD_BYTES = "\ufffd".encode()


@dataclasses.dataclass
class Tally:
    """Counts of input records by the reason they were skipped or repaired — a reader's bad-input
    accounting (`gerbil.data.corpus.BadInputCounts`, `gerbil.finetune.rows.BadRows`): each subclass's
    fields are its reasons; `WHAT` names them in `summary`; `INFORMATIONAL` fields are not bad records."""

    WHAT: ClassVar[str] = "bad input"
    INFORMATIONAL: ClassVar[tuple[str, ...]] = ()

    @property
    def total(self) -> int:
        """Number of bad records (the informational counts excluded)."""
        return sum(v for k, v in self.as_dict().items() if k not in self.INFORMATIONAL)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def add(self, other: "Tally") -> None:
        """Accumulate ``other`` into ``self`` (e.g. the counts of several files)."""
        for k, v in other.as_dict().items():
            setattr(self, k, getattr(self, k) + v)

    def summary(self) -> str:
        """One line, e.g. ``"bad input: 3 invalid_json, 1 empty"`` or ``"bad input: none"``."""
        parts = [f"{v} {k}" for k, v in self.as_dict().items() if v and k not in self.INFORMATIONAL]
        return f"{self.WHAT}: " + (", ".join(parts) if parts else "none")


# ------------------------------------------------------------------------------------------ decoding
def is_lossy(raw: bytes, text: str) -> bool:
    """True when decoding ``raw`` with errors='replace' had to replace something."""
    n = text.count("\ufffd")
    return n > 0 and n > raw.count(_FFFD_BYTES)


def decode_utf8(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text of ``raw`` and whether invalid bytes were replaced by U+FFFD."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


def fix_surrogates(text: str) -> tuple[str, bool]:
    """JSON may spell lone surrogates (``"\\ud800"``); Rust tokenizers cannot take them. Replace each
    with U+FFFD (via their 3 invalid UTF-8 bytes each) and report whether any were found."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), True


# ------------------------------------------------------------------------------------------ cutting
def _cut_point(text: str, limit: int) -> int:
    """Index in ``(limit // 2, limit]`` where ``text`` may be cut without changing its GPT-2 pre-tokens
    (see the module docstring), or ``limit`` when there is none."""
    lo = limit // 2
    # After "\n": text[j] == "\n", text[j-1] and text[j+1] non-space → cut at j+1.
    hi = limit
    for _ in range(256):  # bounded search: pathological "\n\n\n..." falls through to the space rule
        j = text.rfind("\n", lo, hi)
        if j < 1:
            break
        if j + 1 < len(text) and not text[j + 1].isspace() and not text[j - 1].isspace():
            return j + 1
        hi = j
    # Before " ": text[j] == " ", text[j-1] and text[j+1] non-space → cut at j.
    hi = limit
    for _ in range(256):
        j = text.rfind(" ", lo, hi)
        if j < 1:
            break
        if j + 1 < len(text) and not text[j + 1].isspace() and not text[j - 1].isspace():
            return j
        hi = j
    return limit


def split_text(text: str, max_chars: int = MAX_PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` characters at pre-token-safe points.

    ``"".join(split_text(t)) == t`` always; a text that fits is returned as ``[text]``.
    """
    if max_chars < 2:
        raise ValueError(f"max_chars must be at least 2, got {max_chars}")
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        # Work on a window so a 50 MB text is not rescanned from the start for each piece.
        window = text[start:start + max_chars + 1]
        cut = _cut_point(window, max_chars)
        pieces.append(window[:cut])
        start += cut
    pieces.append(text[start:])
    return pieces


class PieceBuffer:
    """Accumulates the text of one document that arrives in blocks and releases bounded pieces."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.parts: list[str] = []
        self.n = 0
        self.emitted = False  # at least one piece of this document already went out

    def add(self, s: str) -> Iterator[str]:
        self.parts.append(s)
        self.n += len(s)
        if self.n > self.max_chars:
            text = "".join(self.parts)
            pieces = split_text(text, self.max_chars)
            # keep the tail: more text of this document may follow and join it
            for p in pieces[:-1]:
                self.emitted = True
                yield p
            self.parts = [pieces[-1]]
            self.n = len(pieces[-1])

    def finish(self) -> str:
        text = "".join(self.parts)
        self.parts, self.n = [], 0
        return text


# ------------------------------------------------------------------------------------------ streams
def is_jsonl(name: str) -> bool:
    for ext in (".jsonl", ".ndjson"):
        for comp in ("", ".zst", ".zstd", ".gz"):
            if name.endswith(ext + comp):
                return True
    return False


def open_binary(path: Path) -> io.BufferedIOBase:
    """A binary line-iterable stream of ``path``, decompressing ``.zst``/``.zstd``/``.gz`` on the fly."""
    name = path.name.lower()
    if name.endswith((".zst", ".zstd")):
        return io.BufferedReader(_IterRaw(_zstd_blocks(path)), buffer_size=BLOCK)
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=BLOCK)


def _zstd_blocks(path: Path) -> Iterator[bytes]:
    """Decompressed blocks of a (possibly multi-frame) .zst file.

    zstandard's ``stream_reader`` reports a file cut off inside a frame as a clean end of stream; a
    half-downloaded Pile shard must instead count as unreadable, so frames are decoded one by one and an
    unfinished last frame raises ``EOFError``.
    """
    import zstandard  # lazy: only a .zst input needs the decompressor

    # The Pile's shards were written with long windows; allow up to 2 GiB so they decode.
    dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
    dobj = dctx.decompressobj()
    in_frame = False
    with open(path, "rb") as fh:
        while True:
            # 128 KiB of input at a time: text expands ~4-10x, so each output block stays ~1 MiB.
            data = fh.read(1 << 17)
            if not data:
                break
            while data:
                in_frame = True
                out = dobj.decompress(data)
                if out:
                    yield out
                if dobj.eof:  # frame finished; the rest of ``data`` belongs to the next frame
                    data = dobj.unused_data
                    dobj = dctx.decompressobj()
                    in_frame = False
                else:
                    data = b""
    if in_frame:
        raise EOFError("zstd data ends inside a frame (truncated file?)")


class _IterRaw(io.RawIOBase):
    """A readable raw stream over an iterator of byte blocks (so ``io.BufferedReader`` yields lines)."""

    def __init__(self, blocks: Iterator[bytes]):
        self._blocks = blocks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._buf = memoryview(block)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()  # closes the file inside the generator
        super().close()

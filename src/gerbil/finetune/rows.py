"""The rows of a JSONL / CSV / parquet file, for fine-tuning (`gerbil.finetune.data`) and prediction
(`gerbil predict`): the readers of each format, the bad-row counts (`BadRows`) and the check of a text
field. What makes a row bad, and the formats, are documented in `gerbil.finetune.data`'s docstring.
"""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gerbil.data.text import Tally
from gerbil.errors import GerbilError

log = logging.getLogger(__name__)

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


@dataclass
class BadRows(Tally):
    """How many rows of each bad kind were skipped (see `gerbil.finetune.data`'s docstring)."""

    WHAT = "bad rows"

    invalid_json: int = 0
    invalid_csv: int = 0
    non_utf8: int = 0
    missing_field: int = 0
    non_string: int = 0
    empty: int = 0
    bad_label: int = 0
    mixed_labels: int = 0
    unknown_label: int = 0


def has_surrogates(s: str) -> bool:
    """True when ``s`` holds lone surrogates: undecodable bytes (read with surrogateescape) or JSON
    ``\\udXXX`` escapes. Neither can be encoded as UTF-8, which is all the check needs."""
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _jsonl_rows(path: Path, bad: BadRows, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 byte order mark is not part of the first record
                if not raw.strip():
                    continue
                # surrogateescape keeps invalid bytes as lone surrogates: a line whose bad bytes sit in a
                # field the task does not use is still usable; the used fields are checked later.
                line = raw.decode("utf-8", "surrogateescape")
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if has_surrogates(line):
                        bad.non_utf8 += 1
                    else:
                        bad.invalid_json += 1
                    continue
                if not isinstance(row, dict):
                    bad.invalid_json += 1
                    continue
                yield lineno, row
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise GerbilError(f"cannot read {path}: {e}") from None


def csv_rows(path: Path, bad: BadRows, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise GerbilError(f"cannot read {path}: {e.strerror or e}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = data.decode("utf-8", "surrogateescape")
    records = iter(_csv_records(list(io.StringIO(text, newline=""))))
    header = next(records, None)
    if header is None:
        raise GerbilError(f"{path}: empty CSV file (expected a header row naming {', '.join(wanted)})")
    if isinstance(header, csv.Error):
        raise GerbilError(f"{path}: not a readable CSV file (header: {header})")
    missing = [w for w in wanted if w not in header]
    if missing:
        raise GerbilError(f"{path}: CSV header has no column {', '.join(map(repr, missing))} "
                          f"(columns: {', '.join(map(repr, header))})")
    cols = {w: header.index(w) for w in wanted}
    n = 0
    for cells in records:
        if isinstance(cells, csv.Error):
            n += 1
            bad.invalid_csv += 1
            continue
        if not cells:  # csv yields [] for a blank line: not a row
            continue
        n += 1
        # A short row lacks its last cells: None, counted as missing_field. An empty cell is "".
        yield n, {w: (cells[i] if i < len(cells) else None) for w, i in cols.items()}


def _csv_records(lines: list[str]) -> list[list[str] | csv.Error]:
    """The records of a CSV file's physical `lines`, parsed strictly; a record strict parsing refuses
    (an unterminated quote, text after a closing quote) is its `csv.Error`, and reading resumes on the
    line after that record's first line — so a stray quote costs one row, instead of swallowing every
    row up to the next quote as lenient parsing does. A long cell is no error (csv's 128 KiB field limit
    is lifted while reading: an email body can be longer)."""
    limit = csv.field_size_limit(2**31 - 1)
    try:
        return list(_strict_records(lines))
    finally:
        csv.field_size_limit(limit)


def _strict_records(lines: list[str]) -> Iterator[list[str] | csv.Error]:
    start = 0  # index of the first line the current reader was given
    while start < len(lines):
        reader = csv.reader(itertools.islice(lines, start, None), strict=True)
        while True:
            first = reader.line_num  # lines consumed before this record
            try:
                yield next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield e
                start += first + 1
                break


def _parquet_rows(path: Path, bad: BadRows, wanted: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa  # lazy: pyarrow: only parquet / Arrow inputs need it
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # ArrowInvalid for a file that is not parquet
        raise GerbilError(f"cannot read {path} as parquet: {str(e).splitlines()[0] if str(e) else e}") from None
    names = pf.schema_arrow.names
    missing = [w for w in wanted if w not in names]
    if missing:
        raise GerbilError(f"{path}: parquet file has no column {', '.join(map(repr, missing))} "
                          f"(columns: {', '.join(map(repr, names))})")
    n = 0
    try:
        for batch in pf.iter_batches(columns=list(wanted)):
            for row in batch.to_pylist():
                yield n, row
                n += 1
    except (pa.ArrowException, OSError) as e:
        raise GerbilError(f"cannot read {path} (row {n}): {str(e).splitlines()[0] if str(e) else e}") from None


def reader_for(path: Path):
    """The row reader of a file's format (by its name): ``reader(path, bad, wanted)`` yields
    ``(row number, {field: value})``."""
    name = path.name.lower()
    if name.endswith(_JSONL_SUFFIXES):
        return _jsonl_rows
    if name.endswith(".csv"):
        return csv_rows
    if name.endswith(".parquet"):
        return _parquet_rows
    raise GerbilError(f"{path}: unknown format (expected .jsonl, .jsonl.gz, .ndjson, .csv or .parquet)")


def check_string(value: Any, bad: BadRows) -> str | None:
    """A usable text / prompt / completion, or None after counting why not."""
    if value is None:
        bad.missing_field += 1
    elif isinstance(value, bytes):  # a parquet binary column: must be UTF-8 text
        try:
            return check_string(value.decode("utf-8"), bad)
        except UnicodeDecodeError:
            bad.non_utf8 += 1
    elif not isinstance(value, str):
        bad.non_string += 1
    elif has_surrogates(value):
        bad.non_utf8 += 1
    elif not value.strip():
        bad.empty += 1
    else:
        return value
    return None


def read_texts(path: str | Path, field: str) -> tuple[list[str], list[int], BadRows]:
    """The ``field`` strings of a JSONL / CSV / parquet file, for inference (``gerbil predict``): the
    same formats and bad-row rules as :func:`read_examples` (a bad row is counted and skipped), no
    label or completion needed. Returns ``(texts, source_rows, bad)``; a file with no usable row is a
    one-line :class:`~gerbil.errors.GerbilError`."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise GerbilError(f"{p}: no such file")
    bad = BadRows()
    texts, rows = [], []
    for n, row in reader_for(p)(p, bad, (field,)):
        text = check_string(row.get(field), bad)
        if text is not None:
            texts.append(text)
            rows.append(n)
    if not texts:
        raise GerbilError(f"{p}: no usable rows with a {field!r} field ({bad.summary()})")
    if bad.total:
        log.warning("%s: %d usable rows, %s", p, len(texts), bad.summary())
    return texts, rows, bad

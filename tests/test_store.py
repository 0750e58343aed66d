"""Token store: format, exact ids, deterministic split, refusals, crash safety, the prepare verb."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gerbil.data import prepare as prepare_mod
from gerbil.data.corpus import Corpus
from gerbil.errors import GerbilError
from gerbil.data.prepare import prepare
from gerbil.data.store import StoreWriter, TokenStore, is_val_document
from gerbil.data.tokenizer import EOT_ID, VOCAB_SIZE


@pytest.fixture(scope="module")
def shakespeare(assets_home) -> Path:
    from gerbil.assets import corpus_dir

    return Path(corpus_dir("shakespeare"))


@pytest.fixture(scope="module")
def small_corpus(shakespeare, tmp_path_factory) -> Path:
    """Six real plays (≈ 250k tokens) plus a synthetic jsonl of many short documents."""
    d = tmp_path_factory.mktemp("corpus")
    for p in sorted(shakespeare.glob("*.txt"))[:6]:
        shutil.copy(p, d / p.name)
    lines = [json.dumps({"text": f"Document {i}: " + "to be or not to be, " * (i % 7 + 1)})
             for i in range(600)]
    lines.insert(10, "{broken json")
    lines.insert(20, json.dumps({"text": "tokenizer docs mention <|endoftext|> and <causal> literally"}))
    (d / "many.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="module")
def small_store(small_corpus, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("stores") / "small"
    return prepare([small_corpus], out, tokenizer, val_fraction=0.05, seed=0, progress=False)


def test_store_ids_equal_tokenizer_and_format(small_store, small_corpus, tokenizer):
    r = small_store
    st = r.store
    meta = json.loads((st.path / "meta.json").read_text())
    assert meta["magic"] == "gerbil-token-store" and meta["complete"] is True
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == VOCAB_SIZE
    assert meta["tokenizer_sha256"] == tokenizer.sha256
    assert meta["bad_input"]["invalid_json"] == 1
    st.verify()
    docs = list(Corpus([small_corpus]).documents())
    assert st.n_docs == len(docs) == 6 + 601
    # Every document, in either split, holds exactly the tokenizer's ids (HF backend) + one EOT.
    train, val = st.split("train"), st.split("val")
    assert val.n_docs > 10 and train.n_docs > 500
    ti = vi = 0
    for i, text in enumerate(docs):
        sp, j = (val, vi) if is_val_document(i, 0.05, 0) else (train, ti)
        got = sp.document(j)
        assert got.dtype == np.uint16
        if i < 8 or i % 37 == 0 or "endoftext" in text:  # HF encode is the slow part: sample
            assert got.tolist() == tokenizer.encode(text), i
        assert int(sp.tokens[int(sp.offsets[j + 1]) - 1]) == EOT_ID
        if sp is val:
            vi += 1
        else:
            ti += 1
    assert (ti, vi) == (train.n_docs, val.n_docs)
    # Literal special-token text stays ordinary text: only one EOT per document in the whole store.
    assert int((train.tokens == EOT_ID).sum()) == train.n_docs
    assert not np.isin(np.asarray(train.tokens), np.arange(50257, VOCAB_SIZE)).any()
    assert train.n_tokens == int(train.offsets[-1]) and len(train.offsets) == train.n_docs + 1


def test_split_is_deterministic_and_seeded(small_corpus, tokenizer, tmp_path, small_store):
    again = prepare([small_corpus], tmp_path / "again", tokenizer, val_fraction=0.05, seed=0,
                    progress=False, workers=1)
    for name in ("train", "val"):
        for ext in ("bin", "idx"):
            a = (small_store.store.path / f"{name}.{ext}").read_bytes()
            assert a == (again.store.path / f"{name}.{ext}").read_bytes(), (name, ext)
    other = prepare([small_corpus], tmp_path / "seed1", tokenizer, val_fraction=0.05, seed=1, progress=False)
    assert other.store.n_tokens == small_store.store.n_tokens
    assert other.store.split("val").n_docs != small_store.store.split("val").n_docs or \
        other.store.split("val").n_tokens != small_store.store.split("val").n_tokens
    assert sum(is_val_document(i, 0.1, 7) for i in range(20_000)) == pytest.approx(2000, abs=150)


class _HFOnly:
    """The same tokenizer without its tiktoken fast path: exercises the generic encode_batch route."""

    def __init__(self, tok):
        self._tok, self.sha256, self.vocab_size, self.eot_id = tok, tok.sha256, tok.vocab_size, tok.eot_id

    def encode_batch(self, texts):
        return self._tok.encode_batch(texts)


def test_fast_path_equals_generic_path_and_pieces(small_corpus, tokenizer, tmp_path, small_store,
                                                  monkeypatch):
    generic = prepare([small_corpus], tmp_path / "generic", _HFOnly(tokenizer), val_fraction=0.05,
                      progress=False)
    assert generic.backend != small_store.backend == "tiktoken"
    # Tiny pieces and jobs: long documents are cut into many pieces that straddle job boundaries.
    monkeypatch.setattr(prepare_mod, "JOB_CHARS", 3000)
    pieces = prepare([small_corpus], tmp_path / "pieces", tokenizer, val_fraction=0.05, progress=False,
                     max_piece_chars=2000)
    assert pieces.bad_input.split_documents == 6
    for r in (generic, pieces):
        for name in ("train.bin", "train.idx", "val.bin", "val.idx"):
            assert (r.store.path / name).read_bytes() == (small_store.store.path / name).read_bytes(), name


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused(path: Path, sha: str | None = None) -> str:
    with pytest.raises(GerbilError) as e:
        TokenStore.open(path, sha)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_open_refuses_damaged_or_foreign_stores(small_store, tokenizer, tmp_path):
    src = small_store.store.path
    TokenStore.open(src, tokenizer.sha256)  # the intact store opens

    assert "not this tokenizer" in _refused(src, "0" * 64)

    s = _copy(src, tmp_path / "trunc")
    with open(s / "train.bin", "r+b") as f:
        f.truncate(f.seek(0, 2) - 2)
    assert "truncated" in _refused(s)
    s = _copy(src, tmp_path / "long")
    with open(s / "val.idx", "ab") as f:
        f.write(b"\0" * 8)
    assert "longer" in _refused(s)
    s = _copy(src, tmp_path / "idx")
    with open(s / "train.idx", "r+b") as f:
        f.truncate(8)
    assert "truncated" in _refused(s)

    def edit(name: str, **changes):
        s = _copy(src, tmp_path / name)
        meta = json.loads((s / "meta.json").read_text())
        meta.update(changes)
        (s / "meta.json").write_text(json.dumps(meta))
        return s

    assert "magic" in _refused(edit("magic", magic="something-else"))
    assert "newer" in _refused(edit("version", format_version=99))
    assert "dtype" in _refused(edit("dtype", dtype="uint32"))
    assert "incomplete" in _refused(edit("incomplete", complete=False))
    assert "malformed" in _refused(edit("nosplits", splits={"train": {"n_tokens": 3}}))
    s = _copy(src, tmp_path / "nometa")
    (s / "meta.json").unlink()
    assert "meta.json" in _refused(s)
    assert "not found" in _refused(tmp_path / "nowhere")


class _Exploding:
    """A tokenizer that fails on its third batch: a crash in the middle of a prepare."""

    def __init__(self, tok):
        self._tok, self.sha256, self.vocab_size, self.eot_id = tok, tok.sha256, tok.vocab_size, tok.eot_id
        self.calls = 0

    def encode_batch(self, texts):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("simulated crash")
        return self._tok.encode_batch(texts)


def test_crash_leaves_no_complete_looking_store(small_corpus, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_mod, "JOB_CHARS", 50_000)
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated"):
        prepare([small_corpus], out, _Exploding(tokenizer), progress=False, workers=1)
    assert not out.exists() and not list(tmp_path.glob(".crashed.partial-*"))  # nothing half-written
    assert "not found" in _refused(out)
    # A crash while overwriting an existing store leaves the old one exactly as it was.
    good = prepare([small_corpus / "many.jsonl"], tmp_path / "good", tokenizer, progress=False)
    with pytest.raises(RuntimeError):
        prepare([small_corpus], good.store.path, _Exploding(tokenizer), progress=False, overwrite=True,
                workers=1)
    assert TokenStore.open(good.store.path, tokenizer.sha256).n_tokens == good.n_tokens


def test_overwrite_with_an_input_that_yields_nothing_keeps_the_old_store(small_corpus, tokenizer, tmp_path):
    """`prepare --overwrite` builds the new store beside the old one and swaps only when complete."""
    good = prepare([small_corpus / "many.jsonl"], tmp_path / "s", tokenizer, progress=False)
    (tmp_path / "empty.jsonl").write_text("")
    for inputs, kw in (([tmp_path / "empty.jsonl"], {}), ([small_corpus / "many.jsonl"], {"text_field": "txet"})):
        with pytest.raises(GerbilError, match="no documents"):
            prepare(inputs, tmp_path / "s", tokenizer, progress=False, overwrite=True, **kw)
        store = TokenStore.open(tmp_path / "s", tokenizer.sha256)
        assert store.n_tokens == good.n_tokens and store.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "s"]  # no staging left behind


def test_damaged_contents_are_refused_at_open_and_by_verify(small_corpus, tokenizer, tmp_path, capsys):
    from gerbil.cli import main

    def fresh(name):
        d = tmp_path / name
        prepare([small_corpus / "many.jsonl"], d, tokenizer, progress=False)
        return d

    d = fresh("offsets")
    idx = np.fromfile(d / "train.idx", dtype=np.int64)
    idx[3], idx[4] = idx[4], idx[3]  # a corrupted offset
    idx.tofile(d / "train.idx")
    with pytest.raises(GerbilError, match="offsets are not increasing"):
        TokenStore.open(d)
    d = fresh("ids")
    toks = np.fromfile(d / "train.bin", dtype=np.uint16)
    toks[5] = 60000  # an id no model can embed
    toks.tofile(d / "train.bin")
    with pytest.raises(GerbilError, match="token id 60000 >= vocab_size"):
        TokenStore.open(d)
    d = fresh("flip")
    toks = np.fromfile(d / "train.bin", dtype=np.uint16)
    toks[5] ^= 1  # a flipped bit inside the vocabulary: only the checksum sees it
    toks.tofile(d / "train.bin")
    TokenStore.open(d)
    assert main(["prepare", "--verify", str(d)]) == 2
    assert "train.bin sha256" in capsys.readouterr().err
    assert main(["prepare", "--verify", str(fresh("ok"))]) == 0
    assert "sha256 ok" in capsys.readouterr().out


def test_output_directory_rules(small_corpus, tokenizer, tmp_path):
    r = prepare([small_corpus / "many.jsonl"], tmp_path / "s", tokenizer, progress=False)
    with pytest.raises(GerbilError, match=r"already a token store \(pass --overwrite to replace it\)"):
        prepare([small_corpus / "many.jsonl"], tmp_path / "s", tokenizer, progress=False)
    r2 = prepare([small_corpus / "many.jsonl"], tmp_path / "s", tokenizer, progress=False, overwrite=True)
    assert r2.n_tokens == r.n_tokens
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(GerbilError, match="other files"):
        prepare([small_corpus / "many.jsonl"], tmp_path / "home", tokenizer, progress=False)
    with pytest.raises(GerbilError, match="no documents"):  # a directory where the globs match nothing
        prepare([small_corpus], tmp_path / "none", tokenizer, progress=False, include=["*.py"])
    assert not (tmp_path / "none" / "meta.json").exists()
    with pytest.raises(GerbilError, match="workers"):
        prepare([small_corpus], tmp_path / "w0", tokenizer, progress=False, workers=0)


def test_write_tokenized_documents_and_empty_val_rule(tmp_path):
    docs = [np.arange(1, 1 + n) for n in (3, 5, 0, 7)]
    st = TokenStore.write(tmp_path / "w", docs, tokenizer_sha256="abc", vocab_size=100, eot_id=99,
                          val_fraction=0.0)
    tr = st.split("train")
    assert tr.n_docs == 4 and tr.n_tokens == 3 + 5 + 0 + 7 + 4
    assert tr.document(1).tolist() == [1, 2, 3, 4, 5] and tr.document(2).tolist() == []
    assert st.split("val").n_docs == 0 and len(st.split("val").tokens) == 0
    st.verify()
    # val_fraction > 0 but the hash picked no document: the last one moves to val.
    st = TokenStore.write(tmp_path / "v", docs, tokenizer_sha256="abc", vocab_size=100, eot_id=99,
                          val_fraction=1e-9)
    assert st.split("val").n_docs == 1 and st.split("val").document(0).tolist() == list(range(1, 8))
    assert st.split("train").n_docs == 3 and st.split("train").n_tokens == 3 + 5 + 0 + 3
    st.verify()
    with pytest.raises(GerbilError, match="outside the vocabulary"):
        TokenStore.write(tmp_path / "bad", [np.array([5, 100])], tokenizer_sha256="abc", vocab_size=100)
    assert not (tmp_path / "bad" / "meta.json").exists()
    with pytest.raises(GerbilError):
        StoreWriter(tmp_path / "x", tokenizer_sha256="abc", vocab_size=70_000)


def test_cli_prepare_reports_bad_input(tmp_path, tokenizer, capsys):
    from gerbil.cli import main

    p = tmp_path / "in.jsonl"
    p.write_bytes(b'{"text": "hello world"}\n{oops\n{"body": 1}\n{"text": "caf\xe9"}\n{"text": ""}\n')
    argv = ["prepare", str(p), "--out", str(tmp_path / "s"), "--no-progress", "--val-fraction", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train 7 tokens / 2 docs" in out  # hello world EOT caf \ufffd EOT
    assert "1 invalid_json, 1 missing_field, 1 non_utf8, 1 empty" in out
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["bad_input"]["invalid_json"] == 1
    assert main(["prepare", "--out", str(tmp_path / "t")]) == 2
    assert "nothing to read" in capsys.readouterr().err


def test_cli_prepare_builtin_corpus_is_the_demos_and_suites_store(tmp_path, shakespeare, tokenizer, capsys):
    """`prepare --corpus NAME` builds the built-in store by its one recipe (`gerbil.data.builtin`, what the
    demo and suites use): into --out, reused when already there; flags that would change it are refused."""
    from gerbil.cli import main
    from gerbil.data.builtin import BUILTIN, builtin_store

    assert main(["prepare", "--corpus", "shakespeare", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert "the built-in shakespeare store" in capsys.readouterr().out
    st = TokenStore.open(tmp_path / "s", tokenizer.sha256)
    st.verify()
    recipe = BUILTIN["shakespeare"]
    assert st.meta["val_fraction"] == recipe.val_fraction == 0.02
    assert st.meta["reader"]["txt_mode"] == "paragraph" and st.meta["reader"]["include"] == ["*.txt"]
    assert st.n_docs > 1000 and 1_400_000 < st.n_tokens < 1_700_000  # one document per speech; 1.57M tokens
    # the library call the demo and suites make builds the very same store (identity: counts + sampled bytes)
    other = builtin_store("shakespeare", tmp_path / "b")
    assert TokenStore.open(other).identity() == st.identity()
    mtime = (tmp_path / "s" / "meta.json").stat().st_mtime_ns
    assert main(["prepare", "--corpus", "shakespeare", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert (tmp_path / "s" / "meta.json").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert main(["prepare", "--corpus", "shakespeare", "--out", str(tmp_path / "x"), "--txt-mode", "file"]) == 2
    assert "--txt-mode does not apply" in capsys.readouterr().err
    # a store of another recipe at --out is not replaced without --overwrite
    assert main(["prepare", str(shakespeare), "--out", str(tmp_path / "f"), "--no-progress"]) == 0
    assert main(["prepare", "--corpus", "shakespeare", "--out", str(tmp_path / "f"), "--no-progress"]) == 2
    assert "already a token store" in capsys.readouterr().err


@pytest.mark.slow
def test_prepare_50mb_document(tmp_path, tokenizer):
    """One 50 MB document goes through the whole pipeline as one document (one EOT)."""
    import resource

    p = tmp_path / "huge.jsonl"
    para = "The quick brown fox jumps over the lazy dog. " * 20 + "\n"
    text = para * (50_000_000 // len(para) + 1)
    p.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "small"}) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = prepare([p], tmp_path / "s", tokenizer, val_fraction=0, progress=False)
    grew_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    tr = r.store.split("train")
    assert tr.n_docs == 2 and r.bad_input.split_documents == 1
    head = tokenizer.encode(text[:100_000])
    assert tr.document(0)[:1000].tolist() == head[:1000]
    assert tr.document(1).tolist() == tokenizer.encode("small")
    assert grew_mib < 1500, grew_mib


def test_prepare_survives_pathological_whitespace_run(tmp_path, tokenizer):
    # tiktoken's regex gives up on a ~1M-character whitespace run ("Max stack size exceeded for
    # backtracking"); prepare must fall back instead of failing the whole corpus.
    src = tmp_path / "ws.jsonl"
    text = "hello " + " " * 1_100_000 + "world"
    src.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": "a short one"}) + "\n")
    res = prepare([src], tmp_path / "st", tokenizer, val_fraction=0.0, progress=False)
    docs = [res.store.split(s).document(i).tolist() for s in ("train", "val")
            for i in range(res.store.split(s).n_docs)]
    assert tokenizer.encode(text) in docs
    assert tokenizer.encode("a short one") in docs

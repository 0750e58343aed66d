"""Objectives: the seed's three example strings token for token, structure and loss masks of every task,
determinism, bad input, and exact resume of a Blender loader."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gerbil.data.objectives import (
    CAUSAL, FITM_RESULT, FITM_START, MLM_END, MLM_START, MULTIPLE_TOK_MASK, SINGLE_TOK_MASK,
    Blender, Causal, FillInMiddle, MaskedLM, Plain, get_objective, mode_prefix,
)
from gerbil.data.display import from_display, to_display
from gerbil.data.tokenizer import EOT_ID

SEED_FIM = "<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle <fitm_result> example text <|endoftext|>"
SEED_CAUSAL = "<causal> this is an example text for causal language modelling <|endoftext|>"
SEED_MLM = "<mlm_start> this is an <single_tok_mask> text for masked language modelling <mlm_end> example <|endoftext|>"


class FixedRng:
    """Stands in for np.random.Generator where a test needs chosen split points / mask positions."""

    def __init__(self, integers=None, choice=None, random=()):
        self._integers, self._choice, self._random = integers, choice, list(random)

    def integers(self, low, high, size=None):
        return np.asarray(self._integers)

    def choice(self, n, size=None, replace=True):
        return np.asarray(self._choice)

    def random(self):
        return self._random.pop(0)


# ------------------------------------------------------------------------------------ the seed's strings
def test_seed_fim_example_token_for_token(tokenizer):
    doc = tokenizer.encode(" this is an example text for fill-in-the-middle")
    tokens, _ = FillInMiddle.format(doc[:3], doc[3:5], doc[5:])
    out = tokens.tolist() + [EOT_ID]  # the loader appends the EOT
    # the reading, spelled out: special tokens stand alone, words keep their leading space
    assert out == [FITM_START, 428, 318, 281, MULTIPLE_TOK_MASK, 329, 6070, 12, 259, 12, 1169, 12, 27171,
                   FITM_RESULT, 1672, 2420, EOT_ID]
    assert [tokenizer.decode([t]) for t in out[1:4]] == [" this", " is", " an"]
    assert [tokenizer.decode([t]) for t in out[14:16]] == [" example", " text"]
    assert out == from_display(SEED_FIM, tokenizer)
    assert to_display(out, tokenizer) == SEED_FIM
    # the same through the objective itself, given the same split points
    tokens2, _ = FillInMiddle()(doc, FixedRng(integers=[5, 3]))
    assert tokens2.tolist() == tokens.tolist()


def test_seed_causal_example_token_for_token(tokenizer):
    doc = tokenizer.encode(" this is an example text for causal language modelling")
    tokens, mask = Causal()(doc, np.random.default_rng(0))
    out = tokens.tolist() + [EOT_ID]
    assert out == [CAUSAL] + doc + [EOT_ID]
    assert out == from_display(SEED_CAUSAL, tokenizer)
    assert to_display(out, tokenizer) == SEED_CAUSAL
    assert mask.all()


def test_seed_mlm_example_token_for_token(tokenizer):
    doc = tokenizer.encode(" this is an example text for masked language modelling")
    tokens, _ = MaskedLM.format(doc, [3])
    out = tokens.tolist() + [EOT_ID]
    assert out == [MLM_START] + doc[:3] + [SINGLE_TOK_MASK] + doc[4:] + [MLM_END, 1672, EOT_ID]
    assert tokenizer.decode([doc[3]]) == " example"  # the answer is exactly the masked token
    assert out == from_display(SEED_MLM, tokenizer)
    assert to_display(out, tokenizer) == SEED_MLM
    tokens2, _ = MaskedLM(mask_rate=0.1)(doc, FixedRng(choice=[3]))  # 10% of 10 tokens = 1 mask
    assert tokens2.tolist() == tokens.tolist()


def test_literal_encoding_of_the_display_differs_only_by_separator_spaces(tokenizer):
    """Why the display is not encoded literally: a lone " " token (220) would precede every special."""
    for s in (SEED_FIM, SEED_CAUSAL, SEED_MLM):
        literal = tokenizer.encode(s, allow_special=True)
        assert [t for t in literal if t != 220] == from_display(s, tokenizer)
        assert 220 in literal


# ------------------------------------------------------------------------------------ structure
def _docs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50256, size=int(rng.integers(1, 300))) for _ in range(n)]


def test_plain_and_causal():
    doc = np.arange(10, 20)
    t, m = Plain()(doc, np.random.default_rng(0))
    assert t.tolist() == doc.tolist() and m.all()
    t, m = Causal(loss_on="target")(doc, np.random.default_rng(0))
    assert t.tolist() == [CAUSAL] + doc.tolist() and m.tolist() == [False] + [True] * 10


@pytest.mark.parametrize("spm_rate", [0.0, 0.5, 1.0])
def test_fim_structure(spm_rate):
    obj_all = FillInMiddle(spm_rate=spm_rate)
    obj_tgt = FillInMiddle(loss_on="target", spm_rate=spm_rate)
    n_spm_shaped = n_psm = 0
    for k, doc in enumerate(_docs()):
        t, m = obj_all(doc, np.random.default_rng(k))
        t2, m2 = obj_tgt(doc, np.random.default_rng(k))
        assert t.tolist() == t2.tolist() and m.all()
        t = t.tolist()
        assert len(t) == len(doc) + 3 == obj_all.max_output_len(len(doc))
        assert t[0] == FITM_START and t.count(FITM_START) == t.count(MULTIPLE_TOK_MASK) == t.count(FITM_RESULT) == 1
        r = t.index(FITM_RESULT)
        if t[1] == MULTIPLE_TOK_MASK:  # SPM: <fitm_start> <multiple_tok_mask> suffix <fitm_result> prefix middle
            n_spm_shaped += 1  # (PSM with an empty prefix is the same sequence)
            suffix, prefix_middle = t[2:r], t[r + 1:]
            assert prefix_middle + suffix == doc.tolist()
            n_pre = len(prefix_middle) - int(m2.sum())
            assert not m2[: r + 1 + n_pre].any() and m2[r + 1 + n_pre:].all()
        else:  # PSM: <fitm_start> prefix <multiple_tok_mask> suffix <fitm_result> middle
            n_psm += 1
            s = t.index(MULTIPLE_TOK_MASK)
            prefix, suffix, middle = t[1:s], t[s + 1:r], t[r + 1:]
            assert prefix + middle + suffix == doc.tolist()
            assert not m2[: r + 1].any() and m2[r + 1:].all()
    assert (n_psm > 0) == (spm_rate < 1)
    assert n_spm_shaped > 10 if spm_rate > 0 else n_spm_shaped < 5


def test_fim_split_points_are_uniform():
    doc = np.arange(100, 110)
    starts, ends, lengths = np.zeros(11), np.zeros(11), []
    for k in range(3000):
        t, _ = FillInMiddle()(doc, np.random.default_rng(k))
        t = t.tolist()
        s, r = t.index(MULTIPLE_TOK_MASK), t.index(FITM_RESULT)
        i, j = s - 1, s - 1 + (len(t) - r - 1)
        starts[i] += 1
        ends[j] += 1
        lengths.append(j - i)
    # min and max of two uniform draws over 0..10: P(min = i) falls with i, P(max = j) rises with j
    assert starts[0] > starts[5] > starts[10] and ends[10] > ends[5] > ends[0]
    # E|U1 - U2| for two uniform draws over 11 points = (11² - 1) / (3 · 11) ≈ 3.64 tokens
    assert 3.4 < np.mean(lengths) < 3.9 and 0 < lengths.count(0) < 600


def test_fim_character_level(tokenizer):
    text = "The quick brown fox jumps over the lazy dog, and then it sleeps for a while."
    doc = np.asarray(tokenizer.encode(text))
    obj = FillInMiddle(char_level=True, tokenizer=tokenizer)
    inside_word = 0
    for k in range(200):
        t, m = obj(doc, np.random.default_rng(k))
        t = t.tolist()
        s, r = t.index(MULTIPLE_TOK_MASK), t.index(FITM_RESULT)
        prefix, suffix, middle = (tokenizer.decode(x) for x in (t[1:s], t[s + 1:r], t[r + 1:]))
        assert prefix + middle + suffix == text
        for piece, ids in ((prefix, t[1:s]), (suffix, t[s + 1:r]), (middle, t[r + 1:])):
            assert tokenizer.encode(piece) == ids  # every piece re-tokenized on its own
        assert len(t) <= obj.max_output_len(len(doc))
        cut = len(prefix)
        inside_word += 0 < cut < len(text) and text[cut - 1].isalpha() and text[cut].isalpha()
    assert inside_word > 20  # half words happen, unlike token-boundary splits


def test_mlm_structure():
    obj, tgt = MaskedLM(), MaskedLM(loss_on="target", mask_rate=0.5)
    for k, doc in enumerate(_docs()):
        n = len(doc)
        t, m = obj(doc, np.random.default_rng(k))
        t = t.tolist()
        kk = max(1, int(np.floor(0.15 * n + 0.5)))
        assert len(t) == n + 2 + kk == obj.max_output_len(n) and m.all()
        assert t[0] == MLM_START and t[n + 1] == MLM_END
        body, answers = t[1:n + 1], t[n + 2:]
        pos = [i for i, x in enumerate(body) if x == SINGLE_TOK_MASK]
        assert len(pos) == kk and answers == [int(doc[i]) for i in pos]
        assert [x for i, x in enumerate(body) if i not in pos] == [int(doc[i]) for i in range(n) if i not in pos]
        t2, m2 = tgt(doc, np.random.default_rng(k))
        assert not m2[: n + 2].any() and m2[n + 2:].all()
        assert int(m2.sum()) == max(1, int(np.floor(0.5 * n + 0.5)))
    t, _ = MaskedLM(mask_rate=0.01)(np.array([5]), np.random.default_rng(0))  # at least one mask
    assert t.tolist() == [MLM_START, SINGLE_TOK_MASK, MLM_END, 5]


def test_blender_mixes_the_three_tasks():
    doc = np.arange(1000, 1100)
    counts = {CAUSAL: 0, FITM_START: 0, MLM_START: 0}
    obj = Blender()
    for k in range(3000):
        t, _ = obj(doc, np.random.default_rng([7, k]))
        counts[int(t[0])] += 1
    assert all(900 < c < 1100 for c in counts.values()), counts  # equal shares: 1000 ± 3.2σ
    only_mlm = Blender(weights=(0, 0, 2))
    assert all(only_mlm(doc, np.random.default_rng(k))[0][0] == MLM_START for k in range(200))
    skewed = Blender(weights=[3, 1, 0])
    firsts = [int(skewed(doc, np.random.default_rng(k))[0][0]) for k in range(2000)]
    assert MLM_START not in firsts and 1350 < firsts.count(CAUSAL) < 1650


def test_empty_chunk_gives_empty_output():
    for name in ("plain", "causal", "fim", "mlm", "blender"):
        t, m = get_objective(name)(np.array([], dtype=np.uint16), np.random.default_rng(0))
        assert len(t) == len(m) == 0


def test_output_fits_chunk_len(tokenizer):
    for obj in (Plain(), Causal(), FillInMiddle(), MaskedLM(), MaskedLM(mask_rate=0.9), Blender(),
                FillInMiddle(char_level=True, tokenizer=tokenizer)):
        for T in (16, 64, 2048):
            n = obj.chunk_len(T)
            assert obj.max_output_len(n) + 1 <= T < obj.max_output_len(n + 1) + 1
    assert MaskedLM().chunk_len(2048) == 2048 - 1 - 2 - round(0.15 * 1777)  # n + 2 + k + EOT = 2048


# ------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", ["causal", "fim", "mlm", "blender"])
def test_deterministic(name):
    obj = get_objective(name)
    doc = np.arange(500, 800).astype(np.uint16)  # the store's dtype
    a = obj(doc, np.random.default_rng([3, 14]))
    b = get_objective(name)(doc.copy(), np.random.default_rng([3, 14]))
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    assert a[0].dtype == np.int64 and a[1].dtype == bool
    outs = {tuple(obj(doc, np.random.default_rng(k))[0].tolist()) for k in range(20)}
    assert len(outs) == 1 if name == "causal" else len(outs) > 10


# ------------------------------------------------------------------------------------ configuration
def test_get_objective_and_round_trip():
    assert isinstance(get_objective("Blender"), Blender)
    for obj in (Plain(), Causal(loss_on="target"), FillInMiddle(spm_rate=0.5), MaskedLM(mask_rate=0.3),
                Blender(weights=(1, 2, 3), mask_rate=0.2, loss_on="target")):
        again = get_objective(**obj.to_dict())
        assert type(again) is type(obj) and again.to_dict() == obj.to_dict()
        json.dumps(obj.to_dict())
    assert mode_prefix("blender") == mode_prefix("causal") == [CAUSAL]
    assert mode_prefix("plain") == mode_prefix(None) == []


@pytest.mark.parametrize("make, message", [
    (lambda: get_objective("t5"), "unknown objective 't5'"),
    (lambda: get_objective("mlm", weights=(1, 1, 1)), "takes no option 'weights'"),
    (lambda: Blender(weights=(1, 1)), "three non-negative numbers"),
    (lambda: Blender(weights=(1, -1, 1)), "three non-negative numbers"),
    (lambda: Blender(weights=(0, 0, 0)), "positive sum"),
    (lambda: Blender(weights=(1, float("nan"), 1)), "three non-negative numbers"),
    (lambda: Blender(weights="111"), "three numbers"),
    (lambda: Blender(weights=("a", 1, 1)), "three numbers"),
    (lambda: MaskedLM(mask_rate=0), "mask rate must be in (0, 1)"),
    (lambda: MaskedLM(mask_rate=1), "mask rate must be in (0, 1)"),
    (lambda: get_objective("blender", mask_rate=1.5), "mask rate must be in (0, 1)"),
    (lambda: MaskedLM(mask_rate=float("nan")), "mask rate must be in (0, 1)"),
    (lambda: Causal(loss_on="middle"), "loss_on must be one of all, target"),
    (lambda: FillInMiddle(char_level=True), "needs a tokenizer"),
    (lambda: FillInMiddle(spm_rate=2), "spm_rate must be in [0, 1]"),
])
def test_bad_input_is_one_line_value_error(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ with the loader
class _Split:
    """The part of `gerbil.data.store.Split` the loader reads: tokens with EOT after each document, offsets."""

    def __init__(self, docs):
        flat, offsets = [], [0]
        for d in docs:
            flat += list(d) + [EOT_ID]
            offsets.append(len(flat))
        self.tokens = np.asarray(flat, dtype=np.uint16)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n_docs = len(docs)
        self.n_tokens = len(flat)

    def document(self, i):
        return self.tokens[self.offsets[i]: self.offsets[i + 1] - 1]


def test_blender_loader_exact_resume():
    from gerbil.data.loader import Loader

    rng = np.random.default_rng(0)
    split = _Split([rng.integers(0, 50256, size=int(rng.integers(5, 150))) for _ in range(60)])
    kw = dict(seq_len=32, micro_batch=3, objective="blender", seed=11)
    straight = Loader(split, **kw)
    expected = [next(straight) for _ in range(10)]

    first = Loader(split, **kw)
    got = [next(first) for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a plain-JSON round trip
    resumed = Loader(split, **kw)
    resumed.load_state_dict(state)
    got += [next(resumed) for _ in range(6)]

    for (x, y), (x2, y2) in zip(expected, got):
        assert x.equal(x2) and y.equal(y2)
    seen = set(np.concatenate([x.numpy().ravel() for x, _ in expected]).tolist())
    assert {CAUSAL, FITM_START, MLM_START} <= seen  # all three tasks made it into the batches


# ------------------------------------------------------------------------------------ batched (the loader's route)
class _Reversing(Causal):
    """A subclass with its own __call__: must be called per chunk, never batched as a Causal."""

    def __call__(self, doc_tokens, rng):
        doc = np.asarray(doc_tokens, dtype=np.int64)[::-1]
        return doc, np.arange(len(doc)) % 2 == 0


def _pack_cases(tokenizer=None):
    cases = {
        "plain": Plain(), "causal": Causal(), "causal-target": Causal(loss_on="target"),
        "fim": FillInMiddle(), "fim-spm-target": FillInMiddle(spm_rate=0.5, loss_on="target"),
        "mlm": MaskedLM(), "mlm-target-0.5": MaskedLM(loss_on="target", mask_rate=0.5),
        "blender": Blender(), "blender-mixed": Blender(weights=(1, 2, 3), spm_rate=0.3, loss_on="target", mask_rate=0.3),
        "blender-fim-only": Blender(weights=(0, 1, 0)), "blender-no-mlm": Blender(weights=(1e-300, 1, 0)),
        "subclass": _Reversing(), "callable": lambda chunk, rng: (chunk[: len(chunk) // 2], rng.random(len(chunk) // 2) < 0.5),
    }
    if tokenizer is not None:
        cases["fim-char"] = FillInMiddle(char_level=True, tokenizer=tokenizer, spm_rate=0.5)
        cases["blender-char"] = Blender(char_level=True, tokenizer=tokenizer)
    return cases


@pytest.mark.parametrize("name", list(_pack_cases()) + ["fim-char", "blender-char"])
def test_pack_examples_equals_one_call_per_chunk(name, request):
    """The batched route gives exactly `objective(chunk, rng)` + EOT per chunk, from the same generators,
    on chunks of every length (empty, one token, the 2048-sequence chunk, short tails)."""
    from gerbil.data.packing import pack_examples

    tokenizer = request.getfixturevalue("tokenizer") if name.endswith("-char") else None
    obj = _pack_cases(tokenizer)[name]
    rng = np.random.default_rng(0)
    lengths = np.array([5, 0, 1, 2, 300, 17, 2044, 3] + rng.integers(0, 60, size=60).tolist())
    if tokenizer is not None:  # real text, so decoding and re-encoding is meaningful
        text = tokenizer.encode("The quick brown fox jumps over the lazy dog; naïve café, 3.14 — ok. " * 40)
        chunks = np.resize(np.asarray(text, dtype=np.int64), int(lengths.sum()))
    else:
        chunks = rng.integers(0, 50256, size=int(lengths.sum()))

    def rngs(c):
        return np.random.default_rng([9, c, 2])

    tokens, mask, ends = pack_examples(obj, chunks, lengths, rngs, eot_id=EOT_ID)
    assert tokens.dtype == np.int64 and mask.dtype == bool and len(ends) == len(lengths)
    start = 0
    for c, n in enumerate(lengths):
        t, m = obj(chunks[start: start + n], rngs(c))
        start += n
        lo = ends[c - 1] if c else 0
        assert tokens[lo: ends[c]].tolist() == np.asarray(t).tolist() + [EOT_ID], (name, c, n)
        assert mask[lo: ends[c]].tolist() == (np.asarray(m) > 0).tolist() + [True], (name, c, n)
    assert ends[-1] == len(tokens) == len(mask)


def test_concat_ranges():
    from gerbil.data.packing import concat_ranges

    assert concat_ranges([5, 0, 9, 2], [3, 0, 1, 2]).tolist() == [5, 6, 7, 9, 2, 3]
    assert concat_ranges([], []).tolist() == [] and concat_ranges([4], [0]).tolist() == []


def test_two_scalar_draws_are_one_size_2_draw():
    """The batched FIM draws its two cut points as two scalar `integers` calls (cheaper): the same numbers,
    and the generator left in the same state (the SPM draw that follows is unchanged)."""
    for high in (1, 2, 3, 254, 2045, 2**31 + 5, 2**33):
        for k in range(40):
            a, b = np.random.default_rng([k, high]), np.random.default_rng([k, high])
            assert a.integers(0, high, size=2).tolist() == [int(b.integers(0, high)), int(b.integers(0, high))]
            assert a.random() == b.random()

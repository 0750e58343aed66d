"""Blender for encoder-decoders (data/encdec.py) and its packed loader (data/encdec_loader.py): the three
formats on the seed's examples (docs/reference.md §9), the split invariant against the decoder-only
objectives, loss masks, length bounds, bad input; the loader against an independent per-chunk reference,
row shapes and fill, exact resume (40 batches → save → rebuild → the next 8), and the validation rows."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_objectives import SEED_CAUSAL, SEED_FIM, SEED_MLM, FixedRng

from gerbil.data import encdec
from gerbil.data.encdec import (check_objective, default_chunk_len, default_encoder_len, example, max_chunk_len,
                                max_lengths, split_uniform)
from gerbil.data.encdec_loader import EncDecLoader, eval_rows, rows_to_batch
from gerbil.data.loader import epoch_order
from gerbil.data.display import from_display, to_display
from gerbil.data.objectives import CAUSAL, FITM_RESULT, MLM_END, Blender, Causal, FillInMiddle, MaskedLM, get_objective
from gerbil.data.tokenizer import EOT_ID
from gerbil.errors import GerbilError

# docs/reference.md §9, one example per format
DOC_LINES = {
    "causal": ("<causal> this is an example text", " for causal language modelling <|endoftext|>"),
    "fim": ("<fitm_start> this is an <multiple_tok_mask> for fill-in-the-middle", "<fitm_result> example text <|endoftext|>"),
    "mlm": ("<mlm_start> this is an <single_tok_mask> text for masked language modelling", "<mlm_end> example <|endoftext|>"),
}


def _split(docs: list[np.ndarray]) -> SimpleNamespace:
    """A token-store split (documents, each followed by EOT) in memory."""
    tokens = np.concatenate([np.append(d, EOT_ID) for d in docs]).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum([len(d) + 1 for d in docs])]).astype(np.int64)
    return SimpleNamespace(tokens=tokens, offsets=offsets, n_docs=len(docs))


def _docs(n: int = 120, seed: int = 0, mean: float = 4.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.maximum(0, rng.lognormal(mean, 1.0, n).astype(int))  # some empty documents too
    return [rng.integers(0, 50000, int(k)) for k in lengths]


# ------------------------------------------------------------------------------------ the formats
@pytest.mark.parametrize("task", ["causal", "fim", "mlm"])
def test_seed_examples_split_at_their_result_token(task, tokenizer):
    """The documented lines: each is the seed's decoder-only string cut at its result token."""
    seed_line = {"causal": SEED_CAUSAL, "fim": SEED_FIM, "mlm": SEED_MLM}[task]
    text = {"causal": " this is an example text for causal language modelling",
            "fim": " this is an example text for fill-in-the-middle",
            "mlm": " this is an example text for masked language modelling"}[task]
    doc = tokenizer.encode(text)
    if task == "causal":
        enc, dec, mask = example(Causal(), doc, FixedRng(), u=5.5 / len(doc))  # split after " text"
    elif task == "fim":
        enc, dec, mask = example(FillInMiddle(), doc, FixedRng(integers=[5, 3]))
    else:
        enc, dec, mask = example(MaskedLM(mask_rate=0.1), doc, FixedRng(choice=[3]))
    assert (to_display(enc, tokenizer), to_display(dec, tokenizer)) == DOC_LINES[task]
    assert enc.tolist() + dec.tolist() == from_display(seed_line, tokenizer)  # the split invariant
    assert mask.all()


@pytest.mark.parametrize("objective", [
    Causal(), FillInMiddle(), FillInMiddle(spm_rate=0.5), MaskedLM(mask_rate=0.3),
    Blender(), Blender(weights=(1, 2, 3), loss_on="target", spm_rate=0.3),
])
def test_encoder_then_decoder_is_the_decoder_only_example(objective):
    """Same chunk, same generator: encoder + decoder without its EOT = the decoder-only tokens; the decoder
    mask is the decoder-only mask of those positions (plus the EOT), the encoder never scored."""
    for k, doc in enumerate(d for d in _docs(60, seed=3) if len(d)):
        enc, dec, mask = example(objective, doc, np.random.default_rng([7, k, 2]), u=0.37)
        ref, ref_mask = objective(doc, np.random.default_rng([7, k, 2]))
        assert np.array_equal(np.concatenate([enc, dec[:-1]]), ref) and dec[-1] == EOT_ID
        assert np.array_equal(mask[:-1], ref_mask[len(enc):]) and mask[-1]
        first = int(dec[0])
        assert first in (FITM_RESULT, MLM_END) or enc[0] == CAUSAL
        e_max, d_max = max_lengths(objective, len(doc))
        assert len(enc) <= e_max and len(dec) <= d_max


def test_loss_on_target_drops_the_result_token_and_spm_prefix():
    doc = np.arange(100, 120)
    _, dec, mask = example(FillInMiddle(loss_on="target"), doc, FixedRng(integers=[4, 9]))
    assert dec[0] == FITM_RESULT and not mask[0] and mask[1:].all()
    _, dec, mask = example(FillInMiddle(loss_on="target", spm_rate=1.0), doc, FixedRng(integers=[4, 9], random=[0.1]))
    assert dec.tolist() == [FITM_RESULT, *range(100, 109), EOT_ID] and mask.tolist() == [False] * 5 + [True] * 6
    _, dec, mask = example(MaskedLM(loss_on="target"), doc, FixedRng(choice=[2, 7, 11]))
    assert dec.tolist() == [MLM_END, 102, 107, 111, EOT_ID] and mask.tolist() == [False, True, True, True, True]
    _, dec, mask = example(Causal(loss_on="target"), doc, FixedRng(), u=0.5)
    assert len(dec) == 11 and mask.all()  # a causal decoder is all text


def test_objectives_an_encoder_decoder_refuses():
    for bad in ("plain", "gpt", get_objective("plain")):
        with pytest.raises(GerbilError, match="no encoder-decoder format"):
            check_objective(bad)
    with pytest.raises(GerbilError, match="mask rate"):
        check_objective("blender", mask_rate=2.0)
    assert check_objective("blender", weights=(1, 0, 1)).weights == (1.0, 0.0, 1.0)


def test_row_split_and_chunk_defaults():
    blender = check_objective("blender")
    assert abs(encdec.encoder_share(blender) - 0.688) < 1e-3
    assert default_encoder_len(2048, blender) == 1408  # a multiple of 8
    assert default_encoder_len(2048, check_objective("causal")) == 1024
    longest = max_chunk_len(blender, 1408, 640)
    assert max_lengths(blender, longest)[1] <= 640 < max_lengths(blender, longest + 1)[1]
    half = default_chunk_len(blender, 1408, 640)  # two examples always fit one row
    (e, d), (e1, d1) = max_lengths(blender, half), max_lengths(blender, half + 1)
    assert 2 * e <= 1408 and 2 * d <= 640 and (2 * e1 > 1408 or 2 * d1 > 640) and half >= longest // 2 - 2
    assert default_chunk_len(blender, 4, 3) == max_chunk_len(blender, 4, 3) == 1  # a tiny row: one example
    with pytest.raises(GerbilError, match="longer --seq-len"):
        default_chunk_len(blender, 3, 2)
    u = split_uniform(5, np.arange(1000))
    assert ((u >= 0) & (u < 1)).all() and abs(u.mean() - 0.5) < 0.05 and split_uniform(5, [17])[0] == u[17]


# ------------------------------------------------------------------------------------ the loader
def _reference_rows(split, loader: EncDecLoader, n_rows: int) -> list[list]:
    """An independent re-implementation: the document walk, `example` per chunk, first-fit packing."""
    rows, used, out, k, epoch = [], [], [], 0, 0
    Te, Td = loader.encoder_len, loader.decoder_len
    while len(out) < n_rows:
        for doc in epoch_order(loader.seed, epoch, split.n_docs, loader.shuffle):
            toks = split.tokens[split.offsets[doc]: split.offsets[doc + 1] - 1].astype(np.int64)
            for s in range(0, len(toks), loader.chunk_tokens):
                ex = example(loader.objective, toks[s: s + loader.chunk_tokens], np.random.default_rng([loader.seed, k, 2]),
                             u=float(split_uniform(loader.seed, [k])[0]))
                k += 1
                for r, (e, d) in enumerate(used):
                    if e + len(ex[0]) <= Te and d + len(ex[1]) <= Td:
                        rows[r].append(ex)
                        used[r] = (e + len(ex[0]), d + len(ex[1]))
                        break
                else:
                    if len(rows) == loader.open_rows:
                        out.append(rows.pop(0))
                        used.pop(0)
                    rows.append([ex])
                    used.append((len(ex[0]), len(ex[1])))
        epoch += 1
    return out[:n_rows]


@pytest.mark.parametrize("objective", ["blender", "fim", "causal"])
def test_loader_equals_per_chunk_reference(objective):
    split = _split(_docs(40, seed=1))
    loader = EncDecLoader(split, 96, 4, objective=objective, seed=3, open_rows=4)
    got = [loader.next_rows(4) for _ in range(6)] + [loader.next_rows(5)]  # crosses an epoch
    ref = _reference_rows(split, loader, 29)
    want = rows_to_batch(ref, loader.encoder_len, loader.decoder_len)
    for a, b in zip((torch.cat(t) for t in zip(*got)), want):
        assert torch.equal(a, b)


def test_rows_are_well_formed_and_mostly_full():
    split = _split(_docs(300, seed=2, mean=5.0))
    loader = EncDecLoader(split, 512, 8, objective="blender", seed=0)
    for _ in range(6):
        b = next(loader)
        assert b.encoder_ids.shape == b.encoder_segments.shape == (8, loader.encoder_len)
        assert b.targets.shape == b.decoder_ids.shape == b.decoder_segments.shape == (8, 512 - loader.encoder_len)
        for r in range(8):
            es, ds = b.encoder_segments[r], b.decoder_segments[r]
            k = int(es.max())
            assert k >= 1 and int(ds.max()) == k and (np.diff(es[es > 0].numpy()) >= 0).all()
            starts = torch.nonzero(torch.diff(ds, prepend=torch.tensor([0]))).flatten()
            assert (b.decoder_ids[r, starts[ds[starts] > 0]] == EOT_ID).all()  # each example: the start id
            assert (b.targets[r][ds == 0] == -100).all() and (b.encoder_ids[r][es == 0] == EOT_ID).all()
    assert loader.fill > 0.8, loader.fill  # first fit over 16 open rows (docs: ~90% at 2048)


def test_exact_resume_after_40_batches():
    split = _split(_docs(150, seed=4))
    kw = dict(seq_len=128, micro_batch=3, objective="blender", seed=11)
    a = EncDecLoader(split, **kw)
    for _ in range(40):
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # plain JSON: it goes into a checkpoint
    want = [next(a) for _ in range(8)]
    b = EncDecLoader(split, **kw)
    b.load_state_dict(state)
    for x, y in zip(want, (next(b) for _ in range(8))):
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    c = EncDecLoader(split, **{**kw, "micro_batch": 6})  # the cursor counts rows, not batches
    c.load_state_dict(state)
    assert all(torch.equal(torch.cat([w[i] for w in want[:2]]), t) for i, t in enumerate(next(c)))
    with pytest.raises(GerbilError, match="seed"):
        EncDecLoader(split, **{**kw, "seed": 12}).load_state_dict(state)
    with pytest.raises(GerbilError, match="encoder_len"):
        EncDecLoader(split, **kw, encoder_len=64).load_state_dict(state)


def test_loader_bad_input():
    split = _split(_docs(20))
    with pytest.raises(GerbilError, match="no encoder-decoder format"):
        EncDecLoader(split, 64, 2, objective="plain")
    with pytest.raises(GerbilError, match="do not fit"):
        EncDecLoader(split, 64, 2, chunk_tokens=60)
    with pytest.raises(GerbilError, match="no non-empty documents"):
        EncDecLoader(_split([np.zeros(0, dtype=np.int64)]), 64, 2)
    with pytest.raises(GerbilError, match="Blender special tokens"):
        next(EncDecLoader(_split([np.full(30, FITM_RESULT)]), 64, 2, objective="fim"))


def test_validation_rows():
    split = _split(_docs(60, seed=5))
    b = eval_rows(split, 64, 64 * 5, encoder_len=40)
    assert b.encoder_ids.shape == (5, 40) and b.targets.shape == (5, 24)
    assert (b.encoder_ids[:, 0] == CAUSAL).all() and int((b.targets != -100).sum()) == 5 * 24
    raw = split.tokens[: 5 * 63].astype(np.int64).reshape(5, 63)
    assert np.array_equal(b.encoder_ids[:, 1:].numpy(), raw[:, :39]) and np.array_equal(b.targets.numpy(), raw[:, 39:])
    assert (b.decoder_ids[:, 0] == EOT_ID).all() and torch.equal(b.decoder_ids[:, 1:], b.targets[:, :-1])
    assert eval_rows(split, 64, 64, encoder_len=40, objective="fim").encoder_ids[0, 0] != CAUSAL  # no mode token

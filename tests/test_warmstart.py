"""Warm-started encoder-decoders (model/warmstart.py, model/warmstart_hf.py): before training the decoder is
exactly the base model whatever the encoder says; shared and unshared parameter counts; the cross-attention
comes alive with training; the transformers folder (own modeling file, trust_remote_code) gives the same
logits and greedy output; bad bases are refused."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model

from gerbil.data.objectives import CAUSAL
from gerbil.data.tokenizer import EOT_ID, VOCAB_SIZE
from gerbil.errors import GerbilError
from gerbil.model import warmstart_hf
from gerbil.model.config import ModelConfig
from gerbil.model.loss import lm_loss
from gerbil.model.warmstart import WarmStartConfig, WarmStartEncDec, warm_start

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(*shape, seed=1, vocab=VOCAB_SIZE):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _base(**kw):
    """A tiny GPT with its weights moved off the init (non-zero biases, LayerNorms ≠ 1)."""
    base = tiny_model(**kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in base.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for t in (base.wte.weight, base.lm_head.weight, base.lm_head.bias):
            t[base.config.vocab_size:] = 0  # padding rows stay zero in training (never looked up or scored)
    return base.eval()


@pytest.mark.parametrize("share", [False, True])
def test_decoder_is_the_base_model_before_training(share):
    base = _base(pad_vocab_multiple=64)
    model = warm_start(base, {"objective": "plain"}, share=share).eval()
    dec = _ids(3, 21)
    with torch.no_grad():
        want = base.logits(base(dec))
        for enc in (_ids(3, 9, seed=2), _ids(3, 30, seed=3)):  # whatever the encoder reads
            assert torch.equal(model.logits(model(enc, dec)), want)  # bitwise
        assert torch.equal(model.decode(dec, torch.randn(3, 4, 32)), base(dec))
    assert model.config.decoder_start_id == EOT_ID
    for a, b in zip(base.state_dict().values(), warm_start(base).state_dict().values()):
        assert a.data_ptr() != b.data_ptr()  # copies: the base is never changed by training the warm start


def test_parameter_counts_and_sharing():
    base = _base()
    n_base, d, L = base.n_params(), 32, base.config.n_layer
    shared, unshared = warm_start(base, share=True), warm_start(base, share=False)
    assert shared.n_params() == n_base + L * 4 * d * d == sum(p.numel() for p in shared.parameters())
    assert unshared.n_params() == n_base + L * 4 * d * d + base.n_params("non_embedding")
    assert unshared.n_params() == sum(p.numel() for p in unshared.parameters())
    assert shared.dec_h is None and shared.ln_enc is None and unshared.dec_h is not None
    cfg = WarmStartConfig.from_dict(json.loads(json.dumps(unshared.config.to_dict())))
    assert cfg.share is False and cfg.base == base.config and cfg.vocab_size == VOCAB_SIZE


def test_blender_base_starts_its_decoder_in_causal_mode():
    model = warm_start(_base(), {"objective": "blender"})
    assert model.config.decoder_start_id == CAUSAL
    assert warm_start(_base(), {"objective": "blender"}, decoder_start_id=7).config.decoder_start_id == 7


def test_cross_attention_comes_alive_with_training():
    base = _base(vocab_size=512)
    model = warm_start(base, share=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(3):
        enc, dec, tgt = _ids(4, 8, seed=step, vocab=512), _ids(4, 6, seed=10 + step, vocab=512), _ids(4, 6, seed=20 + step, vocab=512)
        loss = lm_loss(model(enc, dec), model.lm_head.weight, model.lm_head.bias, tgt, vocab_size=512)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert model.cross[0].out_proj.weight.grad.abs().sum() > 0  # the zero projection learns first
        opt.step()
    model.eval()
    dec = _ids(2, 6, seed=40, vocab=512)
    with torch.no_grad():
        a, b = model(_ids(2, 8, seed=41, vocab=512), dec), model(_ids(2, 8, seed=42, vocab=512), dec)
    assert (a - b).abs().max() > 1e-4  # the decoder now reads the encoder


@pytest.mark.parametrize("share", [False, True])
def test_packed_rows_and_padding(share):
    model = warm_start(_base(), share=share).eval()
    with torch.no_grad():
        for c in model.cross:
            c.out_proj.weight.normal_(0.0, 0.2)
    e1, d1, e2, d2 = _ids(1, 5), _ids(1, 4, seed=2), _ids(1, 7, seed=3), _ids(1, 3, seed=4)
    enc, dec = torch.cat([e1, e2, _ids(1, 2, seed=5)], 1), torch.cat([d1, d2], 1)
    eseg, dseg = torch.tensor([[1] * 5 + [2] * 7 + [0] * 2]), torch.tensor([[1] * 4 + [2] * 3])
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        packed = model(enc, dec, eseg, dseg)
        assert (packed - torch.cat([model(e1, d1), model(e2, d2)], 1)).abs().max() < 1e-5
        padded = model(torch.cat([e1, _ids(1, 3, seed=6)], 1), d1, encoder_mask=mask)
        assert (padded - model(e1, d1)).abs().max() < 1e-5


@pytest.mark.parametrize("share", [False, True])
def test_transformers_folder_with_remote_code(share, tmp_path):
    """The export form: AutoModelForSeq2SeqLM(trust_remote_code=True) loads the folder; logits equal gerbil's
    (≤ 1e-5) with a padded encoder batch; generate() equals gerbil's greedy decoding; it loads back."""
    from transformers import AutoModelForSeq2SeqLM

    model = warm_start(_base(pad_vocab_multiple=64), {"objective": "blender"}, share=share).eval()
    with torch.no_grad():
        for c in model.cross:  # as after training: the cross-attention matters
            c.out_proj.weight.normal_(0.0, 0.2)
    folder = warmstart_hf.save_warmstart_folder(model, tmp_path / "ws", {"name": "GerbilBlender-ws"})
    conf = json.loads((folder / "config.json").read_text())
    assert conf["auto_map"]["AutoModelForSeq2SeqLM"].startswith("modeling_gerbil_encdec.")
    assert conf["decoder_start_token_id"] == CAUSAL and conf["pad_token_id"] == EOT_ID
    assert (folder / "modeling_gerbil_encdec.py").read_bytes() == warmstart_hf.MODELING_FILE.read_bytes()
    hf = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    enc, dec = _ids(2, 11), _ids(2, 6, seed=2)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        ours = model.logits(model(enc, dec, encoder_mask=mask))
        theirs = hf(input_ids=enc, attention_mask=mask, decoder_input_ids=dec).logits
        assert ours.shape == theirs.shape == (2, 6, VOCAB_SIZE)
        assert (ours - theirs).abs().max().item() <= 1e-5
        generated = hf.generate(enc, attention_mask=mask, max_new_tokens=5, do_sample=False)
        ids = torch.full((2, 1), CAUSAL)
        encoded = model.encode(enc, encoder_mask=mask)
        for _ in range(5):
            ids = torch.cat([ids, model.logits(model.decode(ids, encoded, encoder_mask=mask))[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, ids)
    back, meta = warmstart_hf.load_warmstart_folder(folder)
    assert meta["name"] == "GerbilBlender-ws" and back.config.share == share
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_bases_are_refused(tmp_path):
    from gerbil.model.classifier import Classifier
    from gerbil.model.t5 import T5

    base = _base()
    with pytest.raises(GerbilError, match="classifier"):
        warm_start(Classifier.from_gpt(base, 2))
    with pytest.raises(GerbilError, match="classifier"):
        warm_start(base, {"finetune": {"task": "classify"}})
    t5 = ModelConfig(arch="t5", d_model=32, n_layer=1, n_decoder_layer=1, n_head=2, d_kv=16, d_ff=32, rotary_dim=0,
                     vocab_size=64)
    with pytest.raises(GerbilError, match="already an encoder-decoder"):
        warm_start(T5(t5))
    with pytest.raises(GerbilError, match="already an encoder-decoder"):
        warm_start(warm_start(base))
    with pytest.raises(GerbilError, match="need a decoder-only"):
        warm_start(torch.nn.Linear(2, 2))
    with pytest.raises(GerbilError, match="decoder-only GPT-J"):
        WarmStartConfig(t5)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(GerbilError, match="not a gerbil warm-start export"):
        warmstart_hf.load_warmstart_folder(tmp_path)
    assert isinstance(warm_start(base), WarmStartEncDec)

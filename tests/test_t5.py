"""T5Blender (model/t5.py, model/t5_hf.py): the 24m preset's count, logits parity with transformers'
T5ForConditionalGeneration (in memory and through a native folder loaded with no custom code), the loss
through `lm_loss` without full logits, packed rows = separate examples, FLOPs, and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gerbil.errors import GerbilError
from gerbil.model import t5_hf
from gerbil.model.config import PRESETS, T5_SIZES, VOCAB_SIZE, ModelConfig, arch_model_config, get_arch_size
from gerbil.model.loss import lm_loss
from gerbil.model.model import GPT
from gerbil.model.t5 import T5, relative_position_bucket
from gerbil.plan import encdec_flops_per_token, flops_per_token

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5


def _tiny(**kw) -> ModelConfig:
    # 8 buckets up to distance 20: sequences of 30 reach the logarithmic and the clamped buckets
    base = dict(arch="t5", d_model=32, n_layer=2, n_decoder_layer=2, n_head=4, d_kv=8, d_ff=48, rotary_dim=0,
                rel_buckets=8, rel_max_distance=20, layer_norm_eps=1e-6, init_std=1.0, seq_len=64)
    return ModelConfig(**{**base, **kw})


def _model(seed: int = 0, **kw) -> T5:
    m = T5(_tiny(**kw))
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m.eval()


def _ids(*shape, seed=1):
    return torch.randint(0, VOCAB_SIZE, shape, generator=torch.Generator().manual_seed(seed))


def _train_steps(model: T5, steps: int = 3) -> None:
    """A few AdamW steps on random data through lm_loss, so parity is checked away from the init."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for s in range(steps):
        enc, dec, tgt = _ids(2, 12, seed=10 + s), _ids(2, 9, seed=20 + s), _ids(2, 9, seed=30 + s)
        loss = lm_loss(model(enc, dec), model.lm_head.weight, model.lm_head.bias, tgt,
                       vocab_size=model.config.vocab_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ------------------------------------------------------------------------------------ preset and config
def test_24m_preset_counts_23m_parameters():
    cfg = arch_model_config("t5", "24m")
    n = cfg.n_params()
    assert n == 22_903_040  # docs/reference.md §9
    assert abs(n / 23.0e6 - 1) < 0.03 and abs(20 * n / 460e6 - 1) < 0.03  # the seed's 460M at ratio 20
    assert cfg.n_params("embedding") == VOCAB_SIZE * 256
    assert cfg.n_params("embedding") + cfg.n_params("non_embedding") == n
    with torch.device("meta"):
        model = T5(cfg)
    assert sum(p.numel() for p in model.parameters()) == n == model.n_params()  # the formula is the module
    padded = arch_model_config("t5", "24m", pad_vocab_multiple=64)
    with torch.device("meta"):
        model = T5(padded)
    pad_rows = padded.padded_vocab_size - VOCAB_SIZE
    assert sum(p.numel() for p in model.parameters()) - pad_rows * 256 == n == padded.n_params()


def test_config_records_and_bad_input():
    cfg = arch_model_config("t5", "24m")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert "d_ff" not in PRESETS["6.7m"].to_dict()  # a GPT-J record is what it was before T5 existed
    assert T5_SIZES["24m"].batch_tokens == 131_072
    with pytest.raises(GerbilError, match="no T5 preset"):
        get_arch_size("t5", "6.7m")
    with pytest.raises(GerbilError, match="unknown architecture"):
        get_arch_size("bert", "24m")
    with pytest.raises(ValueError, match="rotary_dim must be 0"):
        _tiny(rotary_dim=8)
    with pytest.raises(ValueError, match="d_ff must be positive"):
        _tiny(d_ff=0)
    with pytest.raises(ValueError, match="arch 'gptj'"):
        GPT(cfg)
    with pytest.raises(ValueError, match="arch 't5'"):
        T5(PRESETS["3.3m"])


# ------------------------------------------------------------------------------------ transformers parity
def test_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        ours = relative_position_bucket(rel, bidirectional, 32, 128)
        theirs = T5Attention._relative_position_bucket(rel, bidirectional, 32, 128)
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("trained", [False, True])
def test_logits_parity_with_transformers(trained):
    """Same weights → same logits (≤ 1e-5, fp32) as T5ForConditionalGeneration's exact (eager) math, with a
    padded encoder row; and the loss through lm_loss (no full logits) equals transformers' labels loss."""
    model = _model(pad_vocab_multiple=64)  # padding rows: dropped by the mapping
    if trained:
        _train_steps(model)
    hf = t5_hf.to_hf(model)
    hf.config._attn_implementation = "eager"
    enc, dec = _ids(2, 30), _ids(2, 25, seed=2)
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 21:] = 0
    with torch.no_grad():
        ours = model.logits(model(enc, dec, encoder_mask=mask))
        out = hf(input_ids=enc, attention_mask=mask, decoder_input_ids=dec)
    assert ours.shape == out.logits.shape == (2, 25, VOCAB_SIZE)
    diff = (ours - out.logits).abs().max().item()
    print(f"\nT5 parity ({'trained' if trained else 'random'}): max|Δlogit| {diff:.3g}, "
          f"logit std {ours.std().item():.3g}")
    assert diff <= TOL and ours.std().item() > 0.05
    labels = _ids(2, 25, seed=3)
    labels[0, :4] = -100
    with torch.no_grad():
        theirs = hf(input_ids=enc, attention_mask=mask, labels=labels).loss
        start = torch.full((2, 1), t5_hf.DECODER_START_ID)
        dec_in = torch.cat([start, labels[:, :-1].clamp_min(0)], 1)
        dec_in[0, 1:5] = t5_hf.DECODER_START_ID  # transformers' _shift_right: -100 → pad (= EOT)
        loss = lm_loss(model(enc, dec_in, encoder_mask=mask), model.lm_head.weight, None, labels,
                       vocab_size=VOCAB_SIZE)
    assert abs(loss.item() - theirs.item()) < 1e-5


def test_native_folder_loads_without_custom_code(tmp_path):
    """save_t5_folder → AutoModelForSeq2SeqLM (no trust_remote_code): logits, generate = gerbil's greedy,
    the special ids; load_t5_folder reads it back exactly."""
    from transformers import AutoModelForSeq2SeqLM

    model = _model(seed=3)
    _train_steps(model, steps=2)
    t5_hf.save_t5_folder(model, tmp_path / "t5", gerbil_meta={"name": "T5Blender-tiny"})
    conf = json.loads((tmp_path / "t5" / "config.json").read_text())
    assert conf["model_type"] == "t5" and "auto_map" not in conf
    assert conf["decoder_start_token_id"] == conf["pad_token_id"] == conf["eos_token_id"] == 50256
    hf = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "t5").eval()
    assert type(hf).__name__ == "T5ForConditionalGeneration"
    enc, dec = _ids(2, 14), _ids(2, 6, seed=4)
    with torch.no_grad():
        ours = model.logits(model(enc, dec))
        assert (ours - hf(input_ids=enc, decoder_input_ids=dec).logits).abs().max().item() <= TOL
        generated = hf.generate(enc, attention_mask=torch.ones_like(enc), max_new_tokens=5, do_sample=False)
        ids = torch.full((2, 1), t5_hf.DECODER_START_ID)
        encoded = model.encode(enc)
        for _ in range(5):
            ids = torch.cat([ids, model.logits(model.decode(ids, encoded))[:, -1:].argmax(-1)], 1)
    assert torch.equal(generated, ids)
    back, meta = t5_hf.load_t5_folder(tmp_path / "t5")
    assert meta["name"] == "T5Blender-tiny" and back.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k


def test_foreign_t5_variants_are_refused():
    cfg = _tiny()
    good = t5_hf.hf_config(cfg).to_dict()
    assert t5_hf.config_from_hf(good).n_params() == cfg.n_params()
    with pytest.raises(GerbilError, match="gated-gelu"):
        t5_hf.config_from_hf({**good, "feed_forward_proj": "relu"})
    with pytest.raises(GerbilError, match="not T5"):
        t5_hf.config_from_hf({**good, "model_type": "gptj"})
    state = t5_hf.to_hf_state_dict(_model())
    state["lm_head.weight"] = state["shared.weight"] + 1
    with pytest.raises(GerbilError, match="untied lm_head"):
        t5_hf.from_hf_state_dict(state, cfg)
    with pytest.raises(GerbilError, match="arch 't5'"):
        t5_hf.hf_config(PRESETS["3.3m"])


# ------------------------------------------------------------------------------------ packing, loss, FLOPs
def test_packed_row_computes_each_example_alone():
    """Two examples in one row (segments) give the hidden states each gives alone, and padding is inert."""
    model = _model(seed=5)
    e1, d1, e2, d2 = _ids(1, 7, seed=6), _ids(1, 5, seed=7), _ids(1, 9, seed=8), _ids(1, 4, seed=9)
    pad = torch.full((1, 3), 50256)
    enc, dec = torch.cat([e1, e2, pad], 1), torch.cat([d1, d2, pad[:, :2]], 1)
    eseg = torch.tensor([[1] * 7 + [2] * 9 + [0] * 3])
    dseg = torch.tensor([[1] * 5 + [2] * 4 + [0] * 2])
    with torch.no_grad():
        packed = model(enc, dec, eseg, dseg)
        alone = torch.cat([model(e1, d1), model(e2, d2)], 1)
    assert torch.isfinite(packed).all()
    assert (packed[:, :9] - alone).abs().max().item() < 1e-5


def test_gradients_reach_every_parameter_once():
    model = _model(seed=7)
    model.train()
    enc, dec, tgt = _ids(2, 10), _ids(2, 6, seed=2), _ids(2, 6, seed=3)
    lm_loss(model(enc, dec), model.lm_head.weight, model.lm_head.bias, tgt, vocab_size=VOCAB_SIZE).backward()
    names = [n for n, _ in model.named_parameters()]
    assert "shared.weight" in names and not any(n.startswith("lm_head") for n in names)  # one tied matrix
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_flops_per_encoder_and_decoder_token():
    cfg = arch_model_config("t5", "24m")
    d, i, ff, V = 256, 256, 576, VOCAB_SIZE
    enc, dec = encdec_flops_per_token(cfg, 1408, 640)
    assert enc == 6 * (6 * (4 * d * i + 3 * d * ff) + 6 * 2 * d * i) + 12 * 6 * 1408 * i
    assert dec == 6 * (6 * (6 * d * i + 3 * d * ff) + d * V) + 12 * 6 * (640 + 1408) * i
    assert flops_per_token(cfg, 2048) == (1408 * enc + 640 * dec) // 2048  # Blender's default split
    assert flops_per_token(cfg, 2048, encoder_len=1024) == (1024 * enc_at(cfg, 1024) + 1024 * dec_at(cfg, 1024)) // 2048
    assert encdec_flops_per_token(cfg, 1408, 640, training=False) == (enc // 3, dec // 3)


def enc_at(cfg, te):
    return encdec_flops_per_token(cfg, te, 2048 - te)[0]


def dec_at(cfg, te):
    return encdec_flops_per_token(cfg, te, 2048 - te)[1]


def test_t5_trains_on_loader_batches():
    """A real EncDecLoader batch: the packed loss equals the mean over the examples computed one by one."""
    from types import SimpleNamespace

    from gerbil.data.encdec_loader import EncDecLoader

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50000, int(n)) for n in rng.integers(3, 60, 40)]
    split = SimpleNamespace(tokens=np.concatenate([np.append(d, 50256) for d in docs]).astype(np.uint16),
                            offsets=np.concatenate([[0], np.cumsum([len(d) + 1 for d in docs])]), n_docs=len(docs))
    b = EncDecLoader(split, 64, 3, objective="blender", seed=1).next_rows(3)
    model = _model(seed=8)
    with torch.no_grad():
        packed = lm_loss(model(b.encoder_ids, b.decoder_ids, b.encoder_segments, b.decoder_segments),
                         model.lm_head.weight, None, b.targets, vocab_size=VOCAB_SIZE)
        total, count = 0.0, 0
        for r in range(3):
            for s in range(1, int(b.decoder_segments[r].max()) + 1):
                e, d = b.encoder_segments[r] == s, b.decoder_segments[r] == s
                t = b.targets[r, d][None]
                n = int((t != -100).sum())
                if n:
                    h = model(b.encoder_ids[r, e][None], b.decoder_ids[r, d][None])
                    total += lm_loss(h, model.lm_head.weight, None, t, vocab_size=VOCAB_SIZE).item() * n
                    count += n
    assert count == int((b.targets != -100).sum()) and abs(packed.item() - total / count) < 1e-5

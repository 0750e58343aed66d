"""The GPT-J model: parameter counts of every ladder preset (docs/reference.md §1), vocabulary padding
(never predicted, never counted), causality, rotary layout, initialization. Logit parity with
transformers' GPTJForCausalLM is in test_export.py."""
from __future__ import annotations

import pytest
import torch

from gerbil.model.config import PRESETS, SIZES, VOCAB_SIZE, ModelConfig, model_config
from gerbil.model.loss import lm_loss
from gerbil.model.model import GPT, apply_rotary, rotary_tables

# docs/reference.md §1 at vocabulary 50,264: total and non-embedding parameters. Published or inferred from
# the published counts to the thousand (±1k); 15m's are given there only approximately (≈14.1M, ≈1.19M).
REFERENCE = {
    "3.3m": (3_317_000, 50_000, 1_000),
    "6.7m": (6_683_000, 199_000, 1_000),
    "15m": (14_100_000, 1_190_000, 10_000),
    "32m": (32_092_000, 6_306_000, 1_000),
    "77m": (76_716_000, 25_196_000, 1_000),
    "104m": (103_747_000, 39_359_000, 1_000),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _meta_model(cfg: ModelConfig) -> GPT:
    """The module structure without allocating or initializing weights (77m/104m in milliseconds)."""
    with torch.device("meta"):
        return GPT(cfg)


def _tiny(**overrides) -> ModelConfig:
    from helpers import tiny_model_config

    return tiny_model_config(**{"rotary_dim": 4, "vocab_size": 97, "seq_len": 32, **overrides})


def test_every_ladder_size_has_a_reference_count():
    assert set(SIZES) == set(PRESETS) == set(REFERENCE)


@pytest.mark.parametrize("size", list(REFERENCE))
def test_param_counts_match_reference(size):
    total, non_emb, tol = REFERENCE[size]
    cfg = PRESETS[size]
    assert cfg.vocab_size == VOCAB_SIZE
    assert abs(cfg.n_params("total") - total) <= tol
    assert abs(cfg.n_params("non_embedding") - non_emb) <= tol
    assert cfg.n_params("embedding") + cfg.n_params("non_embedding") == cfg.n_params("total")
    # the formula is the module: count the real tensors
    model = _meta_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.n_params("total") == model.n_params()


@pytest.mark.parametrize("size", list(REFERENCE))
def test_padding_rows_are_never_counted(size):
    cfg = model_config(size, pad_vocab_multiple=64)
    P, V, d = cfg.padded_vocab_size, cfg.vocab_size, cfg.d_model
    assert P % 64 == 0 and V <= P < V + 64
    model = _meta_model(cfg)
    assert model.wte.weight.shape == (P, d) and model.lm_head.weight.shape == (P, d)
    padding = (P - V) * (2 * d + 1)  # wte rows + head rows + head bias entries
    assert sum(p.numel() for p in model.parameters()) - padding == model.n_params() == PRESETS[size].n_params()
    assert model.n_params("non_embedding") == PRESETS[size].n_params("non_embedding")


def test_padded_logits_never_win():
    cfg = _tiny(pad_vocab_multiple=64)
    assert cfg.padded_vocab_size == 128
    model = GPT(cfg).eval()
    # init leaves the padding rows at zero...
    assert torch.all(model.wte.weight[97:] == 0) and torch.all(model.lm_head.weight[97:] == 0)
    assert torch.all(model.lm_head.bias[97:] == 0)
    with torch.no_grad():  # ...and even a huge padded logit is never produced
        model.lm_head.bias[97:] = 1e4
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.logits(model(idx))
    assert logits.shape == (2, 16, 97)
    assert logits.argmax(-1).max() < 97


def test_padded_model_trains_like_the_unpadded_one():
    """Same real weights, with and without padding: same loss, same gradients on the real rows, and
    the padding rows get no gradient (so they stay zero under AdamW)."""
    padded = GPT(_tiny(pad_vocab_multiple=64))
    plain = GPT(_tiny())
    with torch.no_grad():
        for (n, p), (_, q) in zip(plain.named_parameters(), padded.named_parameters()):
            if p.shape != q.shape:
                q[: p.shape[0]] = p
            else:
                q.copy_(p)
    idx = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for m in (plain, padded):
        loss = lm_loss(m(idx[:, :-1]), m.lm_head.weight, m.lm_head.bias, idx[:, 1:], vocab_size=97)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (n, p), (_, q) in zip(plain.named_parameters(), padded.named_parameters()):
        torch.testing.assert_close(q.grad[: p.shape[0]], p.grad, msg=n)
        assert torch.all(q.grad[p.shape[0]:] == 0), n


def test_forward_shapes_and_causality():
    cfg = _tiny()
    model = GPT(cfg).eval()
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h = model(idx)
        assert h.shape == (2, 20, 32)
        changed = idx.clone()
        changed[:, 12] = (changed[:, 12] + 1) % 97
        h2 = model(changed)
    torch.testing.assert_close(h[:, :12], h2[:, :12])  # the past never sees the future
    assert not torch.allclose(h[:, 12:], h2[:, 12:])


def test_longer_than_seq_len_extends_the_rotary_tables():
    model = GPT(_tiny(seq_len=8)).eval()
    idx = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        long = model(idx)
        short = model(idx[:, :8])
    assert long.shape == (1, 24, 32)
    torch.testing.assert_close(long[:, :8], short)


def test_rotary_is_gptj_interleaved():
    """Pairs (x0, x1), (x2, x3), ... rotate by position·θ_i (GPT-J's rotate_every_two), not the
    half-split (NeoX/LLaMA) layout; dims past rotary_dim pass through."""
    T, hs, rot = 5, 8, 4
    cos, sin = rotary_tables(T, rot)
    x = torch.randn(1, 1, T, hs, generator=torch.Generator().manual_seed(4))
    y = apply_rotary(x, cos, sin, rot)
    theta = 1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot)
    for t in range(T):
        for i in range(rot // 2):
            a, b = x[0, 0, t, 2 * i], x[0, 0, t, 2 * i + 1]
            c, s = torch.cos(t * theta[i]), torch.sin(t * theta[i])
            torch.testing.assert_close(y[0, 0, t, 2 * i], a * c - b * s)
            torch.testing.assert_close(y[0, 0, t, 2 * i + 1], b * c + a * s)
    torch.testing.assert_close(y[..., rot:], x[..., rot:])
    assert torch.equal(y[:, :, 0], x[:, :, 0])  # position 0: no rotation


def test_init_is_seeded_and_scaled():
    a, b = GPT(_tiny(n_layer=8)), GPT(_tiny(n_layer=8))
    a.reset_parameters(torch.Generator().manual_seed(5))
    b.reset_parameters(torch.Generator().manual_seed(5))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    assert torch.all(a.h[0].ln_1.weight == 1) and torch.all(a.h[0].mlp.fc_in.bias == 0)
    std_in = a.h[0].mlp.fc_in.weight.std().item()
    std_out = torch.cat([blk.mlp.fc_out.weight.flatten() for blk in a.h]).std().item()
    assert abs(std_in - 0.02) < 0.003
    assert abs(std_out - 0.02 / 4) < 0.001  # 1/sqrt(2·n_layer) = 1/4 for 8 layers


def test_parameter_names_follow_transformers_gptj():
    names = set(dict(GPT(_tiny(n_layer=1)).named_parameters()))
    assert names == {
        "wte.weight", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.qkv_proj.weight",
        "h.0.attn.out_proj.weight", "h.0.mlp.fc_in.weight", "h.0.mlp.fc_in.bias",
        "h.0.mlp.fc_out.weight", "h.0.mlp.fc_out.bias", "ln_f.weight", "ln_f.bias",
        "lm_head.weight", "lm_head.bias",
    }
    assert not GPT(_tiny()).state_dict().keys() & {"rope_cos", "rope_sin"}  # rebuilt, never saved


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="rotary_dim"):
        ModelConfig(d_model=32, n_head=4, rotary_dim=3)
    with pytest.raises(ValueError, match="rotary_dim"):
        ModelConfig(d_model=32, n_head=4, rotary_dim=16)
    with pytest.raises(ValueError, match="unknown size"):
        model_config("5m")


def test_forward_with_positions_and_mask_equals_separate_rows():
    """One row holding a shared prefix and two suffixes (each attending to the prefix and itself, rotary
    positions continuing from the prefix) gives each suffix exactly its separate row's hidden states —
    the one forward pass evaluation uses (gerbil.eval.scoring)."""
    from gerbil.eval.scoring import tree_mask

    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    prefix, s1, s2 = [5, 6, 7, 8], [9, 10, 11], [12, 13]
    row = torch.tensor([prefix + s1 + s2])
    pos = torch.tensor([list(range(4)) + [4, 5, 6] + [4, 5]])
    seg = torch.tensor([[-1] * 4 + [0] * 3 + [1] * 2])
    with torch.no_grad():
        tree = model(row, positions=pos, attn_mask=tree_mask(seg))[0]
        a = model(torch.tensor([prefix + s1]))[0]
        b = model(torch.tensor([prefix + s2]))[0]
        default = model(row, positions=torch.arange(9)[None])[0]
    torch.testing.assert_close(tree[:7], a, rtol=0, atol=1e-6)
    torch.testing.assert_close(tree[7:], b[4:], rtol=0, atol=1e-6)
    torch.testing.assert_close(default, model(row)[0], rtol=0, atol=0)  # explicit 0..T-1 = the default

"""The chunked head + cross-entropy: same loss and same gradients as the plain full-logits computation,
for every chunking, with masks, ignored targets, vocabulary padding and autocast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gerbil.model.loss import IGNORE_INDEX, lm_loss

B, T, D, V = 3, 11, 16, 97  # deliberately odd sizes: chunks never divide the tokens evenly


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(seed: int = 0, rows: int = V, bias: bool = True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=g, dtype=dtype).requires_grad_()
    weight = (0.3 * torch.randn(rows, D, generator=g, dtype=dtype)).requires_grad_()
    b = (0.1 * torch.randn(rows, generator=g, dtype=dtype)).requires_grad_() if bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[0, :3] = IGNORE_INDEX  # ignored positions
    mask = (torch.rand(B, T, generator=g) > 0.3).float()  # e.g. the prefix of an FIM/MLM example
    return hidden, weight, b, targets, mask


def _grads(loss, *tensors):
    loss.backward()
    out = [t.grad.clone() if t is not None else None for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return out


def _reference(hidden, weight, bias, targets, mask):
    """The definition: mean over positions with mask 1 and target != -100 of -log softmax[target]."""
    logits = hidden.reshape(-1, D) @ weight.t() + (bias if bias is not None else 0)
    y = targets.reshape(-1)
    keep = (y != IGNORE_INDEX) & (mask.reshape(-1) > 0)
    return F.cross_entropy(logits[keep], y[keep])


@pytest.mark.parametrize("chunk_tokens", [1, 5, 16, 4096])
def test_chunked_equals_full_loss_and_gradients(chunk_tokens):
    h, w, b, y, m = _inputs()
    ref = _reference(h, w, b, y, m)
    g_ref = _grads(ref, h, w, b)
    full = lm_loss(h, w, b, y, loss_mask=m, impl="full")
    g_full = _grads(full, h, w, b)
    chunked = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=chunk_tokens)
    g_chunked = _grads(chunked, h, w, b)
    torch.testing.assert_close(full, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked, ref, rtol=1e-6, atol=1e-6)
    for a, c, r in zip(g_full, g_chunked, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(c, r, rtol=1e-5, atol=1e-7)


def test_without_bias_and_without_mask():
    h, w, _, y, _ = _inputs(seed=1, bias=False)
    ones = torch.ones(B, T)
    ref = _reference(h, w, None, y, ones)
    g_ref = _grads(ref, h, w)
    loss = lm_loss(h, w, None, y, chunk_tokens=7)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for a, r in zip(_grads(loss, h, w), g_ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-7)


def test_flat_and_batched_inputs_agree():
    h, w, b, y, m = _inputs(seed=2)
    batched = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8)
    flat = lm_loss(h.reshape(-1, D), w, b, y.reshape(-1), loss_mask=m.reshape(-1), chunk_tokens=8)
    torch.testing.assert_close(batched, flat)


def test_upstream_gradient_scales_the_stored_gradients():
    """backward only rescales what forward computed: (k · loss).backward() must give k × gradients."""
    h, w, b, y, m = _inputs(seed=3)
    g1 = _grads(lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=4), h, w, b)
    g3 = _grads(3.0 * lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=4), h, w, b)
    for a, c in zip(g1, g3):
        torch.testing.assert_close(3.0 * a, c)
    # and as one term of a larger graph (a second loss on the same hidden states)
    loss = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=4) + (h ** 2).mean()
    (gh,) = _grads(loss, h)
    torch.testing.assert_close(gh, g1[0] + 2 * h.detach() / h.numel())


def test_padded_vocabulary_rows_never_win_and_get_no_gradient():
    rows = 128  # V = 97 real rows + 31 padding rows (pad_vocab_multiple = 64)
    h, w, b, y, m = _inputs(seed=4, rows=rows)
    with torch.no_grad():
        b[V:] = 1e4  # padding that would dominate every softmax if it were ever a logit
        w[V:] = 5.0
    for impl in ("chunked", "full"):
        loss = lm_loss(h, w, b, y, loss_mask=m, vocab_size=V, impl=impl, chunk_tokens=6)
        ref = _reference(h, w[:V], b[:V], y, m)
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        gh, gw, gb = _grads(loss, h, w, b)
        assert torch.all(gw[V:] == 0) and torch.all(gb[V:] == 0)
        assert gw[:V].abs().sum() > 0 and gb[:V].abs().sum() > 0


def test_everything_masked_gives_zero_not_nan():
    h, w, b, y, _ = _inputs(seed=5)
    for impl in ("chunked", "full"):
        loss = lm_loss(h, w, b, torch.full_like(y, IGNORE_INDEX), impl=impl)
        assert loss.item() == 0.0
        for g in _grads(loss, h, w, b):
            assert torch.all(g == 0)


def test_frozen_head_and_no_grad():
    h, w, b, y, m = _inputs(seed=6)
    w.requires_grad_(False)
    b.requires_grad_(False)
    ref = _reference(h, w, b, y, m)
    (g_ref,) = _grads(ref, h)
    loss = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=5)
    (gh,) = _grads(loss, h)
    torch.testing.assert_close(gh, g_ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=5), ref.detach())


def test_autocast_bf16_is_close_to_fp32():
    h, w, b, y, m = _inputs(seed=7)
    ref = lm_loss(h, w, b, y, loss_mask=m)
    g_ref = _grads(ref, h, w, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8)
    assert loss.dtype == torch.float32  # the softmax math stays fp32
    grads = _grads(loss, h, w, b)
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)
    for g, r in zip(grads, g_ref):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        assert (g - r).abs().max() < 0.05 * r.abs().max()


def test_unknown_impl_is_refused():
    h, w, b, y, _ = _inputs()
    with pytest.raises(ValueError, match="impl"):
        lm_loss(h, w, b, y, impl="fast")


# ------------------------------------------------------------------------------------ precision at scale
N_BIG, D_BIG, V_BIG = 131_072, 64, 2048  # 64 × 2048 scored tokens: the 6.7m automatic micro-batch
SCALE = 65_536.0  # torch.amp.GradScaler's initial scale (inf in fp16)


@pytest.fixture(scope="module")
def big_case():
    """A micro-batch of 131,072 scored tokens at d_model 64 and a cut vocabulary, with its fp32 gradients
    from plain autograd (chunked only to bound memory; independent of lm_loss)."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N_BIG, D_BIG, generator=g)  # like a LayerNorm output
    w = 0.02 * torch.randn(V_BIG, D_BIG, generator=g)  # the init scale
    b = 0.02 * torch.randn(V_BIG, generator=g)
    y = torch.randint(0, V_BIG, (N_BIG,), generator=g)
    ref = [t.clone().requires_grad_() for t in (h, w, b)]
    for s in range(0, N_BIG, 16_384):
        logits = F.linear(ref[0][s : s + 16_384], ref[1], ref[2])
        (F.cross_entropy(logits, y[s : s + 16_384], reduction="sum") / N_BIG).backward()
    return (h, w, b, y), [t.grad for t in ref]


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 0.01), (torch.bfloat16, 0.02)])
def test_low_precision_gradients_at_131072_tokens_with_loss_scale(big_case, dtype, tol):
    """fp16/bf16 autocast, loss × 65,536 before backward and gradients ÷ 65,536 after (what GradScaler
    does): every gradient within `tol` relative error of fp32, nothing inf/NaN. The previous version
    folded 1/131,072 into the logit gradient before the fp16 cast (underflow: 11–16% error on the head
    weight here, most of it zero at the full vocabulary) and cast the scale 65,536 to fp16 (inf)."""
    (h0, w0, b0, y), ref = big_case
    h, w, b = (t.clone().requires_grad_() for t in (h0, w0, b0))
    with torch.autocast("cpu", dtype=dtype):
        loss = lm_loss(h, w, b, y, chunk_tokens=8192)
    (loss * SCALE).backward()
    errors = {}
    for name, t, r in zip(("hidden", "weight", "bias"), (h, w, b), ref):
        g = t.grad / SCALE
        errors[name] = float((g - r).norm() / r.norm()) if torch.isfinite(g).all() else float("inf")
    assert all(e <= tol for e in errors.values()), f"relative gradient errors {errors} (tolerance {tol})"


# ------------------------------------------------------------------------------------ no gradient work
class _Matmuls(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the output shape of every matmul that reaches the CPU kernels."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("impl", ["chunked", "eager"])
def test_no_grad_computes_the_loss_only(impl):
    """Validation (`evaluate_loss` runs under no_grad) must not pay for the gradient matmuls: exactly one
    head matmul (n, V) per chunk and nothing else of matmul kind, same value as the training path."""
    h, w, b, y, m = _inputs(seed=8)
    with_grad = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl=impl)
    with torch.no_grad(), _Matmuls() as mm:
        value = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl=impl)
    assert [s[1] for s in mm.shapes] == [V] * 5  # 33 tokens in chunks of 8: 5 head matmuls, no (n, d)/(V, d)
    assert not value.requires_grad
    torch.testing.assert_close(value, with_grad.detach(), rtol=1e-6, atol=1e-6)
    # the same when grad mode is on but nothing requires grad (a frozen model scored for its loss)
    frozen = [t.detach() for t in (h, w, b)]
    with _Matmuls() as mm:
        value = lm_loss(*frozen, y, loss_mask=m, chunk_tokens=8, impl=impl)
    assert [s[1] for s in mm.shapes] == [V] * 5
    torch.testing.assert_close(value, with_grad.detach(), rtol=1e-6, atol=1e-6)
    # and the training path does the gradient matmuls (the test can see them)
    with _Matmuls() as mm:
        lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl=impl)
    assert (8, D) in mm.shapes and (V, D) in mm.shapes


# ------------------------------------------------------------------------------------ accumulation, autocast
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_gradient_accumulation_over_micro_batches(dtype):
    """train_step's pattern: several lm_loss calls, each times its share, one backward — gradients are
    the sum of the separate ones; a different head of the same shape in between (as after DDP wraps the
    module) changes nothing: no state survives a call."""
    h1, w, b, y1, m1 = _inputs(seed=9)
    h2, _, _, y2, m2 = _inputs(seed=10)
    other_w, other_b = (t.detach() + 1.0 for t in (w, b))
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else torch.enable_grad
    with ctx():
        lm_loss(h1, other_w, other_b, y1, chunk_tokens=6)  # someone else's head, same shapes
        sep = [_grads(lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=6) * k, h, w, b)
               for h, y, m, k in ((h1, y1, m1, 0.25), (h2, y2, m2, 0.75))]
        total = (lm_loss(h1, w, b, y1, loss_mask=m1, chunk_tokens=6) * 0.25
                 + lm_loss(h2, w, b, y2, loss_mask=m2, chunk_tokens=6) * 0.75)
    total.backward()
    torch.testing.assert_close(h1.grad, sep[0][0])
    torch.testing.assert_close(h2.grad, sep[1][0])
    torch.testing.assert_close(w.grad, sep[0][1] + sep[1][1])
    torch.testing.assert_close(b.grad, sep[0][2] + sep[1][2])
    assert h1.grad.dtype == w.grad.dtype == torch.float32  # the callers' dtypes, not the autocast one


class _TinyLM(torch.nn.Module):
    """Embedding → LayerNorm → head: enough model for a real optimizer step."""

    def __init__(self, vocab: int = 512, d: int = 32):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.ln = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.emb(x))


def test_fp16_grad_scaler_first_step_is_taken():
    """fp16 autocast + torch.amp.GradScaler('cpu') at its initial scale 65,536: the first step is not
    skipped (the previous version cast the scale to fp16 = inf, so every run lost step 1), gradients are
    finite and close to fp32's, the loss is close to fp32's."""
    torch.manual_seed(0)
    x = torch.randint(0, 512, (16, 128))
    y = torch.roll(x, -1, dims=1)
    fp32, fp16 = _TinyLM(), _TinyLM()
    fp16.load_state_dict(fp32.state_dict())
    loss32 = lm_loss(fp32(x), fp32.head.weight, fp32.head.bias, y)
    loss32.backward()
    opt = torch.optim.AdamW(fp16.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.float16):
        loss16 = lm_loss(fp16(x), fp16.head.weight, fp16.head.bias, y)
    scaler.scale(loss16).backward()
    scaler.unscale_(opt)
    for (name, p32), p16 in zip(fp32.named_parameters(), fp16.parameters()):
        assert torch.isfinite(p16.grad).all(), name
        assert (p16.grad - p32.grad).norm() <= 0.01 * p32.grad.norm(), name
    before = fp16.head.weight.detach().clone()
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == scale  # halved after an overflow
    assert not torch.equal(before, fp16.head.weight)  # the step was taken
    assert abs(loss16.item() - loss32.item()) < 5e-3 * loss32.item()


# ------------------------------------------------------------------------------------ the compiled path
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_compiled_equals_eager(dtype):
    """impl="compiled" (inductor on CPU here; the default on CUDA): same loss and gradients as the eager
    chunked loss, with a padded last chunk (33 tokens in chunks of 8), a padded vocabulary, the mask, and
    its own forward-only function under no_grad."""
    rows = 128
    h, w, b, y, m = _inputs(seed=11, rows=rows)
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else torch.enable_grad
    out = {}
    for impl in ("eager", "compiled"):
        with ctx():
            loss = lm_loss(h, w, b, y, loss_mask=m, vocab_size=V, chunk_tokens=8, impl=impl)
        with ctx(), torch.no_grad():
            value = lm_loss(h, w, b, y, loss_mask=m, vocab_size=V, chunk_tokens=8, impl=impl)
        out[impl] = (loss.detach(), value, *_grads(loss, h, w, b))
    tol = {None: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    for name, e, c in zip(("loss", "no_grad loss", "hidden", "weight", "bias"), out["eager"], out["compiled"]):
        assert torch.isfinite(c).all(), name
        assert (c - e).norm() <= tol * e.norm() + 1e-7, name
    assert torch.all(out["compiled"][3][V:] == 0) and torch.all(out["compiled"][4][V:] == 0)
    from gerbil.model import loss as loss_module

    assert "cpu" not in loss_module._COMPILE_FAILED  # it really ran compiled


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    from gerbil.model import loss as loss_module

    def broken(name):
        def fn(*args):
            raise RuntimeError("no compiler here")
        return fn

    monkeypatch.setattr(loss_module, "_compiled", broken)
    monkeypatch.setattr(loss_module, "_COMPILE_FAILED", set())
    h, w, b, y, m = _inputs(seed=12)
    ref = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl="eager")
    g_ref = _grads(ref, h, w, b)
    with caplog.at_level("WARNING", logger="gerbil.model.loss"):
        for _ in range(2):
            loss = lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl="compiled")
            torch.testing.assert_close(loss, ref)
            for g, r in zip(_grads(loss, h, w, b), g_ref):
                torch.testing.assert_close(g, r)
        with torch.no_grad():
            torch.testing.assert_close(lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl="compiled"), ref.detach())
    assert len([r for r in caplog.records if "torch.compile" in r.getMessage()]) == 1


class _Sizes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_memory_is_one_chunk_of_logits(dtype):
    """No op of the chunked loss ever produces more than one chunk's logits (8 × 97 here) or a parameter
    gradient (97 × 16), forward and backward, with or without autocast; the full loss holds all 33 × 97
    logits (the check can see it)."""
    h, w, b, y, m = _inputs(seed=13)
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else torch.enable_grad
    for impl, bound in (("eager", max(8 * V, V * D)), ("full", B * T * V)):
        with ctx(), _Sizes() as sizes:
            lm_loss(h, w, b, y, loss_mask=m, chunk_tokens=8, impl=impl).backward()
        assert sizes.largest == bound, impl

"""lm_loss(impl="triton"), the fused Triton head + cross-entropy: on a CPU run by Triton's interpreter
(TRITON_INTERPRET=1), on a machine with CUDA by the GPU itself — the same loss and gradients as
impl="full" in fp32 at every ladder width, fp16 with the GradScaler's 65,536 at 131,072 scored tokens,
ignored rows, row weights, padded last blocks, no_grad; its one-line errors; and the kernels compiled for
an H100/H200 (sm_90a) by Triton's own compiler and ptxas, which need no GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
# Without CUDA the kernels run under Triton's interpreter, which needs triton's own helpers wrapped for it
# when triton is first imported: tests/conftest.py does that import, before collection.
pytest.importorskip("triton")

from gerbil.errors import GerbilError  # noqa: E402
from gerbil.model import fused_loss  # noqa: E402
from gerbil.model.fused_loss import TritonBlocks, default_blocks, width_blocks  # noqa: E402
from gerbil.model.loss import IGNORE_INDEX, lm_loss  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not CUDA and not fused_loss._stdlib_interpreted(),
                                 reason="triton was imported before TRITON_INTERPRET=1 could be set "
                                        "(tests/conftest.py)")]

DEV = torch.device("cuda" if CUDA else "cpu")
LADDER = (32, 64, 128, 256, 512, 640)
SMALL = TritonBlocks(16, 32, 32, 16, vocab_splits=2)  # several blocks each way at tiny sizes, two splits


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """Triton's CPU interpreter for each test here (none on a machine with CUDA: the real kernels run)."""
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _case(n: int, d: int, v: int, seed: int = 0, rows: int | None = None, dtype=torch.float32):
    """hidden (n, d), head (rows ≥ v, d) + bias, targets with ignored positions, row weights {0, .5, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype)
    w = 0.3 * torch.randn(rows or v, d, generator=g, dtype=dtype) / d ** 0.25
    b = 0.1 * torch.randn(rows or v, generator=g, dtype=dtype)
    y = torch.randint(0, v, (n,), generator=g)
    y[::7] = IGNORE_INDEX
    mask = torch.tensor([0.0, 0.5, 1.0, 2.0])[torch.randint(0, 4, (n,), generator=g)]
    return [t.to(DEV) for t in (h, w, b, y, mask)]


def _loss_and_grads(impl: str, h, w, b, y, mask, scale: float = 1.0, **kw):
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    loss = lm_loss(*leaves, y, loss_mask=mask, impl=impl, **kw)
    (loss * scale).backward()
    return loss.detach(), [t.grad / scale for t in leaves]


def _rel(a: torch.Tensor, r: torch.Tensor) -> float:
    return float((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("d", LADDER)
def test_equals_full_in_fp32_at_every_width(d):
    """Loss and the three gradients within 1e-5 relative of impl="full" (37 rows: a padded last token
    block; 97 classes: a padded last vocabulary block; ignored rows; weights 0/0.5/1/2; two token splits)."""
    h, w, b, y, mask = _case(37, d, 97, seed=d)
    ref, g_ref = _loss_and_grads("full", h, w, b, y, mask)
    loss, grads = _loss_and_grads("triton", h, w, b, y, mask, triton_blocks=SMALL)
    assert _rel(loss, ref) <= 1e-5
    for name, g, r in zip(("hidden", "weight", "bias"), grads, g_ref):
        assert g.dtype == torch.float32 and _rel(g, r) <= 1e-5, (name, _rel(g, r))
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_default_blocks_and_no_bias_and_padded_vocabulary():
    """The default (width-chosen) blocks; no bias; padded head rows that would win every softmax if they
    were ever a logit get no gradient (vocab_size); a frozen head still gives the hidden gradient."""
    h, w, _, y, mask = _case(50, 64, 90, seed=1, rows=128)
    with torch.no_grad():
        w[90:] = 50.0
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = lm_loss(hh, ww, None, y, loss_mask=mask, vocab_size=90, impl="triton")
    loss.backward()
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = lm_loss(hr, wr, None, y, loss_mask=mask, vocab_size=90, impl="full")
    ref.backward()
    assert _rel(loss.detach(), ref.detach()) <= 1e-5
    assert _rel(hh.grad, hr.grad) <= 1e-5 and _rel(ww.grad, wr.grad) <= 1e-5
    assert torch.all(ww.grad[90:] == 0)
    frozen = lm_loss(h.clone().requires_grad_(), w, None, y, loss_mask=mask, vocab_size=90, impl="triton")
    torch.testing.assert_close(frozen.detach(), ref.detach(), rtol=1e-5, atol=1e-6)


def test_no_grad_runs_the_forward_pass_only(monkeypatch):
    """Under no_grad (validation) and with nothing requiring grad: the same value, no gradient buffers,
    the vocabulary pass never launched."""
    h, w, b, y, mask = _case(40, 32, 70, seed=2)
    ref = lm_loss(h, w, b, y, loss_mask=mask, impl="full")

    def refuse(*a, **k):
        raise AssertionError("the gradient pass ran under no_grad")

    monkeypatch.setattr(fused_loss, "_launch_vocab_pass", refuse)
    trainable = [t.clone().requires_grad_() for t in (h, w, b)]
    for grad_mode, args in ((False, trainable), (True, [h, w, b])):  # no_grad; nothing requires grad
        with torch.set_grad_enabled(grad_mode):
            value = lm_loss(*args, y, loss_mask=mask, impl="triton", triton_blocks=SMALL)
        assert not value.requires_grad
        torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-6)


def test_upstream_gradient_scales_and_accumulates():
    """backward multiplies the stored gradients by grad_out / Σw: (3·loss) gives 3× the gradients, and two
    calls with one backward (gradient accumulation) give the sum; bitwise the same on a second run."""
    h, w, b, y, mask = _case(33, 32, 50, seed=3)
    _, g1 = _loss_and_grads("triton", h, w, b, y, mask, triton_blocks=SMALL)
    _, g1_again = _loss_and_grads("triton", h, w, b, y, mask, triton_blocks=SMALL)
    leaves = [t.clone().requires_grad_() for t in (h, w, b)]
    (3.0 * lm_loss(*leaves, y, loss_mask=mask, impl="triton", triton_blocks=SMALL)
     + lm_loss(*leaves, y, loss_mask=mask, impl="triton", triton_blocks=SMALL)).backward()
    for a, a2, t in zip(g1, g1_again, leaves):
        assert torch.equal(a, a2)  # no atomics: deterministic
        torch.testing.assert_close(t.grad, 4.0 * a)


def test_everything_ignored_and_empty_give_zero_not_nan():
    h, w, b, y, _ = _case(20, 32, 40, seed=4)
    for rows in (20, 0):
        loss, grads = _loss_and_grads("triton", h[:rows], w, b, torch.full_like(y[:rows], IGNORE_INDEX), None)
        assert loss.item() == 0.0
        assert all(torch.all(g == 0) for g in grads)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_autocast_matches_fp32(dtype, tol):
    """Autocast: the head in fp16/bf16 (bf16 dots upcast under the interpreter, after the rounding),
    softmax math in fp32, gradients in the callers' fp32 — close to the fp32 result."""
    h, w, b, y, mask = _case(64, 64, 200, seed=5)
    ref, g_ref = _loss_and_grads("full", h, w, b, y, mask)
    with torch.autocast(DEV.type, dtype=dtype):
        loss, grads = _loss_and_grads("triton", h, w, b, y, mask, triton_blocks=SMALL)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) <= tol * ref.item()
    for g, r in zip(grads, g_ref):
        assert g.dtype == torch.float32 and _rel(g, r) <= 5 * tol


# ------------------------------------------------------------------------------------ precision at scale
N_SCORED, N_IGNORED, D_BIG, V_BIG = 131_072, 1_000, 64, 1024
SCALE = 65_536.0  # torch.amp.GradScaler's initial scale (inf in fp16)


def test_fp16_with_loss_scale_at_131072_scored_tokens():
    """fp16 autocast, loss × 65,536 before backward and gradients ÷ 65,536 after (what GradScaler does),
    131,072 scored tokens with row weights 0.5/1/2 plus 1,000 ignored rows (132,072 rows: a padded last
    block), d 64, a vocabulary cut to 1,024 for the interpreter's sake: every gradient within 1% of the
    fp32 one (plain autograd, chunked to bound memory)."""
    g = torch.Generator().manual_seed(0)
    n = N_SCORED + N_IGNORED
    h = torch.randn(n, D_BIG, generator=g)
    w = 0.02 * torch.randn(V_BIG, D_BIG, generator=g)
    b = 0.02 * torch.randn(V_BIG, generator=g)
    y = torch.randint(0, V_BIG, (n,), generator=g)
    y[torch.randperm(n, generator=g)[:N_IGNORED]] = IGNORE_INDEX
    mask = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, (n,), generator=g)]  # row weights
    row_w = mask * (y != IGNORE_INDEX)
    ref = [t.clone().requires_grad_() for t in (h, w, b)]
    for s in range(0, n, 16_384):
        sl = slice(s, s + 16_384)
        per_row = F.cross_entropy(F.linear(ref[0][sl], ref[1], ref[2]), y[sl].clamp_min(0), reduction="none")
        ((per_row * row_w[sl]).sum() / row_w.sum()).backward()
    big = None if CUDA else TritonBlocks(1024, 512, 512, 1024)  # the interpreter's cost is per block
    with torch.autocast(DEV.type, dtype=torch.float16):
        loss, grads = _loss_and_grads("triton", *(t.to(DEV) for t in (h, w, b, y, mask)), scale=SCALE,
                                      triton_blocks=big)
    grads = [gr.cpu() for gr in grads]
    errors = {name: _rel(gr, r.grad) if torch.isfinite(gr).all() else float("inf")
              for name, gr, r in zip(("hidden", "weight", "bias"), grads, ref)}
    assert all(e <= 0.01 for e in errors.values()), f"relative gradient errors {errors}"
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------ errors and blocks
def _one_line_error(match: str, *args, **kw):
    with pytest.raises(GerbilError, match=match) as e:
        lm_loss(*args, impl="triton", **kw)
    assert "\n" not in str(e.value)


def test_one_line_errors_never_a_silent_fallback(monkeypatch):
    h, w, b, y, _ = _case(8, 32, 20)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _one_line_error("runs on CUDA", *(t.cpu() for t in (h, w, b, y)))  # CPU tensors, no interpreter
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    _one_line_error("widths up to 640", torch.zeros(4, 768, device=DEV), torch.zeros(20, 768, device=DEV), None,
                    y[:4])
    with pytest.raises(GerbilError, match="power of two"):
        TritonBlocks(16, 24, 16, 16)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    _one_line_error("needs the triton package", h, w, b, y)


def test_width_blocks_and_default_blocks_cover_the_ladder():
    """Every ladder width is covered by two power-of-two column blocks without padding (640 = 512 + 128)
    and has default blocks in bf16, fp16 and fp32."""
    assert width_blocks(640) == (512, 128) and width_blocks(64) == (64, 0) and width_blocks(96) == (64, 32)
    for d in LADDER:
        da, db = width_blocks(d)
        assert da + db == d
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            assert default_blocks(d, dtype) is not None, (d, dtype)
    assert default_blocks(768, torch.bfloat16) is None


# ------------------------------------------------------------------------------------ the GPU's code
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    """The default blocks at d 64 (6.7m) and 640 (104m, not a power of two) compile for an H100/H200 with
    Triton's compiler and its bundled ptxas — no GPU needed — with no register spills and shared memory
    within the SM's 227 KB: what the interpreter cannot check (it runs the Python, not the generated code).
    In a fresh process: this one's triton has its helpers wrapped for the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(fused_loss.__file__).parents[2]), env.get("PYTHONPATH")]))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_compile_check.py"
    out = tmp_path / "compile.json"
    p = subprocess.run([sys.executable, str(script), "--widths", "64,640", "--json", str(out)], capture_output=True,
                       text=True, env=env, timeout=600)
    rows = json.loads(out.read_text()) if out.exists() else []
    if any("ptxas" in r.get("error", "").lower() for r in rows):
        pytest.skip(f"no usable ptxas here: {rows}")
    assert p.returncode == 0 and len(rows) == 4, p.stdout + p.stderr
    for r in rows:
        assert r["fits"] and r["spill_bytes"] == 0 and r["shared"] <= 227 * 1024, r

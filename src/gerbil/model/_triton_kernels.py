"""The two Triton kernels of the fused head + cross-entropy (`gerbil.model.fused_loss` launches them).

Imported only when `impl="triton"` runs: it needs the `triton` package. The kernel bodies are plain
functions here and are wrapped by `triton.jit` in `build()` at first use, once per mode: `triton.jit`
decides at wrapping time whether to compile for the GPU or to run under the CPU interpreter
(`TRITON_INTERPRET=1`), so a test can set that variable before its first call without affecting other
tests or a later GPU run in the same process. (No `from __future__ import annotations` in this module:
the interpreter recognises `tl.constexpr` parameters by their evaluated annotations.)

Shapes. H (N, D) hidden rows and W (V, D) head rows in the compute dtype (bf16/fp16/fp32), Bias (V,) in
the compute dtype, Y (N,) int64 targets in [0, V), RowW (N,) fp32 row weights (0 = ignored). The width D
is covered by two power-of-two column blocks, DA (the largest power of two ≤ D) and DB (the next power of
two ≥ D − DA, or 0): 640 = 512 + 128, 96 = 64 + 32, with no padding at any ladder width; columns ≥ D are
masked to 0.

Precision. Every dot takes compute-dtype operands and accumulates in fp32; logits, log-sum-exp and the
softmax are fp32 in registers; the logit gradient g = w·(softmax − one_hot) ∈ [−1, 1] is cast to the
compute dtype only as a dot operand; the dh / dW accumulators and the bias-gradient sum are fp32 in
registers and are written once, in fp32, without any scaling (the loss's 1/Σw and the GradScaler's factor
are applied later, in fp32, by the caller). Under the interpreter `tl.dot` on bf16 operands returns garbage
(they are stored as uint16 there), so with UPCAST the operands are converted to fp32 just before each dot
— after the rounding to the compute dtype, so the CPU tests still see the GPU's rounding of g.
"""
import triton
import triton.language as tl


def _token_pass(H, W, Bias, Y, RowW, LSE, RowLoss, DH, N, V, D, stride_h, stride_w, stride_dh,
                HAS_BIAS: tl.constexpr, COMPUTE_DH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                DA: tl.constexpr, DB: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program per block of BLOCK_N token rows. Pass 1 over the vocabulary in blocks of BLOCK_V:
    online log-sum-exp and the target's logit → LSE (N,), RowLoss (N,) = lse − logit[target] (fp32,
    unweighted). Pass 2 (COMPUTE_DH): recompute each logit block and accumulate
    DH (N, D) fp32 = Σ_v w·(softmax − one_hot)[:, v] · W[v] — the logits never reach global memory."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    ka = tl.arange(0, DA)
    h_a = tl.load(H + rows64[:, None] * stride_h + ka[None, :], mask=rmask[:, None] & (ka[None, :] < D), other=0.0)
    h_a = h_a.to(tl.float32) if UPCAST else h_a
    if DB > 0:
        kb = DA + tl.arange(0, DB)
        h_b = tl.load(H + rows64[:, None] * stride_h + kb[None, :], mask=rmask[:, None] & (kb[None, :] < D),
                      other=0.0)
        h_b = h_b.to(tl.float32) if UPCAST else h_b
    y = tl.load(Y + rows, mask=rmask, other=0).to(tl.int32)  # < V < 2**31: 32-bit compares per logit
    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)  # running max
    s_i = tl.zeros([BLOCK_N], tl.float32)  # running Σ exp(logit − max)
    t_i = tl.zeros([BLOCK_N], tl.float32)  # the target's logit
    for sweep in tl.static_range(2 if COMPUTE_DH else 1):  # unrolled: one copy of the logit code
        if sweep == 1:
            lse = m_i + tl.log(s_i)
            wr = tl.load(RowW + rows, mask=rmask, other=0.0)
            acc_a = tl.zeros([BLOCK_N, DA], tl.float32)  # dh
            if DB > 0:
                acc_b = tl.zeros([BLOCK_N, DB], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            cmask = cols < V
            cols64 = cols.to(tl.int64)
            w_a = tl.load(W + cols64[:, None] * stride_w + ka[None, :], mask=cmask[:, None] & (ka[None, :] < D),
                          other=0.0)
            w_a = w_a.to(tl.float32) if UPCAST else w_a
            logits = tl.dot(h_a, tl.trans(w_a), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_V) fp32
            if DB > 0:
                w_b = tl.load(W + cols64[:, None] * stride_w + kb[None, :],
                              mask=cmask[:, None] & (kb[None, :] < D), other=0.0)
                w_b = w_b.to(tl.float32) if UPCAST else w_b
                logits = tl.dot(h_b, tl.trans(w_b), logits, input_precision=DOT_PRECISION)
            if HAS_BIAS:
                logits += tl.load(Bias + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            if sweep == 0:  # pass 1: online log-sum-exp, the target's logit
                logits = tl.where(cmask[None, :], logits, float("-inf"))
                t_i += tl.sum(tl.where(cols[None, :] == y[:, None], logits, 0.0), axis=1)
                m_new = tl.maximum(m_i, tl.max(logits, axis=1))
                s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(logits - m_new[:, None]), axis=1)
                m_i = m_new
            else:  # pass 2: dh += w·(softmax − one_hot) · W
                p = tl.exp(logits - lse[:, None])  # softmax, fp32, ≤ 1 for real rows
                g = tl.where(cols[None, :] == y[:, None], p - 1.0, p) * wr[:, None]
                g = tl.where(rmask[:, None] & cmask[None, :], g, 0.0)  # padding rows/columns: exactly 0
                g_low = g.to(W.dtype.element_ty)  # the dot operand: [−1, 1], safe in fp16/bf16
                g_low = g_low.to(tl.float32) if UPCAST else g_low
                acc_a = tl.dot(g_low, w_a, acc_a, input_precision=DOT_PRECISION)
                if DB > 0:
                    acc_b = tl.dot(g_low, w_b, acc_b, input_precision=DOT_PRECISION)
    lse = m_i + tl.log(s_i)
    tl.store(LSE + rows, lse, mask=rmask)
    tl.store(RowLoss + rows, lse - t_i, mask=rmask)
    if COMPUTE_DH:
        tl.store(DH + rows64[:, None] * stride_dh + ka[None, :], acc_a, mask=rmask[:, None] & (ka[None, :] < D))
        if DB > 0:
            tl.store(DH + rows64[:, None] * stride_dh + kb[None, :], acc_b, mask=rmask[:, None] & (kb[None, :] < D))


def _vocab_pass(H, W, Bias, Y, RowW, LSE, DW, DBias, N, V, D, rows_per_split, stride_h, stride_w,
                HAS_BIAS: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr,
                DA: tl.constexpr, DB: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One program per (block of BLOCK_V vocabulary rows, split of the tokens): recompute the logit blocks
    of its rows against every token block of its split (in blocks of BLOCK_N) from the LSE of the token
    pass, and accumulate DW[split] (V, D) fp32 = Σ_i w_i·(softmax − one_hot)[i, v] · H[i] and
    DBias[split] (V,) fp32 = Σ_i w_i·(softmax − one_hot)[i, v] in registers; each program writes its own
    rows once — no atomics, deterministic. The caller sums the splits."""
    pid_v = tl.program_id(0)
    pid_s = tl.program_id(1)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < V
    cols64 = cols.to(tl.int64)
    ka = tl.arange(0, DA)
    w_a = tl.load(W + cols64[:, None] * stride_w + ka[None, :], mask=cmask[:, None] & (ka[None, :] < D), other=0.0)
    w_a = w_a.to(tl.float32) if UPCAST else w_a
    acc_a = tl.zeros([BLOCK_V, DA], tl.float32)
    if DB > 0:
        kb = DA + tl.arange(0, DB)
        w_b = tl.load(W + cols64[:, None] * stride_w + kb[None, :], mask=cmask[:, None] & (kb[None, :] < D),
                      other=0.0)
        w_b = w_b.to(tl.float32) if UPCAST else w_b
        acc_b = tl.zeros([BLOCK_V, DB], tl.float32)
    if HAS_BIAS:
        bias = tl.load(Bias + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_bias = tl.zeros([BLOCK_V], tl.float32)
    n_start = pid_s * rows_per_split
    n_end = tl.minimum(N, n_start + rows_per_split)
    for n0 in range(n_start, n_end, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        rmask = rows < n_end
        rows64 = rows.to(tl.int64)
        h_a = tl.load(H + rows64[:, None] * stride_h + ka[None, :], mask=rmask[:, None] & (ka[None, :] < D),
                      other=0.0)
        h_a = h_a.to(tl.float32) if UPCAST else h_a
        logits = tl.dot(h_a, tl.trans(w_a), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_V) fp32
        if DB > 0:
            h_b = tl.load(H + rows64[:, None] * stride_h + kb[None, :], mask=rmask[:, None] & (kb[None, :] < D),
                          other=0.0)
            h_b = h_b.to(tl.float32) if UPCAST else h_b
            logits = tl.dot(h_b, tl.trans(w_b), logits, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            logits += bias[None, :]
        y = tl.load(Y + rows, mask=rmask, other=0).to(tl.int32)  # < V < 2**31: 32-bit compares per logit
        lse = tl.load(LSE + rows, mask=rmask, other=0.0)
        wr = tl.load(RowW + rows, mask=rmask, other=0.0)
        p = tl.exp(logits - lse[:, None])
        g = tl.where(cols[None, :] == y[:, None], p - 1.0, p) * wr[:, None]
        g = tl.where(rmask[:, None] & cmask[None, :], g, 0.0)  # (BLOCK_N, BLOCK_V) fp32
        acc_bias += tl.sum(g, axis=0)  # the bias gradient never leaves registers before the final store
        g_t = tl.trans(g.to(W.dtype.element_ty))  # (BLOCK_V, BLOCK_N) dot operand
        g_t = g_t.to(tl.float32) if UPCAST else g_t
        acc_a = tl.dot(g_t, h_a, acc_a, input_precision=DOT_PRECISION)
        if DB > 0:
            acc_b = tl.dot(g_t, h_b, acc_b, input_precision=DOT_PRECISION)
    out = DW + pid_s.to(tl.int64) * V * D
    tl.store(out + cols64[:, None] * D + ka[None, :], acc_a, mask=cmask[:, None] & (ka[None, :] < D))
    if DB > 0:
        tl.store(out + cols64[:, None] * D + kb[None, :], acc_b, mask=cmask[:, None] & (kb[None, :] < D))
    if HAS_BIAS:
        tl.store(DBias + pid_s.to(tl.int64) * V + cols, acc_bias, mask=cmask)


def build():
    """(token_pass, vocab_pass) wrapped by `triton.jit` in the mode TRITON_INTERPRET selects now."""
    return triton.jit(_token_pass), triton.jit(_vocab_pass)

"""Head + cross-entropy throughput: `lm_loss` (forward + backward) against the previous chunked loss.

    python benchmarks/loss_throughput.py                      # CPU, 6.7m shapes: d 64, vocab 50,264, 8,192 tokens
    python benchmarks/loss_throughput.py --chunk 4096 --rounds 7
    python benchmarks/loss_throughput.py --device cuda --tokens 131072 --chunk 4096
    python benchmarks/loss_throughput.py --triton --tokens 1024 --vocab 4096 --no-memory --low-precision fp16

Variants: `previous` (the chunked loss as of commit 5a00a8e, copied below unchanged so the comparison
survives later edits), `chunked` (today's default: compiled per chunk on CUDA, eager on CPU), `eager`,
`compiled`, `triton` (the fused Triton kernels, gerbil/model/fused_loss.py: on CUDA when triton is
installed; on a CPU only with --triton, under Triton's interpreter — a correctness run, hundreds of times
slower than the others, so use small --tokens/--vocab) and optionally `full` (plain logits; --full, needs
N × V × 8 bytes). All variants run in the
same process, alternated round by round; reported is the median time per variant → tokens/s and the ratio
to `previous` at the same precision. Compilation happens in warm-up and is not timed.

Peak memory: CPU — each variant runs once more in a fresh subprocess, after a warm-up step the kernel's
peak-RSS counter is reset (/proc/self/clear_refs = 5) and the growth of VmHWM over the RSS before the
step is reported (tracemalloc does not see torch's allocations). CUDA — torch.cuda.max_memory_allocated
over the step, minus the memory allocated before it.

Lines "fp32 eval": forward only under torch.no_grad() (validation), where the previous loss still
computed the gradients.

Gradient difference: max over hidden / head weight / head bias of ‖g − g_ref‖ / ‖g_ref‖, where g_ref is
`previous` in fp32; for the bf16/fp16 lines that is the error against fp32.
Not a test: numbers depend on the machine and its load (the load average is printed); quote ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------ the previous loss
class _PreviousChunkedLinearCrossEntropy(torch.autograd.Function):
    """src/gerbil/model/loss.py at commit 5a00a8e, unchanged (the baseline)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, chunk_tokens: int):
        N = hidden.shape[0]
        denom = weights.sum().clamp_min(1.0)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        g_hidden = torch.empty_like(hidden) if need_grad else None
        g_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        g_bias = torch.zeros(bias.shape, dtype=torch.float32, device=weight.device) if (need_grad and bias is not None) else None
        for s in range(0, N, chunk_tokens):
            h = hidden[s : s + chunk_tokens]
            y = targets[s : s + chunk_tokens]
            w = weights[s : s + chunk_tokens]
            logits = F.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            y_safe = y.clamp_min(0)
            tgt = logits.gather(1, y_safe[:, None]).squeeze(1)
            loss_sum += ((lse - tgt) * w).sum()
            if need_grad:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(len(y), device=y.device), y_safe] -= 1.0
                probs.mul_((w / denom)[:, None])
                g = probs.to(h.dtype)
                g_hidden[s : s + chunk_tokens] = g @ weight
                g_weight += (g.t() @ h).float()
                if g_bias is not None:
                    g_bias += probs.sum(0)
        ctx.save_for_backward(g_hidden, g_weight, g_bias)
        ctx.has_bias = bias is not None
        return loss_sum / denom

    @staticmethod
    def backward(ctx, grad_out):
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        gh = g_hidden * grad_out.to(g_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = (g_weight * grad_out) if ctx.needs_input_grad[1] else None
        gb = (g_bias * grad_out) if (ctx.has_bias and ctx.needs_input_grad[2]) else None
        return gh, gw, gb, None, None, None


def previous_lm_loss(hidden, weight, bias, targets, chunk_tokens: int = 4096):
    h = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1)
    w = (y != -100).float()
    if torch.is_autocast_enabled(h.device.type):
        dt = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        with torch.autocast(h.device.type, enabled=False):
            return _PreviousChunkedLinearCrossEntropy.apply(h, weight, bias, y, w, chunk_tokens)
    return _PreviousChunkedLinearCrossEntropy.apply(h, weight, bias, y, w, chunk_tokens)


# ------------------------------------------------------------------------------------ one step
def make_inputs(n: int, d: int, vocab: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)  # like the final LayerNorm's output
    w = 0.02 * torch.randn(vocab, d, generator=g)  # the head at init
    b = torch.zeros(vocab)
    y = torch.randint(0, vocab, (n,), generator=g)
    return [t.to(device) for t in (h, w, b, y)]


def make_step(variant: str, precision: str, inputs, chunk: int):
    from gerbil.model.loss import lm_loss

    h0, w0, b0, y = inputs
    params = [t.clone().requires_grad_() for t in (h0, w0, b0)]
    dt = PRECISIONS[precision.removesuffix(" eval")]
    dev = h0.device.type
    train = not precision.endswith(" eval")

    def step():
        h, w, b = params
        with torch.autocast(dev, dtype=dt or torch.float32, enabled=dt is not None), torch.set_grad_enabled(train):
            if variant == "previous":
                loss = previous_lm_loss(h, w, b, y, chunk_tokens=chunk)
            else:
                loss = lm_loss(h, w, b, y, chunk_tokens=chunk, impl=variant)
        if not train:  # validation: evaluate_loss runs lm_loss under no_grad
            return loss, None
        loss.backward()
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        return loss.detach(), grads

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_memory_mb(variant: str, precision: str, args) -> float:
    """Peak memory of one step beyond what existed before it (see the module docstring)."""
    device = torch.device(args.device)
    inputs = make_inputs(args.tokens, args.d_model, args.vocab, device)
    step = make_step(variant, precision, inputs, args.chunk)
    step()  # warm-up: compilation, lazy init
    _sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_kb("VmRSS")
    step()
    return (_rss_kb("VmHWM") - base) / 1024


def _peak_in_subprocess(variant: str, precision: str, args) -> float | None:
    cmd = [sys.executable, __file__, "--_peak", variant, precision, "--device", args.device,
           "--tokens", str(args.tokens), "--d-model", str(args.d_model), "--vocab", str(args.vocab),
           "--chunk", str(args.chunk), "--threads", str(args.threads)]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_mb"]
    except (subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError) as e:
        print(f"  (peak memory of {variant}/{precision} not measured: {e})", file=sys.stderr)
        return None


def _triton_runs(device: torch.device, forced_on_cpu: bool) -> bool:
    """The triton variant runs on CUDA with triton installed, on a CPU only when asked (--triton)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or forced_on_cpu


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--vocab", type=int, default=50_264)
    p.add_argument("--chunk", type=int, default=1024, help="chunk_tokens (training uses 1024 on CPU, 4096 on CUDA)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--full", action="store_true", help="also the plain full-logits loss (fp32)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory subprocesses")
    p.add_argument("--low-precision", default="bf16,fp16", help="autocast lines to add ('' for none)")
    p.add_argument("--triton", action="store_true", help="also the triton loss on a CPU (Triton's interpreter)")
    p.add_argument("--_peak", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.triton and args.device == "cpu":  # before anything imports triton (it wraps its helpers then)
        os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(args.threads)
    if args._peak:
        print(json.dumps({"peak_mb": peak_memory_mb(*args._peak, args)}))
        return

    device = torch.device(args.device)
    inputs = make_inputs(args.tokens, args.d_model, args.vocab, device)
    fused = ["triton"] if _triton_runs(device, args.triton) else []
    runs = [(v, "fp32") for v in ("previous", "chunked", "eager", "compiled", *fused)]
    if args.full:
        runs.append(("full", "fp32"))
    for prec in filter(None, args.low_precision.split(",")):
        runs += [(v, prec) for v in ("previous", "chunked", "compiled", *fused)]
    runs += [(v, "fp32 eval") for v in ("previous", "chunked", *fused)]  # forward only, under no_grad
    steps = {r: make_step(*r, inputs, args.chunk) for r in runs}
    grads = {}
    for r, step in steps.items():  # warm-up (compiles), and the gradients for the comparison
        step()
        grads[r] = step()[1]
    times = {r: [] for r in runs}
    for _ in range(args.rounds):
        for r, step in steps.items():  # alternated: load changes hit every variant alike
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[r].append(time.perf_counter() - t0)

    ref = grads[("previous", "fp32")]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
          f"{args.tokens} tokens, d_model {args.d_model}, vocab {args.vocab}, chunk {args.chunk}; "
          f"median of {args.rounds} alternated rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'variant':10s} {'precision':9s} {'tokens/s':>10s} {'vs previous':>11s} {'peak MB':>8s} "
          f"{'max rel grad diff vs previous fp32':>34s}")
    for r in runs:
        med = statistics.median(times[r])
        base = statistics.median(times[("previous", r[1])])
        peak = None if args.no_memory else _peak_in_subprocess(*r, args)
        diff = "-" if grads[r] is None else f"{max(_rel(g, g0) for g, g0 in zip(grads[r], ref)):.2e}"
        print(f"{r[0]:10s} {r[1]:9s} {args.tokens / med:10.0f} {base / med:10.2f}x "
              f"{'-' if peak is None else f'{peak:8.0f}':>8s} {diff:>34s}", flush=True)


if __name__ == "__main__":
    main()

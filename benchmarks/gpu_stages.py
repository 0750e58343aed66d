"""The stages of the device check (benchmarks/gpu_check.py runs each in its own process):

    python3 benchmarks/gpu_stages.py STAGE --out DIR [--smoke] [--budget SECONDS] [stage options]

Every measured thing is printed as soon as it exists, as one line `{"record": {...}}` (the check relays
it and rewrites its JSON), so a stage killed by the deadline loses nothing it already measured. Inside a
stage every model runs in its own try/except: an error is a record (`"error": one line`), never the end.

Stages: device (facts), loss (head + cross-entropy kernels at 6.7m — and 77m — shapes: time, peak memory,
gradient error vs an fp32 reference, the Triton kernels' compiled code), train (gerbil's real training
loop vs transformers vs a plain compiled GPT-J), sdpa (attention backends by head_dim), parity (gerbil vs
transformers loss on the same weights), memory (104m at context 2048 in fp16), eval (gerbil vs lm-eval),
pytest (the `gpu`-marked tests). --smoke: tiny shapes on the CPU (checks this script, not a device).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def emit(record: dict) -> None:
    """One measured thing, one line, now."""
    print(json.dumps({"record": record}, default=str), flush=True)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


class Budget:
    """The seconds this stage may still use (the check's deadline minus what it has used)."""

    def __init__(self, seconds: float):
        self.end = time.time() + seconds

    def left(self) -> float:
        return self.end - time.time()


def _device(smoke: bool):
    import torch

    return torch.device("cpu" if smoke else "cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _peak_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _version(pkg: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------ device
def stage_device(args, budget: Budget) -> None:
    import torch

    facts = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
             "triton": _version("triton"), "transformers": _version("transformers"), "lm_eval": _version("lm-eval"),
             "cuda_available": torch.cuda.is_available()}
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        facts["gerbil_git"] = sha.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        facts["gerbil_git"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                     capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported(),
                     l2_cache_mib=round(getattr(p, "L2_cache_size", 0) / 2**20, 1) or None,
                     cudnn=torch.backends.cudnn.version(),
                     sdpa_enabled={"flash": torch.backends.cuda.flash_sdp_enabled(),
                                   "efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                   "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                                   "math": torch.backends.cuda.math_sdp_enabled()})
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            facts["nvidia_smi"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            facts["nvidia_smi"] = None
    emit({"facts": facts})


# ------------------------------------------------------------------------------------ loss kernels
def _loss_inputs(n: int, d: int, vocab: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g)  # like the final LayerNorm's output
    w = 0.02 * torch.randn(vocab, d, generator=g)  # the head at init
    b = 0.02 * torch.randn(vocab, generator=g)
    y = torch.randint(0, vocab, (n,), generator=g)
    return [t.to(device) for t in (h, w, b, y)]


def _loss_run(impl: str, inputs, dtype, scale: float = 1.0, blocks=None):
    """One forward + backward of lm_loss; returns (loss, [grad hidden, grad weight, grad bias] ÷ scale)."""
    import torch

    from gerbil.model.loss import lm_loss

    h0, w0, b0, y = inputs
    leaves = [t.clone().requires_grad_() for t in (h0, w0, b0)]
    dev = h0.device.type
    with torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = lm_loss(*leaves, y, impl=impl, chunk_tokens=4096, triton_blocks=blocks)
    (loss * scale).backward()
    return loss.detach(), [t.grad / scale for t in leaves]


def _rel(a, r) -> float:
    return float((a.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30))


def _loss_variants(d: int, smoke: bool):
    """(label, impl, blocks) to time: every impl, and for triton its default blocks plus the alternatives
    that compile without spills at this width (benchmarks/triton_compile_check.py), to learn which wins."""
    import torch

    from gerbil.model.fused_loss import TritonBlocks, default_blocks

    out = [("triton", "triton", None), ("compiled", "compiled", None), ("eager", "eager", None),
           ("full", "full", None)]
    if smoke:
        return [("triton", "triton", TritonBlocks(128, 256, 256, 128))] + out[1:]
    base = default_blocks(d, torch.bfloat16)
    if d > 128:  # wider heads: only the default (other blocks spill there; see triton_compile_check.py)
        return out
    for held, streamed, warps in ((64, 64, 8), (64, 128, 8), (128, 64, 8), (32, 64, 4)):
        b = TritonBlocks(held, streamed, held, streamed, num_warps=warps)
        if base is not None and (held, streamed, warps) != (base.token_rows, base.token_cols, base.num_warps):
            out.append((f"triton {held}x{streamed} w{warps}", "triton", b))
    return out


def stage_loss(args, budget: Budget) -> None:
    """The head + cross-entropy alone: N tokens × the 50,264-row vocabulary, bf16 autocast, forward +
    backward; per implementation its time, tokens/s, peak memory and the relative gradient error against
    an fp32 reference (the eager chunked loss in fp32, tested equal to the plain full-logits loss)."""
    import torch

    dev = _device(args.smoke)
    torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 reference that is fp32
    shapes = [("smoke", 512, 1000, 32)] if args.smoke else [("6.7m", 131_072, 50_264, 64),
                                                             ("77m", 131_072, 50_264, 512)]
    for label, n, vocab, d in shapes:
        if budget.left() < 20:
            emit({"model": f"loss {label}", "error": "skipped: deadline"})
            continue
        inputs = _loss_inputs(n, d, vocab, dev)
        ref_loss, ref = _loss_run("eager", inputs, None)
        for name, impl, blocks in _loss_variants(d, args.smoke):
            rec = {"model": f"loss {label} {name}", "impl": impl, "tokens": n, "vocab": vocab, "d": d,
                   "dtype": "bf16", "blocks": blocks.__dict__ if blocks else None}
            if budget.left() < 10:
                emit({**rec, "error": "skipped: deadline"})
                continue
            if impl == "full" and dev.type == "cuda" and n * vocab * 14 > 0.8 * torch.cuda.mem_get_info(dev)[0]:
                emit({**rec, "error": "skipped: the full logits do not fit in free memory"})
                continue
            try:
                rec.update(_time_loss(impl, inputs, blocks, dev, reps=1 if args.smoke else 5))
                rec["compile_fallback"] = _loss_compile_failed(dev) if impl in ("compiled", "chunked") else None
                loss, grads = _loss_run(impl, inputs, torch.bfloat16, blocks=blocks)
                rec["loss_abs_err"] = abs(float(loss) - float(ref_loss))
                rec["grad_rel_err"] = {k: _rel(g, r) for k, g, r in zip(("hidden", "weight", "bias"), grads, ref)}
            except Exception as e:  # noqa: BLE001 — one failing implementation is a result
                rec["error"] = one_line(e)
            emit(rec)
            if impl == "triton" and blocks is None and dev.type == "cuda":
                _dump_triton(Path(args.out) / "triton", label)
        _loss_fp16(label, inputs, ref, budget)
        del inputs, ref
        _reset_peak(dev)


def _time_loss(impl, inputs, blocks, dev, reps: int) -> dict:
    _loss_run(impl, inputs, _bf16(), blocks=blocks)  # compile / autotune outside the timing
    _reset_peak(dev)
    ms = _median_ms(lambda: _loss_run(impl, inputs, _bf16(), blocks=blocks), dev, reps, warmup=0)
    return {"ms": round(ms, 3), "tok_s": round(inputs[0].shape[0] / ms * 1e3), "peak_gib": _peak_gib(dev)}


def _loss_compile_failed(dev) -> bool:
    """Whether lm_loss's compiled chunks fell back to eager on this device type (it logs one warning)."""
    from gerbil.model import loss

    return dev.type in loss._COMPILE_FAILED


def _bf16():
    import torch

    return torch.bfloat16


def _loss_fp16(label: str, inputs, ref, budget: Budget) -> None:
    """fp16 autocast with the GradScaler's initial scale 65,536 (a T4's precision): gradient errors."""
    import torch

    for impl in ("triton", "compiled", "eager"):
        rec = {"model": f"loss {label} {impl} fp16 scale 65536", "impl": impl, "dtype": "fp16"}
        if budget.left() < 10:
            emit({**rec, "error": "skipped: deadline"})
            continue
        try:
            _, grads = _loss_run(impl, inputs, torch.float16, scale=65_536.0)
            rec["grad_rel_err"] = {k: _rel(g, r) if torch.isfinite(g).all() else float("inf")
                                   for k, g, r in zip(("hidden", "weight", "bias"), grads, ref)}
        except Exception as e:  # noqa: BLE001
            rec["error"] = one_line(e)
        emit(rec)


def _dump_triton(folder: Path, label: str) -> None:
    """The fused loss's compiled kernels: PTX, TTGIR and registers / spills / shared memory."""
    from gerbil.model import fused_loss

    folder.mkdir(parents=True, exist_ok=True)
    for name, k in fused_loss.last_compiled().items():
        info = {"kernel": name, "shape": label, "n_regs": getattr(k, "n_regs", None),
                "n_spills": getattr(k, "n_spills", None), "shared": getattr(k.metadata, "shared", None),
                "num_warps": getattr(k.metadata, "num_warps", None),
                "num_stages": getattr(k.metadata, "num_stages", None)}
        for ext in ("ttgir", "ptx"):
            if ext in k.asm:
                (folder / f"{name}-{label}.{ext}").write_text(k.asm[ext])
        (folder / f"{name}-{label}.json").write_text(json.dumps(info, indent=1))
        emit({"triton_kernel": info})


# ------------------------------------------------------------------------------------ attention, parity
def stage_sdpa(args, budget: Budget) -> None:
    """F.scaled_dot_product_attention forward + backward (causal, bf16) with each backend pinned, at the
    6.7m shape (head_dim 16) and the 77m shape (head_dim 64): time and max |difference| to fp32 math."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = _device(args.smoke)
    shapes = [("head_dim 16", 2, 2, 64, 16)] if args.smoke else [("6.7m head_dim 16", 16, 4, 2048, 16),
                                                                 ("77m head_dim 64", 16, 8, 2048, 64)]
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]
    dtype = torch.float32 if args.smoke else torch.bfloat16
    for label, B, H, T, hd in shapes:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, T, hd, generator=g).to(dev) for _ in range(3))
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        qkv = [t.to(dtype).requires_grad_() for t in (q, k, v)]

        def step():
            out = F.scaled_dot_product_attention(*qkv, is_causal=True)
            out.float().square().mean().backward()
            return out

        for backend in [None, *backends]:
            rec = {"model": f"sdpa {label} {backend.name.lower() if backend else 'default'}", "B": B, "heads": H,
                   "T": T, "head_dim": hd}
            if backend is None:  # which kernel PyTorch's own dispatch runs for this shape
                from gerbil.train.sdpa import dispatched

                rec["dispatches"] = dispatched(dev, dtype, H, T, hd)
            if budget.left() < 5:
                emit({**rec, "error": "skipped: deadline"})
                continue
            try:
                ctx = sdpa_kernel([backend]) if backend else torch.enable_grad()
                with ctx:
                    rec["ms"] = round(_median_ms(step, dev, reps=3 if args.smoke else 10), 3)
                    rec["max_abs_diff_vs_fp32"] = float((step().float() - ref).abs().max())
            except Exception as e:  # noqa: BLE001 — a backend that refuses this shape is a result
                rec["error"] = one_line(e)
            emit(rec)


def stage_parity(args, budget: Budget) -> None:
    """gerbil vs transformers' GPTJForCausalLM on the same (random 6.7m) weights and batch: the mean
    next-token loss in fp32 and under bf16 autocast, with gerbil's loss implementations."""
    import tempfile

    import torch
    from transformers import GPTJForCausalLM

    from gerbil.export import export, random_model
    from gerbil.model.loss import lm_loss

    dev = _device(args.smoke)
    size = "3.3m" if args.smoke else "6.7m"
    model = random_model(size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        hf = GPTJForCausalLM.from_pretrained(str(export(model, Path(tmp) / "export"))).to(dev).eval()
    model = model.to(dev).eval()
    x = torch.randint(0, 50_257, (2 if args.smoke else 8, 65 if args.smoke else 1025),
                      generator=torch.Generator().manual_seed(1)).to(dev)
    for precision in ("fp32", "bf16"):
        dtype = torch.bfloat16 if precision == "bf16" else None
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            ref = float(hf(input_ids=x, labels=x).loss)  # transformers shifts the labels itself
            hidden = model(x[:, :-1])
            for impl in ("full", "chunked", "triton"):
                rec = {"model": f"parity {size} {precision} {impl}", "transformers_loss": ref}
                try:
                    ours = float(lm_loss(hidden, model.lm_head.weight, model.lm_head.bias, x[:, 1:],
                                         vocab_size=model.config.vocab_size, impl=impl))
                    rec.update(gerbil_loss=ours, abs_diff=abs(ours - ref))
                except Exception as e:  # noqa: BLE001
                    rec["error"] = one_line(e)
                emit(rec)


# ------------------------------------------------------------------------------------ memory, eval, tests
def stage_memory(args, budget: Budget) -> None:
    """104m at context 2048 in fp16 (micro-batch 8): peak GiB of a training step (goal ≤ 16 GB, a T4),
    with the chunked and the triton loss."""
    import torch

    sys.path.insert(0, str(BENCH))
    import train_throughput as tt
    from gerbil.model.config import get_size
    from gerbil.train.device import choose_precision

    dev = _device(args.smoke)
    size, mb, seq = ("3.3m", 2, 128) if args.smoke else ("104m", 8, 2048)
    cfg = get_size(size).model_config(seq_len=max(2048, seq))
    prec, dtype, scaler = choose_precision(dev, "fp32" if args.smoke else "fp16")
    x = torch.randint(0, cfg.vocab_size, (mb, seq + 1), generator=torch.Generator().manual_seed(0)).to(dev)
    for impl in ("chunked",) if args.smoke else ("chunked", "triton"):  # (the interpreter: minutes a step)
        rec = {"model": f"memory {size} seq {seq} {prec} mb{mb} {impl} loss", "loss_impl": impl}
        if budget.left() < 15:
            emit({**rec, "error": "skipped: deadline"})
            continue
        try:
            r = tt.bench_gerbil(cfg, x, dev, dtype, scaler, dev.type == "cuda", impl, 1, 2)
            rec.update(tok_s=round(r["tok_s"]), peak_gib=round(r["peak_bytes"] / 2**30, 3) if r["peak_bytes"] else None)
        except Exception as e:  # noqa: BLE001
            rec["error"] = one_line(e)
        emit(rec)


def stage_eval(args, budget: Budget) -> None:
    """gerbil's evaluator vs lm-eval's HFLM (benchmarks/eval_throughput.py), only with lm-eval installed and
    the evaluation sets already cached (the check never downloads)."""
    import contextlib
    import io

    from gerbil.assets import asset_status

    tasks = ["hellaswag", "lambada_openai", "winogrande"]
    if _version("lm-eval") is None:
        emit({"model": "eval vs lm-eval", "error": "skipped: lm-eval is not installed (pip install -e '.[eval]')"})
        return
    missing = [t for t in tasks if not asset_status(t).cached]
    if missing:
        emit({"model": "eval vs lm-eval", "error": f"skipped: evaluation sets not cached ({', '.join(missing)}; "
                                                   "`gerbil assets fetch` where there is network)"})
        return
    sys.path.insert(0, str(BENCH))
    import eval_throughput

    buf = io.StringIO()
    argv = ["--size", "3.3m" if args.smoke else "6.7m", "--limit", "5" if args.smoke else "200", "--json", "-"]
    if args.smoke:
        argv += ["--device", "cpu"]
    with contextlib.redirect_stdout(buf):
        eval_throughput.main(argv)
    data = json.loads(buf.getvalue().strip().splitlines()[-1])
    for task, r in data["results"].items():
        emit({"model": f"eval {task}", "device": data["device"], **r})


def stage_pytest(args, budget: Budget) -> None:
    """The tests marked `gpu` (skipped without pytest)."""
    if _version("pytest") is None:
        emit({"model": "pytest -m gpu", "error": "skipped: pytest is not installed"})
        return
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"],
                       capture_output=True, text=True, cwd=ROOT, timeout=max(5.0, budget.left() - 5))
    lines = p.stdout.strip().splitlines()
    emit({"model": "pytest -m gpu", "returncode": p.returncode, "summary": lines[-1] if lines else "",
          "failures": [ln for ln in lines if ln.startswith("FAILED")][:20]})


def stage_train(args, budget: Budget) -> None:
    """Training throughput (benchmarks/gpu_stage_train.py)."""
    sys.path.insert(0, str(BENCH))
    import gpu_stage_train

    gpu_stage_train.stage_train(args, budget)


STAGES = {"device": stage_device, "loss": stage_loss, "train": stage_train, "sdpa": stage_sdpa,
          "parity": stage_parity, "memory": stage_memory, "eval": stage_eval, "pytest": stage_pytest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--out", required=True, help="the check's output folder")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds this stage may use")
    ap.add_argument("--size", default="6.7m")
    ap.add_argument("--micro-batches", default="16")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--only", default=None, help="train: gerbil,gerbil-triton,plain,transformers")
    args = ap.parse_args(argv)
    if args.smoke:  # the fused loss on the CPU: set before anything imports triton (it wraps its helpers then)
        os.environ["TRITON_INTERPRET"] = "1"
        import torch

        torch.set_num_threads(1)
    STAGES[args.stage](args, Budget(args.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput: gerbil's training step vs transformers' GPTJForCausalLM, same process and device.

    python benchmarks/train_throughput.py --size 6.7m                     # CUDA: seq 2048, micro-batch 16
    python benchmarks/train_throughput.py --size 3.3m --device cpu        # CPU: seq 256, micro-batch 4

Both sides run the same full step — forward, loss, backward, gradient clipping at 1.0, AdamW (fused on
CUDA) — on the same random batch, at the same precision (bf16 autocast where supported, fp16 + loss
scaling without bf16, fp32 on CPU). gerbil is `torch.compile`d on CUDA (as `gerbil train` runs it) and
computes the loss with `loss.lm_loss` (chunked single-pass head + cross-entropy by default; `--loss
full|both` also times the plain full-logits loss); transformers runs its own eager GPT-J (the only
attention it supports) with `labels=`, i.e. full fp32 logits. Reported: tokens/s over the timed steps
(after warm-up steps, which absorb compilation), peak GPU memory of each side's step, and the ratio.
Not a timed test: numbers depend on the machine; say which device produced them.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _precision(device: torch.device, name: str):
    from gerbil.train.device import choose_precision

    return choose_precision(device, name)


def _time_steps(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - t0


def bench_gerbil(cfg, x, device, autocast_dtype, use_scaler, compile_: bool, loss_impl: str,
                 warmup: int, steps: int) -> dict:
    from gerbil.model.loss import lm_loss
    from gerbil.model.model import GPT
    from gerbil.train.loop import configure_optimizer

    model = GPT(cfg).to(device)
    opt = configure_optimizer(model, 0.1, (0.9, 0.95), fused=device.type == "cuda")
    for g in opt.param_groups:
        g["lr"] = 1e-4
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    fwd = torch.compile(model) if compile_ else model
    inputs, targets = x[:, :-1], x[:, 1:]
    chunk = 4096 if device.type == "cuda" else 1024

    def loss_fn():
        return lm_loss(fwd(inputs), model.lm_head.weight, model.lm_head.bias, targets,
                       vocab_size=cfg.vocab_size, impl=loss_impl, chunk_tokens=chunk)

    return _run(_train_step(loss_fn, model, opt, scaler, device, autocast_dtype), device, warmup, steps, x)


def _train_step(loss_fn, model, opt, scaler, device, autocast_dtype):
    """One optimizer step, identical for both sides: autocast forward+loss, (scaled) backward, clip 1.0."""

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = loss_fn()
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        (scaler.step(opt), scaler.update()) if scaler else opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_transformers(cfg, x, device, autocast_dtype, use_scaler, warmup: int, steps: int) -> dict:
    from transformers import GPTJForCausalLM

    from gerbil.export import transformers_config

    model = GPTJForCausalLM(transformers_config(cfg)).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    kw = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), **kw)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None

    def loss_fn():
        return model(input_ids=x[:, :-1], labels=x[:, :-1]).loss  # HF shifts labels internally

    return _run(_train_step(loss_fn, model, opt, scaler, device, autocast_dtype), device, warmup, steps, x)


def bench_plain(cfg, x, device, autocast_dtype, use_scaler, compile_: bool, warmup: int, steps: int) -> dict:
    """The plain PyTorch GPT-J a user would write (benchmarks/plain_gptj.py), compiled, fused AdamW."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from plain_gptj import PlainGPTJ

    model = PlainGPTJ(cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.rotary_dim, x.shape[1]).to(device)
    kw = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **kw)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    fwd = torch.compile(model) if compile_ else model

    def loss_fn():
        return fwd(x[:, :-1], x[:, 1:])

    return _run(_train_step(loss_fn, model, opt, scaler, device, autocast_dtype), device, warmup, steps, x)


def _run(step, device, warmup, steps, x) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _time_steps(step, device, warmup, steps)
    tokens = steps * x.shape[0] * (x.shape[1] - 1)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"tok_s": tokens / seconds, "peak_bytes": peak, "seconds": seconds, "steps": steps}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="6.7m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seq-len", type=int, default=None, help="default 2048 on CUDA, 256 on CPU")
    ap.add_argument("--micro-batch", type=int, default=None, help="default 16 on CUDA, 4 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA, 1 CPU)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--loss", default="chunked", choices=("chunked", "full", "both"))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--plain", action="store_true", help="also time the plain compiled PyTorch GPT-J "
                                                          "(benchmarks/plain_gptj.py)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)

    from gerbil.model.config import get_size
    from gerbil.train.device import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    T = args.seq_len or (2048 if cuda else 256)
    B = args.micro_batch or (16 if cuda else 4)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    cfg = get_size(args.size).model_config(seq_len=max(2048, T))
    precision, dtype, scaler = _precision(device, args.precision)
    compile_ = cuda and not args.no_compile
    x = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=torch.Generator().manual_seed(0)).to(device)

    results = {}
    for impl in (["chunked", "full"] if args.loss == "both" else [args.loss]):
        results[f"gerbil ({impl} loss{', compiled' if compile_ else ''})"] = bench_gerbil(
            cfg, x, device, dtype, scaler, compile_, impl, warmup, steps)
        gc.collect()
    if args.plain:
        results[f"plain PyTorch GPT-J{' (compiled)' if compile_ else ''}"] = bench_plain(
            cfg, x, device, dtype, scaler, compile_, warmup, steps)
        gc.collect()
    if not args.skip_transformers:
        results["transformers GPTJForCausalLM"] = bench_transformers(cfg, x, device, dtype, scaler, warmup, steps)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    ref = results.get("transformers GPTJForCausalLM")
    from gerbil.plan import flops_per_token
    from gerbil.train.device import peak_flops

    peak = peak_flops(device, precision)
    for v in results.values():  # MFU by gerbil's own FLOP count (PaLM convention), where the GPU is known
        v["mfu"] = round(flops_per_token(cfg, T) * v["tok_s"] / peak, 4) if peak else None
    report = {"size": args.size, "device": name, "precision": precision, "seq_len": T, "micro_batch": B,
              "steps": steps, "results": results}
    if args.json:
        print(json.dumps(report))
        return report
    print(f"{args.size}  {name}  {precision}  seq {T}  micro-batch {B}  {steps} timed steps after {warmup}")
    for k, v in results.items():
        mem = f"{v['peak_bytes'] / 2**30:6.2f} GiB" if v["peak_bytes"] is not None else "   n/a   "
        ratio = f"{v['tok_s'] / ref['tok_s']:5.2f}x" if ref else ""
        print(f"  {k:42s} {v['tok_s']:>12,.0f} tok/s  peak {mem}  {ratio}")
    return report


if __name__ == "__main__":
    main()

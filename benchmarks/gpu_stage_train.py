"""The training stage of the device check (benchmarks/gpu_stages.py runs it: `gpu_stages.py train`): per
micro-batch, gerbil's real training loop (`gerbil.train.train` on a synthetic token store, its records read
back), gerbil's model with the triton loss, the plain compiled GPT-J and transformers' GPT-J — each model
one record, printed as soon as it is measured."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from gpu_stages import BENCH, ROOT, Budget, _device, emit, one_line

NA = "n/a"
SYNTHETIC_SHA = "gpu-check-synthetic-tokens"  # the synthetic store's tokenizer id (no tokenizer needed)


def _synthetic_store(work: Path, tokens: int, vocab: int) -> Path:
    """A token store of random documents (no tokenizer, no download): speed does not depend on content."""
    import numpy as np

    from gerbil.data.store import TokenStore

    path = work / f"store-{vocab}-{tokens}"
    if not path.exists():
        rng = np.random.default_rng(0)
        docs = [rng.integers(0, vocab - 1, 4096) for _ in range(max(8, tokens // 4096 + 1))]
        TokenStore.write(path, docs, tokenizer_sha256=SYNTHETIC_SHA, vocab_size=vocab, eot_id=vocab - 1,
                         val_fraction=0.05, overwrite=True)
    return path


def _run_records(run: Path) -> dict:
    """What a finished run recorded about how it ran: env.json, then result.json's `info` (the training
    loop writes these keys, `gerbil.train.autotune` / `gerbil.train.loop`): loss_impl (the implementation
    used), loss_impl_chosen (timed | recorded | given | default), loss_impl_timings (auto's median ms
    per candidate, or why one was left out) and loss_impl_agreement (each one's largest relative error
    against the eager loss), sdpa_backend (the pinned attention backend, or "default
    (KERNEL)": PyTorch's dispatch), sdpa_chosen, sdpa_timings and sdpa_agreement, compile_fallback (why compiling fell
    back to eager; null when it did not). A run from before these records: "n/a", and config.yaml's
    `loss_impl` marked "(configured)"."""
    out: dict = {}
    for name in ("env.json", "result.json"):
        try:
            data = json.loads((run / name).read_text())
        except (OSError, ValueError):
            continue
        out.update(data.get("info") or {} if name == "result.json" else data)
    keys = ("loss_impl", "loss_impl_chosen", "loss_impl_timings", "loss_impl_agreement", "sdpa_backend", "sdpa_chosen",
            "sdpa_timings", "sdpa_agreement", "compile_fallback", "precision", "micro_batch", "compile")
    rec = {k: out.get(k, NA) for k in keys}
    if rec["loss_impl"] == NA:  # no recorded choice: the configured implementation is what ran
        try:
            import yaml

            cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
            configured = next((sec.get("loss_impl") for sec in (cfg.get("resolved"), cfg.get("train"), cfg)
                               if isinstance(sec, dict) and sec.get("loss_impl")), None)
            rec["loss_impl"] = f"{configured} (configured)" if configured else NA
        except (OSError, ValueError, ImportError):
            pass
    return rec


def _gerbil_loop(size: str, mb: int, seq: int, precision: str, steps: int, work: Path, out: Path,
                 budget: Budget, smoke: bool) -> dict:
    """`gerbil train` itself (the real loop: loader, prefetch, loss, optimizer, metrics) for `steps` steps
    of one micro-batch; tokens/s and MFU are the medians of its per-step metrics after the first third."""
    from gerbil.model.config import get_size

    vocab = get_size(size).model_config().vocab_size if not smoke else 50_264
    tokens = steps * mb * seq
    store = _synthetic_store(work, tokens + 64 * seq, vocab)
    name = f"{size}-mb{mb}-{precision}"
    runs = work / "runs"
    config = dict(size=size, data=str(store), tokens=tokens, batch_tokens=mb * seq, micro_batch=mb, seq_len=seq,
                  runs=str(runs), name=name, eval_every=tokens, checkpoint_every=tokens, val_tokens=seq * min(mb, 4),
                  tokenizer_sha256=SYNTHETIC_SHA, precision=precision, progress=False,
                  device="cpu" if smoke else "cuda")
    # `gerbil.train.train` (the documented entry point) in its own process: the CLI would load the real
    # tokenizer to check the store against, which the synthetic store does not need and may not be cached
    code = ("import json, sys; from gerbil.train import TrainConfig, train; "
            "train(TrainConfig.from_dict(json.loads(sys.argv[1])))")
    p = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True,
                       timeout=max(10.0, budget.left() - 5), cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1])
    run = runs / name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "tok_s" in r]
    timed = rows[len(rows) // 3:] or rows
    keep = out / "runs" / name
    keep.mkdir(parents=True, exist_ok=True)
    for f in ("config.yaml", "env.json", "result.json", "metrics.jsonl"):
        if (run / f).exists():
            (keep / f).write_bytes((run / f).read_bytes())
    mfu = [r["mfu"] for r in timed if r.get("mfu") is not None]
    return {"tok_s": round(statistics.median(r["tok_s"] for r in timed)), "steps_timed": len(timed),
            "mfu": round(statistics.median(mfu), 4) if mfu else None, **_run_records(run)}


def _throughput_model(kind: str, size: str, mb: int, seq: int, precision: str, steps: int, smoke: bool) -> dict:
    """transformers' GPTJForCausalLM, the plain compiled GPT-J, or gerbil's model + lm_loss(impl="triton")
    without the loop — one full training step each (benchmarks/train_throughput.py), same random batch."""
    import torch

    import train_throughput as tt
    from gerbil.model.config import get_size
    from gerbil.plan import flops_per_token
    from gerbil.train.device import choose_precision, peak_flops

    dev = _device(smoke)
    cfg = get_size(size).model_config(seq_len=max(2048, seq))
    prec, dtype, scaler = choose_precision(dev, precision)
    x = torch.randint(0, cfg.vocab_size, (mb, seq + 1), generator=torch.Generator().manual_seed(0)).to(dev)
    warm = 1 if smoke else 3
    compile_ = dev.type == "cuda"
    rec: dict = {"compile_fallback": None}
    if kind == "transformers":
        r = tt.bench_transformers(cfg, x, dev, dtype, scaler, warm, steps)
        rec.update(loss_impl="transformers labels= (full fp32 logits)", sdpa_backend="eager attention (GPT-J)",
                   compile=False)
    else:
        def bench(c: bool):
            if kind == "plain":
                return tt.bench_plain(cfg, x, dev, dtype, scaler, c, warm, steps)
            return tt.bench_gerbil(cfg, x, dev, dtype, scaler, c, "triton", warm, steps)
        try:
            r = bench(compile_)
        except Exception as e:  # noqa: BLE001 — a failed compile falls back to eager, recorded
            if not compile_:
                raise
            rec["compile_fallback"] = one_line(e)
            r = bench(False)
        rec.update(loss_impl="F.cross_entropy on full logits" if kind == "plain" else "triton",
                   sdpa_backend="default dispatch", compile=compile_ and rec["compile_fallback"] is None)
    peak = peak_flops(dev, prec)
    rec.update(tok_s=round(r["tok_s"]), peak_gib=round(r["peak_bytes"] / 2**30, 3) if r["peak_bytes"] else None,
               mfu=round(flops_per_token(cfg, seq) * r["tok_s"] / peak, 4) if peak else None, precision=prec)
    return rec


def stage_train(args, budget: Budget) -> None:
    """Per micro-batch: gerbil's real loop, then gerbil's model with the triton loss, the plain compiled
    GPT-J and transformers (each its own record; --only picks some)."""
    import tempfile

    sys.path.insert(0, str(BENCH))
    seq = 128 if args.smoke else 2048
    only = set(args.only.split(",")) if args.only else {"gerbil", "gerbil-triton", "plain", "transformers"}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="gerbil-gpu-check-") as tmp:
        for mb in map(int, args.micro_batches.split(",")):
            for kind in ("gerbil", "gerbil-triton", "plain", "transformers"):
                if kind not in only:
                    continue
                rec = {"model": f"{kind} {args.size} mb{mb} {args.precision}", "kind": kind, "size": args.size,
                       "micro_batch": mb, "seq_len": seq}
                if budget.left() < 15:
                    emit({**rec, "error": "skipped: deadline"})
                    continue
                steps = args.steps or (2 if args.smoke else 12)
                try:
                    if kind == "gerbil":
                        rec.update(_gerbil_loop(args.size, mb, seq, args.precision, 3 * steps, Path(tmp), out,
                                                budget, args.smoke))
                    else:
                        model = {"gerbil-triton": "gerbil"}.get(kind, kind)
                        rec.update(_throughput_model(model, args.size, mb, seq, args.precision, steps, args.smoke))
                except Exception as e:  # noqa: BLE001
                    rec["error"] = one_line(e)
                emit(rec)

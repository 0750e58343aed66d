"""Compile the fused loss's Triton kernels for an H100/H200 (sm_90a) on a machine WITHOUT a GPU, and report
per kernel and block configuration the registers, spills and shared memory — what decides whether a block
configuration runs at all (shared memory) and runs without local-memory traffic (spills).

    python benchmarks/triton_compile_check.py                      # the defaults at every ladder width
    python benchmarks/triton_compile_check.py --sweep --widths 64,512 --dtype bf16
    python benchmarks/triton_compile_check.py --json out.json

Triton's own compiler (AST → TTIR → TTGIR → LLVM → PTX) and its bundled ptxas run on any CPU; the numbers
are ptxas's `-v` report with the flags Triton itself passes (`-lineinfo -v --regAllocOptLevel=2`). They are
facts about the generated code, not speeds: a kernel with no spills and room in shared memory can still be
slow. Nothing is launched.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LADDER = (32, 64, 128, 256, 512, 640)
SM90_SHARED = 227 * 1024  # the largest dynamic shared memory one block may use on sm_90


def _signatures(dt: str):
    token = dict(H="*" + dt, W="*" + dt, Bias="*" + dt, Y="*i64", RowW="*fp32", LSE="*fp32", RowLoss="*fp32",
                 DH="*fp32", N="i32", V="i32", D="i32", stride_h="i32", stride_w="i32", stride_dh="i32")
    vocab = dict(H="*" + dt, W="*" + dt, Bias="*" + dt, Y="*i64", RowW="*fp32", LSE="*fp32", DW="*fp32",
                 DBias="*fp32", N="i32", V="i32", D="i32", rows_per_split="i32", stride_h="i32", stride_w="i32")
    return token, vocab


def compile_one(kind: str, d: int, dt: str, held: int, streamed: int, warps: int, stages: int,
                arch: int = 90) -> dict:
    """Compile one kernel for sm_{arch}; returns registers, spill bytes, shared bytes, seconds (or error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from gerbil.model import _triton_kernels as K
    from gerbil.model.fused_loss import width_blocks

    da, db = width_blocks(d)
    sig_t, sig_v = _signatures(dt)
    prec = "ieee" if dt == "fp32" else "tf32"
    if kind == "token":
        fn, sig = triton.jit(K._token_pass), sig_t
        const = dict(HAS_BIAS=True, COMPUTE_DH=True, BLOCK_N=held, BLOCK_V=streamed)
    else:
        fn, sig = triton.jit(K._vocab_pass), sig_v
        const = dict(HAS_BIAS=True, BLOCK_V=held, BLOCK_N=streamed)
    const.update(DA=da, DB=db, UPCAST=False, DOT_PRECISION=prec)
    sig = {**sig, **{k: "constexpr" for k in const}}
    row = dict(kernel=kind, d=d, dtype=dt, held=held, streamed=streamed, warps=warps, stages=stages)
    t0 = time.time()
    try:
        ck = triton.compile(ASTSource(fn, sig, const), target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=warps, num_stages=stages))
    except Exception as e:  # noqa: BLE001 — a configuration that does not compile is a result
        return {**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row["compile_s"] = round(time.time() - t0, 1)
    row["shared"] = ck.metadata.shared
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(ck.asm["ptx"])
        out = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name=sm_{arch}a", str(ptx), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True)
    log = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    row.update(registers=int(regs.group(1)) if regs else None, spill_bytes=int(spill.group(1)) if spill else None,
               wgmma="wgmma" in ck.asm["ptx"])
    row["fits"] = row["shared"] <= SM90_SHARED and row["spill_bytes"] == 0
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default=",".join(map(str, LADDER)))
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--sweep", action="store_true", help="also the other block sizes around the default")
    ap.add_argument("--held", default="16,32,64,128", help="--sweep: held block sizes")
    ap.add_argument("--streamed", default="32,64,128", help="--sweep: streamed block sizes")
    ap.add_argument("--warps", default="4,8", help="--sweep: warps per program")
    ap.add_argument("--json", default=None, help="write every row to this file")
    args = ap.parse_args(argv)
    import torch

    from gerbil.model.fused_loss import default_blocks

    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    rows = []
    for d in map(int, args.widths.split(",")):
        b = default_blocks(d, tdt)
        if b is None:
            print(f"d {d}: no default blocks ({args.dtype})")
            continue
        configs = {("token", b.token_rows, b.token_cols, b.num_warps, b.num_stages),
                   ("vocab", b.vocab_rows, b.vocab_cols, b.num_warps, b.num_stages)}
        if args.sweep:
            for kind in ("token", "vocab"):
                for held in map(int, args.held.split(",")):
                    for streamed in map(int, args.streamed.split(",")):
                        for warps in map(int, args.warps.split(",")):
                            configs.add((kind, held, streamed, warps, 2))
        for kind, held, streamed, warps, stages in sorted(configs):
            r = compile_one(kind, d, args.dtype, held, streamed, warps, stages)
            r["default"] = (kind, held, streamed, warps, stages) in (
                ("token", b.token_rows, b.token_cols, b.num_warps, b.num_stages),
                ("vocab", b.vocab_rows, b.vocab_cols, b.num_warps, b.num_stages))
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    bad = [r for r in rows if r.get("default") and not r.get("fits")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

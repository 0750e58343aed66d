"""Data-parallel scaling: training tokens/s of the same run on 1, 2, ... processes of one machine
(torchrun + DDP; gloo on CPUs, NCCL on GPUs), with the scaling efficiency tokens/s(N) / (N × tokens/s(1)).

    python benchmarks/ddp_scaling.py --procs 1 2                      # CPU: a correctness-first figure
    python benchmarks/ddp_scaling.py --procs 1 2 4 8 --size 77m --device cuda   # one GPU node

Each process count trains the same budget from scratch (tiny model on a synthetic store on CPU; a
ladder size on a real store with --data on GPUs); tokens/s is read from the run's result.json (training
time only: validation and checkpoints excluded). On a CPU the processes share the cores, so the figure
says whether DDP's overheads are small, not how a GPU node scales (goal there: ≥ 90% at 77m on 8 GPUs).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", default=None, help="a ladder size (default: the tests' tiny model)")
    ap.add_argument("--data", default=None, help="token store (default: a synthetic one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=128 * 64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (CPU)")
    args = ap.parse_args()
    from helpers import make_store, tiny_config

    tmp = Path(tempfile.mkdtemp(prefix="gerbil-ddp-"))
    store = Path(args.data) if args.data else make_store(tmp / "store", n_docs=2000)
    rows = []
    for n in args.procs:
        kw = dict(tokens=args.tokens, device=args.device, checkpoint_every=args.tokens, eval_every=args.tokens,
                  micro_batch=4, batch_tokens=128 * 4 * max(args.procs))
        if args.size:
            kw.update(model=None, size=args.size, seq_len=2048, batch_tokens=None, micro_batch=None,
                      tokenizer_sha256=None)
        cfg = tiny_config(store, tmp / f"p{n}", **kw)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *sys.path]),
                   OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", "--master-addr=127.0.0.1",
               f"--master-port={_port()}", str(ROOT / "tests" / "ddp_driver.py"), json.dumps(cfg.to_dict())]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        res = json.loads((tmp / f"p{n}" / "tiny" / "result.json").read_text()) if not args.size else \
            json.loads(next((tmp / f"p{n}").glob("*/result.json")).read_text())
        rows.append((n, res["tokens_per_second"]))
    base = rows[0][1] / rows[0][0]
    print(f"{'procs':>5}  {'tokens/s':>10}  efficiency   ({args.device}, {args.threads} thread(s) per process)")
    for n, tps in rows:
        print(f"{n:>5}  {tps:>10,.0f}  {tps / (n * base):9.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What `loss_impl: auto` and `sdpa_backend: auto` time and choose for one shape, without a training run.

    python benchmarks/autotune_choice.py --size 6.7m --micro-batch 8 --seq-len 256            # CPU (hook set here)
    python benchmarks/autotune_choice.py --size 6.7m --micro-batch 64 --seq-len 2048 --device cuda --precision bf16

Prints one JSON line per choice: the chosen implementation, each candidate's median milliseconds per
forward + backward (or why it was left out) and its largest relative error against the reference
(gerbil/train/autotune.py). On a CPU it sets the test hook GERBIL_AUTOTUNE_ON_CPU=1 (a run would not time).
"""
from __future__ import annotations

import argparse
import json
import os

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="6.7m")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    args = ap.parse_args()
    os.environ.setdefault("GERBIL_AUTOTUNE_ON_CPU", "1")
    from gerbil.model.config import get_size
    from gerbil.model.loss import default_chunk_tokens
    from gerbil.train import autotune
    from gerbil.train.device import choose_precision

    device = torch.device(args.device)
    cfg = get_size(args.size).model_config(seq_len=max(2048, args.seq_len))
    _, dtype, _ = choose_precision(device, args.precision)
    shape = {"size": args.size, "micro_batch": args.micro_batch, "seq_len": args.seq_len, "precision": args.precision,
             "device": str(device), "threads": torch.get_num_threads()}
    loss = autotune.choose_loss_impl("auto", cfg, device, args.micro_batch, args.seq_len, dtype,
                                     default_chunk_tokens(device), {})
    print(json.dumps({"loss_impl": loss.name, **shape, "timings_ms": loss.timings, "agreement": loss.agreement}))
    attn = autotune.choose_sdpa("auto", cfg, device, args.micro_batch, args.seq_len, dtype, {})
    print(json.dumps({"sdpa_backend": attn.name, **shape, "timings_ms": attn.timings, "agreement": attn.agreement}))


if __name__ == "__main__":
    main()

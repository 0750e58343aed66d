"""Items/s of gerbil's evaluator vs lm-evaluation-harness's HFLM on the same exported model, same items,
same device — per task, with the ratio. Not a timed test.

    python benchmarks/eval_throughput.py                          # random-init 6.7m, 200 items/task, CPU
    python benchmarks/eval_throughput.py --size 32m --limit 500 --device cuda
    python benchmarks/eval_throughput.py --model runs/NAME/export --tasks hellaswag

What is timed, on both sides, is strings → (loglikelihood, is_greedy) for every request of the first
`--limit` items: tokenization included, data loading and metric aggregation excluded.

* harness: `HFLM` (transformers `GPTJForCausalLM`, eager attention, fp32) `.loglikelihood(requests)`,
  batch size `--hf-batch-size` (the harness sorts by length and pads; it applies the head and a full
  log-softmax at every position);
* gerbil: `RequestEncoder.encode_pairs` + `Scorer.score` (shared prefixes once, length-sorted token-budget
  batches, head only where a continuation token is scored).

The requests are the harness's own (built by gerbil and checked equal to the harness's task code in
tests/test_evaluate.py); the script also reports the largest |Δ loglikelihood| between the two.
Both sides run `--repeats` times interleaved; the best time counts (the machine may be shared), and the
range over the repeats (each repeat's harness time ÷ its gerbil time, and each side's items/s) is printed
and written too: on a shared CPU one number is not a measurement, the range is.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="an export folder (default: a random-init --size model)")
    ap.add_argument("--size", default="6.7m", help="ladder size of the random-init model (default 6.7m)")
    ap.add_argument("--tasks", default="hellaswag,lambada_openai,winogrande")
    ap.add_argument("--limit", type=int, default=200, help="first N items of each task (default 200)")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None, help="gerbil rows per batch (default: by tokens)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file (- : one line on stdout)")
    args = ap.parse_args(argv)

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gerbil.eval import evaluate as E
    from gerbil.eval.scoring import Scorer
    from gerbil.eval.tasks import get_task, resolve_tasks
    from gerbil.export import export, random_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or E.default_device()
    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="gerbil-bench-")
        path = export(random_model(args.size, seed=0), Path(tmp.name) / "export")
        what = f"random-init {args.size}"
    else:
        path, what = Path(args.model), args.model
    em = E.load_for_eval(path)
    em.model = em.model.to(device).eval()
    hf = HFLM(pretrained=str(path), device=device, dtype="float32", batch_size=args.hf_batch_size)
    dev_name = torch.cuda.get_device_name() if str(device).startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: {what} ({em.model.config.n_params() / 1e6:.2f}M params); device: {dev_name}; "
          f"{args.limit} items per task")

    def sync() -> None:
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    results = {}
    for task in resolve_tasks(args.tasks):
        docs = E.load_docs(task)[0][: args.limit]
        items = [get_task(task).build_item(d) for d in docs]
        flat = [r for it in items for r in it.requests]
        sizes = [len(it.requests) for it in items]
        t_hf, t_g = float("inf"), float("inf")
        hf_times, g_times = [], []
        for _ in range(args.repeats):
            reqs = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=0) for r in flat]
            sync()
            t0 = time.perf_counter()
            hf_out = hf.loglikelihood(reqs, disable_tqdm=True)
            sync()
            hf_times.append(time.perf_counter() - t0)
            t_hf = min(t_hf, hf_times[-1])

            t0 = time.perf_counter()
            enc = em.encoder.encode_pairs(flat)
            groups, k = [], 0
            for n in sizes:
                groups.append(enc[k: k + n])
                k += n
            g_out = Scorer(em.model, device=device, batch_size=args.batch_size).score(groups)
            sync()
            g_times.append(time.perf_counter() - t0)
            t_g = min(t_g, g_times[-1])
        g_flat = [s for g in g_out for s in g]
        diff = max(abs(a[0] - b[0]) for a, b in zip(hf_out, g_flat))
        greedy_same = all(a[1] == b[1] for a, b in zip(hf_out, g_flat))
        r = {"items": len(items), "requests": len(flat), "harness_items_s": len(items) / t_hf,
             "gerbil_items_s": len(items) / t_g, "ratio": t_hf / t_g, "max_abs_ll_diff": diff,
             "greedy_identical": greedy_same}
        span = lambda xs: [min(xs), max(xs)]  # noqa: E731
        r.update(ratio_range=span([h / g for h, g in zip(hf_times, g_times)]),
                 harness_items_s_range=span([len(items) / t for t in hf_times]),
                 gerbil_items_s_range=span([len(items) / t for t in g_times]))
        results[task] = r
        print(f"{task:15s} harness {r['harness_items_s']:9.1f} items/s   gerbil {r['gerbil_items_s']:9.1f} items/s"
              f"   ratio {r['ratio']:5.1f}x   max|Δll| {diff:.2e}   greedy identical: {greedy_same}")
        if args.repeats > 1:
            (hl, hh), (gl, gh), (rl, rh) = (r["harness_items_s_range"], r["gerbil_items_s_range"], r["ratio_range"])
            print(f"{'':15s} over {args.repeats} repeats: harness {hl:.1f}–{hh:.1f}, gerbil {gl:.1f}–{gh:.1f} items/s, "
                  f"ratio {rl:.1f}–{rh:.1f}x")
    if args.json == "-":  # one line on stdout (benchmarks/gpu_check.py reads it)
        print(json.dumps({"model": what, "device": dev_name, "results": results}))
    elif args.json:
        Path(args.json).write_text(json.dumps({"model": what, "device": dev_name, "results": results}, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

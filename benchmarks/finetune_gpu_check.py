"""Fine-tuning's CUDA paths in one short run: what the CPU tests cannot exercise.

    python benchmarks/finetune_gpu_check.py --work /tmp/ftgpu [--json OUT.json]

On the tests' tiny model (pretrained here for 30 steps by `gerbil train`): classify with the defaults of
a GPU (bf16 autocast, torch.compile with padded micro-batches, pinned prefetched batches, fused AdamW);
classify in fp16 with the GradScaler; sft with packed rows (block-diagonal attention) compiled; a
SIGKILL-ed deterministic run resumed and compared bitwise with an uninterrupted one; and predictions on
CUDA against the CPU. Prints one JSON object (each check's numbers and ok flag).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

KILL = """
import json, os, signal, sys
import gerbil.train.loop as T
from gerbil.finetune.finetune import finetune
calls = [0]
real = T.train_step
def step(*a, **k):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
T.train_step = step
finetune(json.loads(sys.argv[1]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from gerbil.data.tokenizer import Tokenizer
    from gerbil.finetune.finetune import finetune
    from gerbil.finetune.predict import Predictor
    from helpers import trained_run
    from test_finetune import FRENCH, TEMPLATES, sentiment_rows, write_jsonl

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    t0 = time.perf_counter()
    base = trained_run(work / "base", Tokenizer.load(), steps=30, objective="causal")
    report["base_s"] = round(time.perf_counter() - t0, 1)
    cls = write_jsonl(work / "cls.jsonl", sentiment_rows())
    sft = write_jsonl(work / "sft.jsonl", [{"prompt": t.format(w=w), "completion": f}
                                           for w, f in FRENCH.items() for t in TEMPLATES])
    common = dict(base=str(base), progress=False, patience=0, device=args.device)

    def check(name: str, cfg: dict, metric: str, margin: float) -> None:
        t = time.perf_counter()
        r = finetune(cfg)
        first, best = r.info["initial_validation"][metric], r.info["best"]["metrics"][metric]
        better = best > first + margin if metric != "val_loss" else best < first - margin
        report[name] = {"device": r.info["device"], "precision": r.info["precision"], "compile": r.info["compile"],
                        "steps": r.steps, "skipped": r.skipped_steps, "first": first, "best": best,
                        "seconds": round(time.perf_counter() - t, 1), "ok": bool(better)}
        print(name, report[name], flush=True)

    cls_cfg = dict(common, task="classify", train=str(cls), epochs=4, lr=1e-2, max_len=64)
    check("classify_default", dict(cls_cfg, out=str(work / "cls")), "val_macro_f1", 0.3)
    check("classify_fp16", dict(cls_cfg, out=str(work / "cls16"), precision="fp16", compile=False), "val_macro_f1", 0.3)
    check("sft_packed", dict(common, task="sft", train=str(sft), out=str(work / "sft"), epochs=15, lr=2e-2,
                             val_fraction=0.2), "val_loss", 2.0)

    # exact resume on the device: deterministic algorithms, killed in epoch 2, resumed
    kw = dict(cls_cfg, epochs=3, batch_size=32, deterministic=True, compile=False)
    straight = finetune(dict(kw, out=str(work / "ra")))
    cfg = dict(kw, out=str(work / "rb"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILL, json.dumps(cfg), "10"], env=env, capture_output=True,
                          text=True, timeout=300)
    resumed = finetune(dict(cfg, resume=True))
    same = (straight.checkpoint / "model.safetensors").read_bytes() == (resumed.checkpoint / "model.safetensors"
                                                                        ).read_bytes()
    report["resume_bitwise"] = {"killed": proc.returncode == -signal.SIGKILL, "steps": resumed.steps,
                                "ok": bool(same and proc.returncode == -signal.SIGKILL)}
    print("resume_bitwise", report["resume_bitwise"], flush=True)

    texts = [json.loads(line)["text"] for line in cls.read_text().splitlines()[:64]]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a = Predictor.load(work / "cls", device=dev)(texts)
    b = Predictor.load(work / "cls", device="cpu")(texts)
    diff = max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b))
    report["predict_device_vs_cpu"] = {"same_labels": [x["label"] for x in a] == [y["label"] for y in b],
                                       "max_prob_diff": diff, "ok": diff < 1e-3}
    report["ok"] = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

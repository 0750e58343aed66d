"""The one device check for a session that has a GPU: every stage in its own subprocess with its own
time limit, so a slow cold compile or a crash in one never aborts the rest; one JSON with everything.

    python benchmarks/gpu_check.py --out gpu_check.json        # ≤ 8 minutes on one H100
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/x.json   # the script itself, on a CPU, tiny sizes

Stages (each entry of the JSON carries its status — ok / failed / timeout / skipped — its seconds and
its output):
1. device: name, memory, torch / CUDA versions;
2. GPU tests: `pytest -m gpu`;
3. training throughput at 6.7m, 32m and 77m in bf16 (seq 2048, micro-batch 16): gerbil (compiled) vs
   transformers GPT-J vs a plain compiled PyTorch GPT-J (benchmarks/plain_gptj.py) — tokens/s, MFU,
   peak memory — and gerbil in fp16 + loss scaling at 6.7m;
4. evaluation items/s: gerbil vs lm-eval's HFLM on the same export (6.7m, 200 items per task);
5. memory: 104m at context 2048 in fp16 (micro-batch 8), peak GiB.

Goals it reports against (issue: mixed precision and GPU readiness): ≥ 8× transformers and ≥ 2× the plain
compiled model at 6.7m; ≥ 45% MFU at 77m; 104m at 2048 within 16 GB in fp16.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def stage(name: str, cmd: list[str], timeout: float, results: dict, parse_json: bool = True) -> None:
    t0 = time.time()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        status = "ok" if p.returncode == 0 else "failed"
        out, err = p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        status, out, err = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or ""), ""
    entry = {"status": status, "seconds": round(time.time() - t0, 1), "cmd": " ".join(cmd[1:])}
    data = None
    if parse_json and out:
        for line in reversed(out.strip().splitlines()):
            try:
                data = json.loads(line)
                break
            except ValueError:
                continue
    entry["data"] = data
    if data is None:
        entry["output"] = (out or "")[-3000:]
    if status != "ok":
        entry["stderr"] = (err or "")[-3000:]
    results[name] = entry
    print(f"[{entry['seconds']:6.1f} s] {name}: {status}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks the script, not a GPU")
    args = ap.parse_args()
    py = sys.executable
    smoke = args.cpu_smoke
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t_all = time.time()

    stage("device", [py, "-c", "import json, torch; p = torch.cuda.get_device_properties(0) if torch.cuda.is_available() "
                                "else None; print(json.dumps({'gpu': p.name if p else None, 'memory_gib': "
                                "round(p.total_memory / 2**30, 1) if p else None, 'torch': torch.__version__, "
                                "'cuda': torch.version.cuda}))"], 60, results)
    if not smoke:
        stage("gpu tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"], 150, results,
              parse_json=False)
    dev = ["--device", "cpu", "--seq-len", "128", "--micro-batch", "2", "--steps", "2", "--warmup", "1"] if smoke \
        else ["--steps", "10", "--warmup", "3"]
    sizes = ["3.3m"] if smoke else ["6.7m", "32m", "77m"]
    for size in sizes:
        prec = [] if smoke else ["--precision", "bf16"]
        stage(f"train {size} bf16", [py, str(BENCH / "train_throughput.py"), "--size", size, "--plain", "--json",
                                     *prec, *dev], 120 if not smoke else 300, results)
    if not smoke:
        stage("train 6.7m fp16", [py, str(BENCH / "train_throughput.py"), "--size", "6.7m", "--precision", "fp16",
                                  "--skip-transformers", "--json", *dev], 90, results)
    ev = ["--limit", "20", "--size", "3.3m", "--device", "cpu"] if smoke else ["--limit", "200", "--size", "6.7m"]
    stage("eval vs HFLM", [py, str(BENCH / "eval_throughput.py"), *ev, "--json", "-"], 120 if not smoke
          else 300, results)
    if not smoke:
        stage("104m seq 2048 fp16 memory", [py, str(BENCH / "train_throughput.py"), "--size", "104m", "--precision",
                                            "fp16", "--micro-batch", "8", "--steps", "2", "--warmup", "1",
                                            "--skip-transformers", "--json"], 90, results)
    results["seconds"] = round(time.time() - t_all, 1)
    results["goals"] = _goals(results)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results["goals"], indent=1))
    print(f"wrote {args.out} ({results['seconds']} s)")
    return 0


def _goals(results: dict) -> dict:
    """The issue's goals, checked against what was measured (None where a stage did not produce data)."""
    def res(stage_name: str) -> dict:
        d = (results.get(stage_name) or {}).get("data") or {}
        return d.get("results") or {}

    out: dict = {}
    r67 = res("train 6.7m bf16")
    g = next((v for k, v in r67.items() if k.startswith("gerbil")), None)
    t = r67.get("transformers GPTJForCausalLM")
    p = next((v for k, v in r67.items() if k.startswith("plain")), None)
    if g and t:
        out["6.7m vs transformers (goal >= 8x)"] = round(g["tok_s"] / t["tok_s"], 2)
    if g and p:
        out["6.7m vs plain compiled (goal >= 2x)"] = round(g["tok_s"] / p["tok_s"], 2)
    g77 = next((v for k, v in res("train 77m bf16").items() if k.startswith("gerbil")), None)
    if g77:
        out["77m MFU (goal >= 0.45)"] = g77.get("mfu")
    m = next((v for v in res("104m seq 2048 fp16 memory").values()), None)
    if m and m.get("peak_bytes"):
        out["104m seq 2048 fp16 peak GiB (goal <= 16)"] = round(m["peak_bytes"] / 2**30, 2)
    return out


if __name__ == "__main__":
    raise SystemExit(main())

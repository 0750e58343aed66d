"""The one device check for a session that has a GPU — built to return data in one shot, because a GPU may
be lent for ten minutes once.

    python3 benchmarks/gpu_check.py --out gpu-check              # one global deadline, default 480 s
    python3 benchmarks/gpu_check.py --out gpu-check --deadline 300 --stages device,loss
    python3 benchmarks/gpu_check.py --cpu-smoke --out /tmp/gc    # the script itself on a CPU, tiny shapes

Everything goes to the --out FOLDER: gpu_check.json (rewritten atomically after every stage and every
measured record, so a timeout or a kill loses nothing already measured), logs/STAGE.log (each stage's
whole output), runs/ (the records of the real training runs), triton/ (the fused loss kernels' PTX and
TTGIR, registers, spills, shared memory). Each measured model is also printed at once as one JSON line.

Stages, in order of value, each in its own process (benchmarks/gpu_stages.py; training in
benchmarks/gpu_stage_train.py) with the time left before
the deadline (a stage that would start with too little time left is recorded as skipped):
1. device — GPU, memory, SMs, torch / triton / CUDA / cuDNN versions, SDPA backends enabled;
2. loss kernels at 6.7m (131,072 tokens × 50,264) and 77m widths — each implementation's time, peak
   memory and gradient error vs an fp32 reference, Triton block variants, fp16 with the 65,536 scale;
3. training 6.7m, micro-batch 16 and 64 — gerbil's real loop (`gerbil train`) vs gerbil's model with the
   triton loss vs a plain compiled GPT-J (benchmarks/plain_gptj.py) vs transformers' GPT-J;
4. 77m MFU (gerbil's loop, and the plain compiled model for reference); 5. SDPA backends at head_dim 16 and 64; 6. gerbil vs transformers loss on the
   same weights; 7. 32m training; 8. fp16 at 6.7m; 9. 104m memory at context 2048 in fp16; 10. evaluation
   vs lm-eval (skipped without lm-eval or cached evaluation sets); 11. `pytest -m gpu` (skipped without
   pytest).

Recorded per model: tokens/s, MFU, peak memory, and which loss implementation and SDPA backend it used and
whether its compile fell back — for gerbil's loop read from the run's env.json / result.json `info`
(keys loss_impl, loss_impl_chosen, loss_impl_timings, sdpa_backend, sdpa_chosen, sdpa_timings,
compile_fallback: what `loss_impl: auto` and `sdpa_backend: auto` timed and chose on the device). Without CUDA (and without --cpu-smoke) it stops within seconds: one line saying why, and a JSON
whose top level has "skipped": REASON. It needs nothing beyond `pip install -e .` except what it says it
skips, and never downloads (the training data is a synthetic token store written on the spot).

Goals it reports against: ≥ 4.4M tok/s at 6.7m, ≥ 8× transformers and ≥ 2× the plain compiled model there;
≥ 45% MFU at 77m; fp16 gradients within 1% of fp32; 104m at context 2048 within 16 GB in fp16.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES_PY = ROOT / "benchmarks" / "gpu_stages.py"
JSON_NAME = "gpu_check.json"

# (name, gpu_stages.py arguments, cap in seconds, smoke arguments or None to skip in --cpu-smoke)
STAGES = [
    ("device", ["device"], 60, ["device"]),
    ("loss kernels", ["loss"], 150, ["loss"]),
    ("train 6.7m", ["train", "--size", "6.7m", "--micro-batches", "16,64"], 240,
     ["train", "--size", "3.3m", "--micro-batches", "2", "--precision", "fp32", "--only", "gerbil,plain,transformers"]),
    ("77m MFU", ["train", "--size", "77m", "--micro-batches", "16", "--only", "gerbil,plain"], 180, None),
    ("sdpa backends", ["sdpa"], 60, ["sdpa"]),
    ("gerbil vs transformers loss", ["parity"], 90, ["parity"]),
    ("train 32m", ["train", "--size", "32m", "--micro-batches", "16"], 180, None),
    ("fp16 6.7m", ["train", "--size", "6.7m", "--micro-batches", "16", "--precision", "fp16", "--only",
                   "gerbil,gerbil-triton"], 120, None),
    ("104m memory", ["memory"], 120, ["memory"]),
    ("evaluation vs lm-eval", ["eval"], 150, ["eval"]),
    ("pytest -m gpu", ["pytest"], 150, None),
]
MIN_STAGE_S = 20  # a stage is not started with less time than this left


class Report:
    """The JSON in --out, rewritten atomically (temporary file + rename) after every change."""

    def __init__(self, folder: Path, data: dict):
        self.path = folder / JSON_NAME
        self.data = data
        self.save()

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_stage(name: str, argv: list[str], timeout: float, out: Path, report: Report, smoke: bool) -> None:
    """One stage in its own process group; its records relayed (printed, stored, saved) as they come."""
    entry = report.data["stages"][name] = {"status": "running", "seconds": None, "log": f"logs/{_slug(name)}.log",
                                           "records": []}
    report.save()
    cmd = [sys.executable, str(STAGES_PY), *argv, "--out", str(out), "--budget", str(int(timeout))]
    if smoke:
        cmd.append("--smoke")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    t0 = time.time()
    status = "ok"
    with open(out / entry["log"], "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                             start_new_session=True)
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(p.stdout, q), daemon=True).start()
        while True:
            try:
                line = q.get(timeout=max(0.1, t0 + timeout - time.time()))
            except queue.Empty:
                line = ""
            if line is None:
                break
            if time.time() > t0 + timeout:
                status = "timeout"
                os.killpg(p.pid, signal.SIGKILL)
                break
            log.write(line)
            log.flush()
            _relay(line, name, entry, report)
        rc = p.wait()
    if status == "ok" and rc != 0:
        status = f"failed (exit {rc})"
    entry.update(status=status, seconds=round(time.time() - t0, 1))
    if status != "ok":
        entry["tail"] = (out / entry["log"]).read_text()[-2000:]
    report.save()
    print(f"[{entry['seconds']:6.1f} s] {name}: {status}", flush=True)


def _relay(line: str, stage: str, entry: dict, report: Report) -> None:
    if not line.startswith('{"record"'):
        return
    try:
        rec = json.loads(line)["record"]
    except ValueError:
        return
    entry["records"].append(rec)
    if "facts" in rec:
        report.data["device"] = rec["facts"]
        report.data["versions"].update({k: rec["facts"].get(k) for k in ("torch", "triton", "cuda", "cudnn")
                                        if rec["facts"].get(k) is not None})
    if "model" in rec:
        report.data["models"].append({"stage": stage, **rec})
        print(json.dumps({"stage": stage, **rec}, default=str), flush=True)
    report.data["goals"] = goals(report.data["models"])
    report.save()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def goals(models: list[dict]) -> dict:
    """The issue's goals against what was measured so far (absent where nothing was measured)."""
    by = {m["model"]: m for m in models if "error" not in m}
    out: dict = {}
    for mb in (16, 64):
        g = by.get(f"gerbil 6.7m mb{mb} bf16")
        t = by.get(f"transformers 6.7m mb{mb} bf16")
        p = by.get(f"plain 6.7m mb{mb} bf16")
        if g:
            out[f"6.7m mb{mb} tok/s (goal >= 4.4M)"] = g["tok_s"]
            if t:
                out[f"6.7m mb{mb} vs transformers (goal >= 8x)"] = round(g["tok_s"] / t["tok_s"], 2)
            if p:
                out[f"6.7m mb{mb} vs plain compiled (goal >= 2x)"] = round(g["tok_s"] / p["tok_s"], 2)
    g77 = by.get("gerbil 77m mb16 bf16")
    if g77:
        out["77m MFU (goal >= 0.45)"] = g77.get("mfu")
    fp16 = [m for m in models if m.get("dtype") == "fp16" and "grad_rel_err" in m]
    for m in fp16:
        out[f"{m['model']} max gradient error (goal <= 0.01)"] = max(m["grad_rel_err"].values())
    for m in models:
        if m["model"].startswith("memory 104m") and m.get("peak_gib") is not None:
            out[f"{m['model']} peak GiB (goal <= 14.9)"] = m["peak_gib"]
    return out


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "triton"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _cannot_run(report: Report, smoke: bool) -> str | None:
    """Why the check cannot run here (None: it can), after recording torch's and CUDA's versions."""
    try:
        import torch  # after the first JSON exists: even a broken torch leaves a record
    except ImportError as e:
        return f"torch is not importable by {sys.executable} ({e}); pip install -e . first"
    report.data["versions"].update(torch=torch.__version__, cuda=torch.version.cuda)
    if not smoke and not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-check", help="output FOLDER (JSON, logs, run records, Triton code)")
    ap.add_argument("--deadline", type=float, default=480.0, help="seconds for the whole check (default 480)")
    ap.add_argument("--stages", default=None, help="comma-separated stage names to run (default: all)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script, not a GPU")
    args = ap.parse_args(argv)
    t_start = time.time()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"gpu_check: --out {out} is a file; it must be a folder", file=sys.stderr)
        return 2
    (out / "logs").mkdir(parents=True, exist_ok=True)
    report = Report(out, {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "deadline_s": args.deadline,
                          "cpu_smoke": args.cpu_smoke, "python": sys.executable, "versions": _versions(),
                          "finished": False, "stages": {}, "models": [], "goals": {}})
    reason = _cannot_run(report, args.cpu_smoke)
    if reason:
        report.data.update(skipped=reason, finished=True, seconds=round(time.time() - t_start, 1))
        report.save()
        print(f"gpu_check: skipped: {reason}; wrote {out / JSON_NAME}")
        return 0
    wanted = set(filter(None, (args.stages or "").split(","))) or None
    for name, stage_argv, cap, smoke_argv in STAGES:
        if wanted and name not in wanted and stage_argv[0] not in wanted:
            continue
        if args.cpu_smoke and smoke_argv is None:
            report.data["stages"][name] = {"status": "skipped: not in --cpu-smoke"}
            continue
        left = args.deadline - (time.time() - t_start)
        if left < MIN_STAGE_S:
            report.data["stages"][name] = {"status": f"skipped: deadline ({left:.0f} s left)"}
            report.save()
            continue
        run_stage(name, smoke_argv if args.cpu_smoke else stage_argv, min(cap, left - 2), out, report, args.cpu_smoke)
    report.data.update(finished=True, seconds=round(time.time() - t_start, 1))
    report.save()
    print(json.dumps(report.data["goals"], indent=1))
    print(f"wrote {out / JSON_NAME} ({report.data['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

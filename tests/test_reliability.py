"""Nothing a user owns is lost and no result is silently wrong: the run lock, whole-run statistics over
resumes, a full disk during a checkpoint, leftover temporaries, refused continuations, resuming from
another working directory, strict JSON metrics, and a small kill -9 soak (benchmarks/soak.py runs the
long one)."""
from __future__ import annotations

import errno
import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gerbil.errors import GerbilError
from gerbil.lock import Lock
from gerbil.runs.rundir import RunDir
from gerbil.train import train
from helpers import TEST_SHA, make_store, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "store")


SLOW_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    real = T.train_step
    def slow(*a, **k):
        time.sleep(float(sys.argv[2]))
        return real(*a, **k)
    T.train_step = slow
    T.train(T.TrainConfig.from_dict(json.loads(sys.argv[1])))
""")


def _spawn(cfg, delay: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-c", SLOW_SCRIPT, json.dumps(cfg.to_dict()), str(delay)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, timeout=60.0):
    t0 = time.time()
    while not pred():
        if time.time() - t0 > timeout:
            raise TimeoutError
        time.sleep(0.05)


def test_a_second_process_on_a_run_is_refused_and_a_dead_holders_lock_taken_over(store, tmp_path):
    cfg = tiny_config(store, tmp_path)
    run = RunDir(tmp_path / "tiny")
    proc = _spawn(cfg, 0.5)
    try:
        _wait_for(lambda: run.lock.exists() and run.list_checkpoints() == [] and run.metrics.exists())
        for again in (cfg, tiny_config(store, tmp_path, resume=True)):
            with pytest.raises(GerbilError, match=rf"in use by pid {proc.pid} on {platform.node()}") as e:
                train(again)
            assert "\n" not in str(e.value)
        # the refused attempts wrote nothing: the holder's files are its own
        assert json.loads(run.lock.read_text())["pid"] == proc.pid
        _wait_for(lambda: len(run.list_checkpoints()) >= 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run.lock.exists()  # a dead holder's lock stays behind ...
    r = train(tiny_config(store, tmp_path, resume=True))  # ... and is taken over
    assert r.steps == 8 and not run.lock.exists()


def test_stale_lock_on_another_host_goes_after_its_heartbeat(tmp_path):
    lock_path = tmp_path / ".lock"
    lock_path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(GerbilError, match="in use by pid 1 on elsewhere"):
        Lock(lock_path, "run X").acquire()
    old = time.time() - 3600
    os.utime(lock_path, (old, old))  # no heartbeat for an hour
    with Lock(lock_path, "run X") as lock:
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
        lock.beat()
    assert not lock_path.exists()


KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import gerbil.train.loop as T
    kill_at, calls = int(sys.argv[2]), [0]
    real = T.train_step
    def step(*a, **k):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    T.train_step = step
    T.train(T.TrainConfig.from_dict(json.loads(sys.argv[1])))
""")


def test_result_and_checkpoint_describe_the_whole_run_after_a_resume(store, tmp_path):
    straight = train(tiny_config(store, tmp_path / "a"))
    cfg = tiny_config(store, tmp_path / "b")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg.to_dict()), "7"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = train(tiny_config(store, tmp_path / "b", resume=True))
    assert resumed.train_loss == straight.train_loss  # the last 10 steps of the whole run, not of the session
    meta = RunDir(resumed.run_dir).latest_meta()
    assert meta["train_loss"] == RunDir(straight.run_dir).latest_meta()["train_loss"]
    saved = json.loads((resumed.run_dir / "result.json").read_text())
    assert saved["tokens"] == straight.tokens and saved["train_loss"] == straight.train_loss
    # seconds cover the steps of both sessions (the first 4 steps ran in the killed process)
    assert resumed.seconds > 0 and resumed.tokens_per_second == pytest.approx(resumed.tokens / resumed.seconds)
    from gerbil.eval.table import row_for_run

    assert row_for_run(resumed.run_dir)["Training Loss ↓"] == row_for_run(straight.run_dir)["Training Loss ↓"]


def test_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(store, tmp_path, monkeypatch, capsys):
    import torch

    from gerbil.train import checkpoint as ckpt

    real_save, calls = torch.save, [0]

    def full_disk(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(GerbilError, match="no space left on the device while writing checkpoint") as e:
        train(tiny_config(store, tmp_path))
    assert "\n" not in str(e.value)
    run = RunDir(tmp_path / "tiny")
    assert [p.name for p in run.list_checkpoints()] == ["step-00000004"]  # the previous one, intact
    assert run.latest_checkpoint().name == "step-00000004"
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".tmp")]  # no half-written temp
    assert not run.lock.exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert train(tiny_config(store, tmp_path, resume=True)).steps == 8
    del ckpt


def test_leftover_temporaries_are_cleaned_at_the_next_start(store, tmp_path):
    train(tiny_config(store, tmp_path, tokens=128 * 4))
    run = RunDir(tmp_path / "tiny")
    orphan = run.checkpoints / ".tmp-step-00000009-99999"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"x" * 1000)
    (run.checkpoints / ".latest.tmp-99999").write_text("step-00000009")
    train(tiny_config(store, tmp_path, tokens=128 * 4, resume=True))
    assert not [p for p in run.checkpoints.iterdir() if p.name.startswith(".")]


def test_continuations_refuse_what_they_cannot_honour(store, tmp_path):
    from gerbil.data.store import TokenStore

    train(tiny_config(store, tmp_path, tokens=128 * 4, name="par"))
    base = dict(tokens=128 * 6, from_run="par", name="child", cls="E", model=None)
    with pytest.raises(GerbilError, match=r"--from: --size 6.7m is not the parent's model"):
        train(tiny_config(store, tmp_path, size="6.7m", **base))
    with pytest.raises(GerbilError, match="--from: seq_len 16 differs from the parent run's 32"):
        train(tiny_config(store, tmp_path, **dict(base, seq_len=16)))
    other = make_store(tmp_path / "other", seed=5)
    with pytest.raises(GerbilError, match="not the one this run trained on"):
        train(tiny_config(store, tmp_path, **dict(base, seq_len=None, data=str(other))))
    # a Blender objective on a model whose vocabulary has no room for its special tokens
    with pytest.raises(GerbilError, match="Blender special tokens"):
        train(tiny_config(store, tmp_path, objective="blender", name="b"))
    assert TokenStore.open(store)  # untouched


def test_resume_from_another_working_directory(store, tmp_path, monkeypatch):
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(store, work / "store")
    monkeypatch.chdir(work)
    cfg = tiny_config(Path("store"), Path("runs"), tokens=128 * 4, checkpoint_every=128 * 2)  # relative paths
    train(cfg)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    conf = RunDir(work / "runs" / "tiny").read_config()
    assert Path(conf["train"]["data"]).is_absolute() and Path(conf["data"]["path"]).is_absolute()
    # nothing left to train, but the run is found and its store opened from here
    r = train(tiny_config(Path("unused"), work / "runs", tokens=128 * 4, checkpoint_every=128 * 2, resume=True,
                          data=None))
    assert r.tokens == 128 * 4


def test_metrics_lines_are_strict_json(tmp_path):
    run = RunDir(tmp_path)
    run.start_metrics()
    run.append_metrics({"step": 1, "loss": float("nan"), "grad_norm": float("inf")})
    line = run.metrics.read_text().strip()
    assert line == '{"step": 1, "loss": null, "grad_norm": null}'
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))


def test_soak_smoke(tmp_path):
    """benchmarks/soak.py with 3 kills: every kill -9 (at random steps, checkpoint writes included)
    followed by --resume auto ends bitwise identical to an uninterrupted run; and one suite worker killed
    and requeued with its own pid in the dead worker's locks finishes, bitwise identical."""
    soak = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    out = subprocess.run([sys.executable, str(soak), "--kills", "3", "--seed", "1", "--out", str(tmp_path),
                          "--no-disk", "--no-prepare", "--requeues", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "3 kills, 3 resumes, 3 bitwise identical, 0 data lost" in out.stdout
    assert "suite: 1 workers killed and requeued with a reused pid, 1 finished, 1 bitwise identical" in out.stdout


del TEST_SHA


def test_a_dead_prepares_staging_dir_is_judged_by_the_lock_rule_not_by_its_pid_alone(tmp_path):
    from gerbil.lock import identity, process_start
    from helpers import make_store

    def leftover(name: str, holder: dict) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "train.bin.tmp").write_bytes(b"\0" * 64)
        (tmp_path / f"{name}.lock").write_text(json.dumps(holder))
        return d

    # a killed writer whose pid now belongs to another live process (pid 1: a restarted container's worker)
    reused = leftover(".store.partial-1", {"pid": 1, "host": platform.node(), **identity(1),
                                           "start": (process_start(1) or 0) + 12345})
    # a live writer on another host sharing the filesystem (its pid means nothing here; its heartbeat is fresh)
    elsewhere = leftover(".store.partial-999999", {"pid": 999999, "host": "another-host"})
    make_store(tmp_path / "store", n_docs=20)
    assert not reused.exists() and not (tmp_path / ".store.partial-1.lock").exists()
    assert elsewhere.is_dir() and (tmp_path / ".store.partial-999999.lock").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".store.partial-999999", ".store.partial-999999.lock",
                                                          "store"]


def test_train_help_says_a_flipped_token_needs_prepare_verify(capsys):
    """Known and kept: opening a store samples its fingerprint, so a flipped in-vocabulary token in train.bin
    trains silently; `gerbil train --help` says that `gerbil prepare --verify` finds it."""
    from gerbil.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "flipped token" in text and "gerbil prepare --verify STORE" in text

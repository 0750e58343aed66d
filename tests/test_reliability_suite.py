"""Reliability of suites, locks and the launcher (issue 19): a suite export never replaces files it did not
write and writes nothing when it refuses; a lock or claim naming a reused pid (a restarted container's pid
1, a wrapped-around pid) is taken over, a live holder never is, and a waiting worker says what it waits on;
a run whose checkpoints are gone is never reported finished; a full disk inside the optimizer state's
write is said plainly and the suite resumes; bad counts, typed records, directories where files belong,
duplicated or non-UTF-8 recipe keys and out-of-range flags are one-line errors; a killed rank of
`--nproc 2` ends with one line saying what happened and how to continue."""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gerbil.errors import GerbilError
from gerbil import lock as locks
from gerbil.lock import Lock
from gerbil.suite.runner import RunOptions, run_suite
from gerbil.suite.spec import build_suite, load_suite
from gerbil.suite.state import SuiteDir, format_states, run_states
from helpers import TEST_SHA, TINY, full_disk_open, make_store, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_PROC = Path("/proc/self/stat").is_file() and Path("/proc/sys/kernel/random/boot_id").is_file()


def _suite_dict(store: Path) -> dict:
    """Run `r1` (8 steps of 128 tokens) and its star continuation `r2` (+4 steps), tiny model, test store."""
    return {"name": "rel", "data": str(store), "models": {"t": {**TINY, "n_head": 2, "vocab_size": 1024, "seq_len": 64}},
            "seq_len": 32, "batch_tokens": 128, "micro_batch": 2, "lr": 3e-3, "checkpoint_every": 512,
            "eval_every": 100000, "val_tokens": 256, "tokenizer_sha256": TEST_SHA, "eval": {"tasks": []},
            "runs": [{"name": "r1", "size": "t", "tokens": 1024}, {"name": "r2", "parent": "r1", "tokens": 1536}]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """The suite trained once (~5 s); each test works on a copy."""
    root = tmp_path_factory.mktemp("suite")
    store = make_store(root / "store")
    path = root / "rel.yaml"
    path.write_text(yaml.safe_dump(_suite_dict(store), sort_keys=False))
    outcome = run_suite(load_suite(path), root / "out", RunOptions(device="cpu", poll=0.05))
    assert outcome.ok
    return {"file": path, "dir": root / "out"}


@pytest.fixture
def suite_dir(finished, tmp_path) -> SuiteDir:
    out = tmp_path / "out"
    shutil.copytree(finished["dir"], out)
    return SuiteDir(out)


def _states(sdir: SuiteDir) -> dict[str, tuple[str, str]]:
    return {n: (s.status, s.detail) for n, s in run_states(sdir, sdir.read_suite()).items()}


# ------------------------------------------------------------------- suite export over a user's files (1, 22)
def test_suite_export_never_replaces_files_it_did_not_write(suite_dir, tmp_path):
    from gerbil.suite.publish import export_suite

    for name in ("README.md", "table.md", "table.csv", "upload.sh"):
        out = tmp_path / f"user-{name}"
        out.mkdir()
        (out / name).write_text("my own notes\n")
        with pytest.raises(GerbilError, match=rf"holds {name}, not written by a gerbil suite export .*nothing was "
                                              r"written"):
            export_suite(suite_dir.path, out, tokenizer=False)
        assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == "my own notes\n"
    # a folder of the user's where a run's export goes: refused before any run is written
    out = tmp_path / "user-folder"
    (out / "r2").mkdir(parents=True)
    (out / "r2" / "weights.bin").write_text("mine")
    with pytest.raises(GerbilError, match=r"holds r2/, not written"):
        export_suite(suite_dir.path, out, tokenizer=False)
    assert sorted(p.name for p in out.iterdir()) == ["r2"]
    # its own files are replaced by the next export; one edited since is the user's again
    out = tmp_path / "export"
    res = export_suite(suite_dir.path, out, tokenizer=False)
    assert [p.name for p in res.exports] == ["r1", "r2"] and (out / "README.md").is_file()
    export_suite(suite_dir.path, out, tokenizer=False)
    (out / "README.md").write_text((out / "README.md").read_text() + "\nmy addition\n")
    with pytest.raises(GerbilError, match="holds README.md, not written"):
        export_suite(suite_dir.path, out, tokenizer=False)
    assert (out / "README.md").read_text().endswith("my addition\n")


def test_suite_export_skips_a_run_whose_checkpoints_are_gone(suite_dir, tmp_path):
    from gerbil.suite.publish import export_suite

    shutil.rmtree(suite_dir.run_dir("r1").checkpoints)
    res = export_suite(suite_dir.path, tmp_path / "export", tokenizer=False)
    assert res.skipped == {"r1": "recorded done, but its final checkpoint is gone"}
    assert [p.name for p in res.exports] == ["r2"]
    assert "| r2 |" in (tmp_path / "export" / "table.md").read_text()


# ------------------------------------------------------------------- runs whose checkpoints are gone (14)
def test_a_run_whose_checkpoints_or_directory_are_gone_is_not_done(suite_dir):
    shutil.rmtree(suite_dir.run_dir("r1").checkpoints)
    states = _states(suite_dir)
    assert states["r1"][0] == "pending" and "recorded done, but its final checkpoint is gone" in states["r1"][1]
    assert states["r2"] == ("done", "")  # trained from r1 before; its own checkpoints are there
    shutil.rmtree(suite_dir.run_dir("r1").path)
    assert _states(suite_dir)["r1"][0] == "pending"
    # the same command trains it again, to the same weights
    outcome = run_suite(suite_dir.read_suite(), suite_dir.path, RunOptions(device="cpu", poll=0.05))
    assert outcome.statuses == {"r1": "done", "r2": "done"}
    assert suite_dir.run_dir("r1").latest_checkpoint() is not None


# ------------------------------------------------------------------- a wrongly typed record (21)
def test_a_wrongly_typed_registry_record_is_a_warning_not_a_traceback(suite_dir, caplog, capsys):
    from gerbil.suite.command import main

    path = suite_dir.registry / "r1.json"
    rec = json.loads(path.read_text())
    rec.update(result="x", attempts="many", worker=5, eval=[1], status=3)
    path.write_text(json.dumps(rec))
    with caplog.at_level(logging.WARNING):
        states = run_states(suite_dir, suite_dir.read_suite())
    assert "'result' should be a mapping, not 'x'; ignoring it" in caplog.text
    assert "'attempts' should be an integer" in caplog.text
    assert states["r1"].status == "pending" and states["r1"].attempts == 0  # no status: never finished
    format_states(states)
    assert main(["status", str(suite_dir.path)]) == 0
    path.write_text(json.dumps(dict(rec, status="done", result={"val_loss": "low"})))
    assert "r1   done" in format_states(run_states(suite_dir, suite_dir.read_suite()))  # the metrics' val loss


# ------------------------------------------------------------------- a directory where a claim belongs (25)
def test_a_directory_where_a_claim_file_belongs_is_one_line_and_kept(suite_dir):
    bad = suite_dir.claims / "r1.lock"
    bad.mkdir()
    (bad / "x").write_text("mine")
    with pytest.raises(GerbilError, match=r"r1.lock is a directory where the lock file of suite run r1 belongs"):
        run_states(suite_dir, suite_dir.read_suite())
    with pytest.raises(GerbilError, match="is a directory"):
        suite_dir.claim("r1").acquire()
    old = time.time() - 3600  # even when old: never taken for a stale claim and removed
    os.utime(bad, (old, old))
    with pytest.raises(GerbilError, match="is a directory"):
        suite_dir.claim("r1").acquire()
    assert (bad / "x").read_text() == "mine"


# ------------------------------------------------------------------- locks and reused pids (6)
def _write_lock(path: Path, info: dict, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_lock_naming_this_process_is_an_earlier_process_s(tmp_path):
    """A restarted container's worker is pid 1 again: a lock naming its own pid that it does not hold was
    left by the process before it."""
    path = _write_lock(tmp_path / "a.lock", {"pid": os.getpid(), "host": platform.node(), "since": "then"})
    lock = Lock(path, "run a").acquire()
    assert lock.held and json.loads(path.read_text())["since"] != "then"
    with pytest.raises(GerbilError, match=r"run a is in use by pid \d+ .*last heartbeat \d+ s ago"):
        Lock(path, "run a").acquire()  # held by this process now: really in use
    lock.release()
    assert not path.exists()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc (process start times)")
def test_a_pid_reused_by_another_process_is_taken_over_a_live_holder_never(tmp_path):
    me = locks.identity()
    reused = _write_lock(tmp_path / "b.lock", {"pid": 1, "host": platform.node(), "since": "then",
                                               **dict(me, start=(locks.process_start(1) or 0) + 1)})
    assert Lock(reused, "run b").acquire().held  # pid 1 lives, but is not the process that took the lock
    rebooted = _write_lock(tmp_path / "c.lock", {"pid": 1, "host": platform.node(), "since": "then",
                                                 **dict(locks.identity(1), boot="another-boot")})
    assert Lock(rebooted, "run c").acquire().held
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _write_lock(tmp_path / "d.lock", {"pid": child.pid, "host": platform.node(), "since": "then",
                                                 **locks.identity(child.pid)}, age=3600)
        with pytest.raises(GerbilError, match=rf"in use by pid {child.pid} .*last heartbeat 3600 s ago"):
            Lock(live, "run d").acquire()  # its process lives: no heartbeat age makes it stale
    finally:
        child.kill()
        child.wait()
    assert Lock(live, "run d").acquire().held  # and once it is gone


def test_without_an_identity_the_heartbeat_decides(tmp_path):
    """A lock of an older gerbil (or written without /proc) naming a live pid: in use while it beats,
    presumed dead after `stale_after` seconds without a heartbeat."""
    info = {"pid": 1, "host": platform.node(), "since": "then"}
    fresh = _write_lock(tmp_path / "e.lock", info)
    with pytest.raises(GerbilError, match="in use by pid 1"):
        Lock(fresh, "run e").acquire()
    stale = _write_lock(tmp_path / "f.lock", info, age=200)
    assert Lock(stale, "run f").acquire().held


def test_a_held_lock_beats_by_itself(tmp_path):
    lock = Lock(tmp_path / "g.lock", "run g", beat_every=0.05).acquire()
    try:
        os.utime(lock.path, (time.time() - 100, time.time() - 100))
        time.sleep(0.5)
        assert lock.age() < 5
    finally:
        lock.release()


def test_a_requeued_worker_with_the_dead_one_s_pid_does_not_wait_on_itself(suite_dir):
    """The documented requeue flow after a crash in a container: the record says running, the claim and
    the run lock name the worker's pid — which the requeued worker has again."""
    rec = suite_dir.record("r2")
    suite_dir.write_record("r2", dict(rec, status="running"))
    dead = {"pid": os.getpid(), "host": platform.node(), "since": "then"}
    _write_lock(suite_dir.claims / "r2.lock", dead)
    _write_lock(suite_dir.run_dir("r2").lock, dead)
    status, detail = _states(suite_dir)["r2"]
    assert status == "pending" and detail.startswith("interrupted (running)")
    outcome = run_suite(suite_dir.read_suite(), suite_dir.path, RunOptions(device="cpu", poll=0.05))
    assert outcome.statuses == {"r1": "done", "r2": "done"}


def test_resume_auto_takes_over_a_lock_of_pid_1(tmp_path):
    """`gerbil train --resume auto` after a crash: the run lock names pid 1 (alive: another process now)."""
    from gerbil.train import train

    store = make_store(tmp_path / "store")
    run = tmp_path / "runs" / "tiny"
    stale = {"pid": 1, "host": platform.node(), "since": "then"}
    if HAS_PROC:
        stale.update(locks.identity(1), start=(locks.process_start(1) or 0) + 1)
    _write_lock(run / ".lock", stale, age=0 if HAS_PROC else 200)
    r = train(tiny_config(store, tmp_path / "runs", tokens=256, resume=True))
    assert r.tokens == 256 and not (run / ".lock").exists()


def test_a_waiting_worker_says_what_it_waits_on(suite_dir, caplog):
    rec = suite_dir.record("r2")
    suite_dir.write_record("r2", dict(rec, status="running", worker={"id": "w7"}))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": child.pid, "host": platform.node(), "since": "then", **locks.identity(child.pid)}
        if not HAS_PROC:  # only the heartbeat speaks for it: keep it fresh
            info = {"pid": child.pid, "host": platform.node(), "since": "then"}
        _write_lock(suite_dir.claims / "r2.lock", info)
        states = run_states(suite_dir, suite_dir.read_suite())
        from gerbil.suite.state import waiting_on

        line = waiting_on(states)
        assert line.startswith(f"r2 (running on w7: pid {child.pid} on {platform.node()} (since then, last heartbeat")
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------- a full disk in the state write (27)
def test_a_full_disk_inside_the_optimizer_state_is_said_plainly(tmp_path, monkeypatch):
    """torch writes state.pt from C++ and reports ENOSPC as "[enforce fail at inline_container.cc] ...
    unexpected pos"; the checkpoint writer must say "no space left" (what the suite stops on, instead of
    recording the run failed). The disk is emulated: Python's write raises ENOSPC past 4 kB."""
    import torch

    from gerbil.train import checkpoint as C

    monkeypatch.setattr(C, "open", full_disk_open(4096), raising=False)
    model = torch.nn.Linear(64, 64)
    with pytest.raises(GerbilError, match=r"^no space left on the device while writing checkpoint .*step-00000003$"):
        C.save_checkpoint(tmp_path, 3, model, {"optimizer": {"m": torch.zeros(50_000)}}, {"tokens": 1})
    assert list(tmp_path.iterdir()) == []  # no temporary left, no `latest`


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_tmpfs_inside_the_optimizer_state(tmp_path):
    import torch

    from gerbil.train.checkpoint import save_checkpoint

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:  # the weights (16 kB) fit, the state (400 kB) does not
        with pytest.raises(GerbilError, match=r"^no space left on the device while writing checkpoint"):
            save_checkpoint(mnt, 1, torch.nn.Linear(64, 64), {"m": torch.zeros(100_000)}, {"tokens": 1})
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ------------------------------------------------------------------- counts, recipes, flags (18, 19, 28)
def test_huge_counts_are_one_line_errors(tmp_path, capsys):
    from gerbil.cli import main
    from gerbil.options import OptionError
    from gerbil.train.config import TrainConfig
    from gerbil.units import parse_count

    assert parse_count("1e18") == 10**18 and parse_count("1.5e3") == 1500 and parse_count("2.5k") == 2500
    for text in ("1e400", "1e30", "2e18", 10**400):
        with pytest.raises(ValueError, match=r"too large \(at most 1e18\)"):
            parse_count(text)
    assert main(["train", "--size", "6.7m", "--tokens", "1e400"]) == 2
    assert "gerbil train: error: --tokens: count '1e400' is too large (at most 1e18)" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    for value in ("1e400", "9" * 400):
        recipe.write_text(f"size: 6.7m\ntokens: {value}\n")
        with pytest.raises(OptionError, match="^tokens: .*too large"):
            TrainConfig.from_yaml(recipe)
    with pytest.raises(OptionError, match="^lr: a number of 400 digits is too large"):
        TrainConfig.from_dict({"lr": 10**399})
    d = _suite_dict(tmp_path)
    d["runs"][0]["tokens"] = "1e400"
    with pytest.raises(GerbilError, match=r"run r1: tokens: count '1e400' is too large"):
        build_suite(d, "s.yaml")


def test_duplicated_and_non_utf8_keys_name_the_file(tmp_path):
    from gerbil.options import OptionError
    from gerbil.train.config import TrainConfig

    recipe = tmp_path / "dup.yaml"
    recipe.write_text("size: 6.7m\nlr: 0.01\nseed: 1\nlr: 0.02\n")
    with pytest.raises(OptionError, match=r"dup.yaml: key 'lr' is given twice \(lines 2 and 4\)"):
        TrainConfig.from_yaml(recipe)
    suite = tmp_path / "dup-suite.yaml"
    suite.write_text("name: s\nruns:\n  - {name: a, size: 6.7m, tokens: 1M, tokens: 2M}\n")
    with pytest.raises(GerbilError, match="dup-suite.yaml: key 'tokens' is given twice"):
        load_suite(suite)
    merged = tmp_path / "merge.yaml"  # a YAML merge, then an override: not a duplicate
    merged.write_text("base: &b {lr: 1}\nrun: {<<: *b, lr: 2}\n")
    from gerbil.options import read_yaml_mapping

    assert read_yaml_mapping(merged, "x") == {"base": {"lr": 1}, "run": {"lr": 2}}
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"size: 6.7m\n# caf\xe9\n")
    with pytest.raises(OptionError, match=r"latin.yaml: a recipe must be UTF-8 text; byte 0xe9 at line 2"):
        TrainConfig.from_yaml(latin)
    with pytest.raises(GerbilError, match=r"latin.yaml: a suite must be UTF-8 text"):
        load_suite(latin)


@pytest.mark.parametrize("argv, message", [
    (["train", "--size", "6.7m", "--nproc", "0"], "gerbil train: error: --nproc: must be > 0, got 0"),
    (["eval", "no-such-run", "--nproc", "0"], "gerbil eval: error: --nproc: must be > 0, got 0"),
    (["eval", "no-such-run", "--batch-size", "0"], "gerbil eval: error: --batch-size: must be > 0, got 0"),
    (["suite", "run", "x.yaml", "--out", "d", "--poll", "-5"], "gerbil suite: error: --poll: must be > 0, got -5.0"),
])
def test_out_of_range_flags_are_one_line(argv, message, capsys):
    from gerbil.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_cascade_line_never_mixes_scaled_and_unscaled_ratios():
    from gerbil.suite.planning import cascade_line, cascade_savings

    d = _suite_dict(Path("unused"))
    d.update(budget_scale=0.001, runs=[], grid={"sizes": ["t"], "classes": ["A", "B"], "cascade": True})
    suite = build_suite(d, "s.yaml")
    c = cascade_savings(suite)[0].to_dict()
    line = cascade_line(c, suite.budget_scale)
    trained = f"({c['ratio']:.3f}x; {c['tokens_per_param']:.4g} vs {c['independent_tokens_per_param']:.4g} tokens per parameter;"
    assert trained in line and "the classes' nominal 46 vs 62, 0.74x, here scaled by 0.001)" in line


def test_the_progress_line_s_rate_is_training_only_like_the_summary(caplog):
    from gerbil.train.progress import Progress

    p = Progress(total=256, initial=0, enabled=False, name="x")
    p.t0 -= 100.0  # 100 s of wall time so far, nearly all of it validation
    with caplog.at_level(logging.INFO, logger="gerbil.train.progress"):
        p.update(128, 1.0, 1000.0, 2.0)
    assert ", 1000 tok/s, ETA" in caplog.text


# ------------------------------------------------------------------- a killed rank (26)
def test_a_killed_rank_ends_with_one_line_and_the_resume_command(tmp_path, capfd):
    from gerbil.train.distributed import failure_summary, launch

    script = tmp_path / "rank.py"
    script.write_text("import os, signal, time\n"
                      "if os.environ['RANK'] == '1':\n    time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)\n"
                      "time.sleep(60)\n")
    with pytest.raises(GerbilError) as e:
        launch(2, ["train", "--config", "my recipe.yaml"], target=[str(script)])
    assert str(e.value).startswith("rank 1 of 2 was killed by signal 9 (SIGKILL) (pid ")
    assert str(e.value).endswith("and torchrun stopped the job; the run keeps its latest checkpoint — continue it "
                                 "with: gerbil train --nproc 2 --config 'my recipe.yaml' --resume auto")
    assert "Root Cause" in capfd.readouterr().err  # torchrun's own report passed through
    exited = "Root Cause (first observed failure):\n[0]:\n  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 7)\n"
    assert failure_summary(exited, 2, ["eval", "run", "--tasks", "seed"], 1) == (
        "rank 0 of 2 exited with status 1 (its error is above) (pid 7), and torchrun stopped the job; run it again "
        "with: gerbil eval --nproc 2 run --tasks seed")


# ------------------------------------------------ suite file versions, another suite, a user's run (11)
def _suite_file(tmp_path: Path, store: Path, name: str = "rel", lr: float = 3e-3) -> Path:
    d = dict(_suite_dict(store), name=name, lr=lr)
    path = tmp_path / f"{name}-{lr}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_a_worker_with_an_older_suite_file_stops_instead_of_mixing_versions(finished, tmp_path):
    from gerbil.suite.runner import SuiteStopped, Worker, start_suite

    store = finished["file"].parent / "store"
    v1, v2 = load_suite(_suite_file(tmp_path, store, lr=0.01)), load_suite(_suite_file(tmp_path, store, lr=0.02))
    out = tmp_path / "out"
    sdir, stores = start_suite(v1, out)  # worker A starts with v1 ...
    start_suite(v2, out)  # ... worker B with v2 before A has claimed anything: suite.json says v2
    a = Worker(v1, sdir, RunOptions(device="cpu", poll=0.05), stores)
    with pytest.raises(SuiteStopped, match=r"run r1 .* lr 0.01 differs from suite.json's 0.02; another version of "
                                           r"the suite file was started") as e:
        a._work_on(v1.get("r1"))
    assert "\n" not in str(e.value)
    assert sdir.record("r1") is None and not sdir.run_dir("r1").path.exists()  # nothing trained with v1
    assert not sdir.claim("r1").path.exists()  # and the claim released


def test_suite_run_over_another_suite_s_directory_is_refused(suite_dir, tmp_path):
    before = suite_dir.suite_json.read_text()
    other = load_suite(_suite_file(tmp_path, Path(json.loads(before)["data"] or "."), name="other"))
    with pytest.raises(GerbilError, match=r"holds the suite 'rel', not 'other': give another --out"):
        run_suite(other, suite_dir.path, RunOptions(device="cpu", poll=0.05))
    assert suite_dir.suite_json.read_text() == before
    assert {n: s for n, (s, _) in _states(suite_dir).items()} == {"r1": "done", "r2": "done"}


def test_a_user_s_own_run_under_the_suite_s_runs_is_never_adopted(finished, tmp_path):
    store = finished["file"].parent / "store"
    out = tmp_path / "out"
    mine = out / "runs" / "r1"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("name: r1\nlr: 0.5\n")
    (mine / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    outcome = run_suite(load_suite(_suite_file(tmp_path, store)), out, RunOptions(device="cpu", poll=0.05))
    assert outcome.statuses == {"r1": "failed", "r2": "blocked"}
    reason = SuiteDir(out).record("r1")["reason"]
    assert reason == f"{mine} holds a run the suite did not start (your own?): move it away, then run with " \
                     f"--retry-failed"
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "metrics.jsonl"]
    assert (mine / "config.yaml").read_text() == "name: r1\nlr: 0.5\n"
    # the suite's table lists both runs, neither started (none is left out, the stranger's run is not read)
    from gerbil.suite.results import suite_records
    from gerbil.eval.table import render

    sdir = SuiteDir(out)
    table = render(*suite_records(sdir, sdir.read_suite())[:1], "md")
    rows = [ln for ln in table.splitlines() if ln.startswith("| r")]
    assert [r.split(" | ")[0] for r in rows] == ["| r1", "| r2"] and all("| not started |" in r for r in rows)
    assert (out / "table.md").is_file()  # finish wrote the table although no run has a checkpoint


def test_suite_table_lists_an_unfinished_run(suite_dir):
    from gerbil.eval.table import render
    from gerbil.suite.results import suite_records

    r1 = suite_dir.run_dir("r1")
    shutil.rmtree(r1.list_checkpoints()[-1])  # back to its checkpoint at 512 of 1,024 tokens
    table = render(suite_records(suite_dir, suite_dir.read_suite())[0], "md")
    row = next(ln for ln in table.splitlines() if ln.startswith("| r1 "))
    assert "| unfinished (512 of 1k) |" in row


def test_a_suite_claim_beats_at_the_worker_s_heartbeat(tmp_path):
    sdir = SuiteDir(tmp_path)
    claim = sdir.claim("r1", beat_every=0.05).acquire()
    try:
        os.utime(claim.path, (0, 0))
        time.sleep(0.3)
        assert claim.age() < 5
    finally:
        claim.release()

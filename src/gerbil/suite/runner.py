"""`gerbil suite run`: one worker that trains and evaluates a suite's runs until every run is done, failed
or blocked — started once, or N times on the same directory (one per GPU, or a Slurm job array on a
shared filesystem) to split the runs.

How workers never train a run twice: a worker claims a run (`gerbil.suite.state.Claim`, an O_EXCL file;
its own heartbeat thread refreshes its mtime), re-reads the run's record *under the claim* (another worker may
have finished it since the last look) and only then works on it; it writes the record `done` before it
releases the claim. A dead worker's claim is taken over (same host: its process is gone, its pid reused
by another; elsewhere: no heartbeat for 2 minutes; `gerbil.lock`) and its run resumes from its latest checkpoint (`TrainConfig.resume`): training
is exactly resumable, so an interrupted suite ends with the same weights as an uninterrupted one.

What a worker does with a claimed run: record it `running` (with the options it is trained with: a
changed suite file is refused run by run, naming the field), train it (a star run continues its parent's
run directory; a cascade branch the trunk checkpoint at its branch point), record `evaluating`, evaluate
it on the suite's tasks (each task skipped when a current result exists), record `done`. A run that fails
(non-finite loss, unreadable data, ...) is recorded `failed` with its reason and the suite goes on with
what does not depend on it; a full disk stops the worker with a one-line error and loses nothing (the
record stays `running`, the checkpoints are intact, the next start resumes).
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbil.data.builtin import CORPORA, builtin_store
from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_json, mkdir
from gerbil.lock import STALE_AFTER_S, Lock
from gerbil.options import Options, opt, refuse_changes, section
from gerbil.runs.rundir import RunDir, kind
from gerbil.suite.records import RunSpec, Suite
from gerbil.suite.results import cascade_report, write_tables
from gerbil.suite.state import (TERMINAL, SuiteDir, branch_checkpoint, default_worker_id, evals_missing, is_trained,
                                now, parent_ready, run_states, waiting_on)
from gerbil.train.config import TrainConfig

log = logging.getLogger(__name__)


@section("this worker (never what is trained: that is the suite file's)")
class RunOptions(Options):
    """How a worker runs (never *what* is trained: that is the suite file's); `gerbil suite run`'s flags."""

    _what = "suite worker option"

    device: str = opt("auto", "auto, cpu, cuda, cuda:N — where this worker trains")
    worker: str | None = opt(None, "this worker's name in the registry and logs (default: slurm-JOB_TASK, else "
                                   "HOST-PID)", metavar="NAME")
    poll: float = opt(10.0, "seconds between looks while the remaining runs wait on other workers",
                      check="positive", metavar="S")
    heartbeat: float = opt(15.0, "seconds between claim heartbeats (well under the 120 s takeover)",
                           check="positive", cli=False)
    stale_after: float = opt(STALE_AFTER_S, "seconds without a heartbeat after which a claim is taken over",
                             check="positive", cli=False)
    log: str | None = opt(None, "also mirror metrics to: tensorboard, wandb (comma-separated; optional extras; "
                                "WANDB_MODE=offline works without a network)", metavar="LOGGERS")
    progress: bool = opt(False, "progress bars instead of log lines")
    retry_failed: bool = opt(False, "try runs recorded as failed once more")
    evaluate: bool = opt(True, "evaluate each finished run on the suite's tasks (--no-eval: train only; leave "
                               "the eval columns pending)", flag="--eval")


@dataclass
class SuiteOutcome:
    """What `run_suite` leaves behind: every run's final status, and where the table went."""

    statuses: dict[str, str]
    table_md: Path | None = None
    table_csv: Path | None = None
    cascades: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.statuses.items() if s == "failed"]

    @property
    def blocked(self) -> list[str]:
        return [n for n, s in self.statuses.items() if s == "blocked"]

    @property
    def ok(self) -> bool:
        return all(s == "done" for s in self.statuses.values())


class SuiteStopped(GerbilError):
    """The worker cannot go on (a full disk): one line, nothing recorded as failed."""


# ------------------------------------------------------------------------------------------ preparing
def check_changes(sdir: SuiteDir, suite: Suite) -> None:
    """A run already started with other options is refused, naming the first field that differs (never
    silently mixed; `gerbil.options.refuse_changes`, the wording of every verb that continues a run);
    runs new to the file are simply pending."""
    if sdir.exists():
        there = sdir.read_suite()
        if there.name != suite.name:
            raise GerbilError(f"{sdir.path} holds the suite {there.name!r}, not {suite.name!r}: give another --out "
                              f"(its runs are left as they are)")
    for spec in suite.runs:
        rec = sdir.record(spec.name)
        if not rec or "options" not in rec:
            continue
        mine = dict(spec.train_options(), parent=spec.parent, branch_at=spec.branch_at)
        theirs = dict(rec.get("options") or {}, parent=rec.get("parent"), branch_at=rec.get("branch_at"))
        refuse_changes(mine, theirs, action="the suite", where=f"run {spec.name}",
                       advice="restore the suite file, or give the changed run a new name")


def check_current(sdir: SuiteDir, spec: RunSpec) -> None:
    """Before a worker trains `spec`: the directory's suite.json (the latest worker's suite file) has the
    run with the same options — else another version of the suite file was started on this directory
    since, and this worker stops (one line) instead of training the run as the directory no longer says."""
    try:
        there = sdir.read_suite().get(spec.name)
    except KeyError:
        raise SuiteStopped(f"run {spec.name} is not in {sdir.suite_json} any more: another version of the suite "
                           f"file was started on this directory; this worker stopped (restart every worker with "
                           f"one file)") from None
    mine = dict(spec.train_options(), parent=spec.parent, branch_at=spec.branch_at)
    theirs = dict(there.train_options(), parent=there.parent, branch_at=there.branch_at)
    try:
        refuse_changes(mine, theirs, action="this worker", where=f"run {spec.name}",
                       advice=f"another version of the suite file was started on {sdir.path}; this worker "
                              f"stopped (restart every worker with one file)", spell=lambda k: k)
    except GerbilError as e:
        raise SuiteStopped(str(e).replace("the run's", f"{sdir.suite_json.name}'s")) from None


def resolve_data(suite: Suite, progress: bool = False) -> dict[str, str]:
    """Each run's token store: its `data`, or its built-in `corpus` (prepared once); a run with neither is
    a one-line error before anything trains."""
    stores: dict[str, str] = {}
    corpora: dict[str, str] = {}
    for spec in suite.runs:
        if spec.options.get("data") is not None:
            p = Path(str(spec.options["data"])).expanduser()
            if not p.exists():
                raise GerbilError(f"run {spec.name}: data {p} does not exist")
            stores[spec.name] = str(p.resolve())
        elif spec.corpus is not None:
            if spec.corpus not in corpora:
                corpora[spec.corpus] = str(builtin_store(spec.corpus, progress=progress))
            stores[spec.name] = corpora[spec.corpus]
        else:
            raise GerbilError(f"run {spec.name} has no data: pass --data STORE (a store from `gerbil prepare`), "
                              f"or set `data:` or `corpus:` ({', '.join(CORPORA)}) in the suite")
    return stores


# ------------------------------------------------------------------------------------------ the worker
def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)  # gerbil.fsutil.disk_error's wording, and torch/safetensors' own
    return any(s in text for s in ("no space left on the device", "disk quota exceeded", "No space left on device"))


def _reason(e: BaseException) -> str:
    """A failure in one line: a user-facing error (what the CLI prints as one line) by its message alone,
    anything else (a bug, a library's error) with its type."""
    first = (str(e).strip().splitlines() or [""])[0]
    if first and isinstance(e, (GerbilError, ValueError, FileNotFoundError, PermissionError)):
        return first
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class Worker:
    """One `gerbil suite run` process."""

    def __init__(self, suite: Suite, sdir: SuiteDir, options: RunOptions, stores: dict[str, str]):
        self.suite, self.sdir, self.opt, self.stores = suite, sdir, options, stores
        self.id = options.worker or default_worker_id()
        self.retried: set[str] = set()
        self.outside: dict[str, str] = {}  # runs whose run directory a process outside the suite holds

    def event(self, event: str, run: str | None = None, **info: Any) -> None:
        self.sdir.log_event(self.id, event, run, **info)

    def loop(self) -> None:
        """Work on the first actionable run in dependency order, again and again, until every run is done,
        failed or blocked; while the rest waits on other workers, look again every `poll` seconds."""
        self.event("start", runs=len(self.suite.runs))
        waited = None
        while True:
            states = run_states(self.sdir, self.suite, self.opt.stale_after)
            self.outside = {}
            actionable = [spec for spec in self.suite.order() if self._actionable(spec, states[spec.name].status)]
            worked = False
            for spec in actionable:
                if self._work_on(spec):
                    worked = True
                    break  # look at the whole suite again: what this run unblocked comes next in order
            if worked:
                continue
            if not actionable and all(s.status in TERMINAL for s in states.values()):
                break
            line = "; ".join(filter(None, [waiting_on(states), *self.outside.values()]))
            if line != waited:  # say what this worker waits on (once per change, not every poll)
                log.info("worker %s: waiting on %s", self.id, line or "other workers' claims")
                waited = line
            time.sleep(self.opt.poll)
        self.event("stop")

    def _actionable(self, spec: RunSpec, status: str) -> bool:
        if status in ("running", "evaluating", "waiting", "blocked"):
            return False
        if status == "failed":
            return self._retry(spec.name)
        if status == "done":
            return self._eval_missing(spec)
        return True

    def _retry(self, name: str) -> bool:
        return self.opt.retry_failed and name not in self.retried

    def _eval_missing(self, spec: RunSpec) -> bool:
        return bool(self.opt.evaluate and evals_missing(self.sdir, spec, self.suite.eval_tasks, self.suite.eval_limit))

    def _work_on(self, spec: RunSpec) -> bool:
        """Claim the run and work on it; False when another worker has it (or it needs nothing now)."""
        claim = self.sdir.claim(spec.name, self.opt.stale_after, beat_every=self.opt.heartbeat)
        try:
            claim.acquire()
        except GerbilError:
            return False  # another worker holds it
        try:
            rec = self.sdir.record(spec.name) or {}  # re-read under the claim: it may have finished meanwhile
            status = rec.get("status")
            if status == "done" and is_trained(self.sdir, spec) and not self._eval_missing(spec):
                return False  # (a run recorded done whose final checkpoint is gone trains again)
            if status == "failed":
                if not self._retry(spec.name):
                    return False
                self.retried.add(spec.name)
            if not parent_ready(self.sdir, self.suite, spec):
                return False
            run_lock = Lock(self.sdir.run_dir(spec.name).lock, f"run {spec.name}", self.opt.stale_after)
            holder = run_lock.holder()
            if holder is not None and not run_lock.is_stale(holder):  # a training process outside the suite
                self.outside[spec.name] = f"{spec.name} (its run directory is locked by {run_lock.describe(holder)})"
                return False
            check_current(self.sdir, spec)
            if "options" not in rec and kind(self.sdir.run_dir(spec.name).path) is not None:
                return self._foreign(spec, rec)
            self.event("claim", spec.name, status=status)
            self._process(spec, rec)  # the claim beats its own heartbeat while held (gerbil.lock.Lock)
            return True
        finally:
            claim.release()

    def _foreign(self, spec: RunSpec, rec: dict) -> bool:
        """A run directory the suite never started (no record of it training there): someone's own run,
        never adopted as the suite's — the run is recorded failed with what to do."""
        path = self.sdir.run_dir(spec.name).path
        rec = dict(rec, status="failed", failed=now(), reason=f"{path} holds a run the suite did not start (your "
                                                              f"own?): move it away, then run with --retry-failed")
        self.sdir.write_record(spec.name, rec)
        self.event("failed", spec.name, reason=rec["reason"])
        log.error("run %s: %s", spec.name, rec["reason"])
        return True

    def _process(self, spec: RunSpec, rec: dict) -> None:
        rec = dict(rec)
        rec.update(status="running", role=spec.role, parent=spec.parent, branch_at=spec.branch_at,
                   options=spec.train_options(), reason=None, attempts=int(rec.get("attempts") or 0) + 1,
                   worker={"id": self.id, "pid": os.getpid(), "host": platform.node(),
                           "device": self.opt.device},
                   started=rec.get("started") or now())
        self.sdir.write_record(spec.name, rec)
        if not is_trained(self.sdir, spec):
            try:
                cfg = self.train_config(spec)
                self.event("train", spec.name, resume=cfg.resume, from_run=cfg.from_run)
                from gerbil.train.loop import train  # lazy: torch

                result = train(cfg)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 — a run's failure must not stop the suite
                if _disk_full(e):
                    self.event("stopped", spec.name, reason=_reason(e))
                    raise SuiteStopped(f"run {spec.name}: {str(e).splitlines()[0]} — the suite stopped; free space "
                                       f"and run the same command again (the run resumes from its latest checkpoint, or starts "
                                       f"again if it has none)") from None
                rec.update(status="failed", reason=_reason(e), failed=now())
                self.sdir.write_record(spec.name, rec)
                self.event("failed", spec.name, reason=rec["reason"])
                log.error("run %s failed: %s", spec.name, rec["reason"])
                return
            rec["result"] = _result_summary(result)
            self.event("trained", spec.name, tokens=result.tokens, seconds=round(result.seconds, 3))
        else:
            rec.setdefault("result", _result_summary(None, self.sdir.run_dir(spec.name).read_result()))
        rec.update(trained=True, status="evaluating")
        self.sdir.write_record(spec.name, rec)
        if self.opt.evaluate:
            try:
                rec["eval"] = self.evaluate(spec)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001
                if _disk_full(e):
                    raise SuiteStopped(f"run {spec.name}: {str(e).splitlines()[0]} — the suite stopped") from None
                rec.update(status="failed", reason="evaluation: " + _reason(e), failed=now())
                self.sdir.write_record(spec.name, rec)
                self.event("failed", spec.name, reason=rec["reason"])
                log.error("run %s: evaluation failed: %s", spec.name, rec["reason"])
                return
        rec.update(status="done", finished=now())
        self.sdir.write_record(spec.name, rec)
        self.event("done", spec.name)

    def train_config(self, spec: RunSpec):
        """The TrainConfig this worker trains `spec` with: the suite's options, the run's directory under
        DIR/runs, its store, its parent (a star run: the parent's run directory; a branch: the trunk
        checkpoint at its branch point), `resume` when its directory exists (a checkpoint is continued; a run
        killed before its first starts again)."""
        opts = dict(spec.options)
        opts.update(name=spec.name, runs=str(self.sdir.runs.resolve()), data=self.stores[spec.name],
                    device=self.opt.device, progress=self.opt.progress, log=self.opt.log)
        if spec.role == "branch":
            c = branch_checkpoint(self.sdir, spec)
            if c is None:
                raise GerbilError(f"trunk {spec.parent} has no checkpoint at {spec.branch_at:,} tokens yet")
            opts["from_run"] = str(RunDir(spec.parent).checkpoint_path(c.name))  # relative to runs: movable
        elif spec.parent is not None:
            opts["from_run"] = spec.parent
        run = self.sdir.run_dir(spec.name)
        # `resume` also when the run has no checkpoint yet: a run killed before its first starts again
        opts["resume"] = run.path.is_dir()
        return TrainConfig.from_dict(opts)

    def evaluate(self, spec: RunSpec) -> dict:
        """Evaluate the run on the suite's tasks it has no current result for; returns the summary of
        every task's result."""
        run = self.sdir.run_dir(spec.name)
        missing = evals_missing(self.sdir, spec, self.suite.eval_tasks, self.suite.eval_limit)
        if missing:
            from gerbil.eval.evaluate import evaluate  # lazy: torch

            self.event("evaluate", spec.name, tasks=missing, limit=self.suite.eval_limit)
            device = None if self.opt.device == "auto" else self.opt.device
            evaluate(str(run.path), missing, limit=self.suite.eval_limit, device=device, progress=self.opt.progress)
        have = run.read_evals(run.latest_meta().get("step"))
        return {t: {"metrics": e.metrics, "n_items": e.n_items, "partial": e.partial, "step": e.step}
                for t, e in have.items() if t in self.suite.eval_tasks}


def _result_summary(result: Any, d: dict | None = None) -> dict:
    if result is not None:
        d = dataclasses.asdict(result)
    d = dict(d or {})
    keep = ("steps", "tokens", "train_loss", "val_loss", "seconds", "tokens_per_second", "n_params", "checkpoint")
    out = {k: d.get(k) for k in keep}
    out["checkpoint"] = str(out["checkpoint"]) if out.get("checkpoint") else None
    info = d.get("info") or {}
    out.update(batch=info.get("batch"), device=info.get("device"), parent=info.get("parent"))
    return out


# ------------------------------------------------------------------------------------------ the suite
def start_suite(suite: Suite, out: str | Path, progress: bool = False) -> tuple[SuiteDir, dict[str, str]]:
    """Validate what depends on the directory (a changed suite file, each run's data) and write
    suite.json; returns the directory and each run's store."""
    sdir = SuiteDir(out)
    mkdir(sdir.path)
    check_changes(sdir, suite)
    stores = resolve_data(suite, progress)
    for d in (sdir.registry, sdir.claims, sdir.runs, sdir.workers):
        mkdir(d)
    sdir.write_suite(suite)
    return sdir, stores


def run_suite(suite: Suite, out: str | Path, options: RunOptions | None = None) -> SuiteOutcome:
    """Train and evaluate every run of `suite` in `out` (see the module docstring); returns when every run
    is done, failed or blocked. Safe to start several times on one directory, and again after any kill."""
    options = options or RunOptions()
    t0 = time.perf_counter()
    sdir, stores = start_suite(suite, out, options.progress)
    worker = Worker(suite, sdir, options, stores)
    log.info("suite %s: %d runs in %s (worker %s)", suite.name, len(suite.runs), sdir.path, worker.id)
    worker.loop()
    outcome = finish(sdir, suite)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def finish(sdir: SuiteDir, suite: Suite) -> SuiteOutcome:
    """Write the results table (Markdown + CSV, the seed's columns, the suite's order, the seed's rows)
    and the measured cascade accounting; report every run's status."""
    states = run_states(sdir, suite)
    md, csv = write_tables(sdir, suite)
    cascades = cascade_report(sdir, suite)
    if cascades:
        atomic_write_json(sdir.path / "cascade.json", cascades, indent=1)
    return SuiteOutcome({n: s.status for n, s in states.items()}, md, csv, cascades)

"""A suite's directory: the resolved suite, one status record per run, claims, worker logs — and the one
function that says where each run stands (`run_states`). No torch.

    DIR/suite.json              the resolved suite (every run's options, budget, parent), rewritten at each start
    DIR/registry/<run>.json     the run's status record: status, worker, options it was started with, result,
                                eval summary, failure reason (written only by the worker holding the claim)
    DIR/claims/<run>.lock       who is working on the run (`Claim`: pid, host; mtime = heartbeat)
    DIR/workers/<worker>.jsonl  each worker's events (claim, train, evaluate, done, failed), one line each
    DIR/runs/<run>/             the run directories (docs/architecture.md, "Run directory")
    DIR/table (Markdown, .csv)   the seed's table for the suite's runs, in the suite's order
    DIR/cascade.json            measured cascade accounting (tokens and training time vs independent runs)
    DIR/plots/*.png             `gerbil suite plot`

Every record and index is written with `gerbil.fsutil.atomic_write_json` (temp file + fsync + rename): a
kill -9 during a write leaves the old record or the new one, never a torn one. Records are only written by
the claim holder, so two workers never race on one. A missing record means "never started".

Statuses: `done` (trained and evaluated on the suite's tasks), `running` / `evaluating` (a live claim;
the worker is named), `pending` (ready to run; `interrupted` when a dead worker left it mid-way — the next
worker resumes it from its checkpoint), `waiting` (for its parent, or for a cascade trunk's checkpoint),
`failed` (its reason recorded), `blocked` (its parent failed before finishing training).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError
from gerbil.fsutil import atomic_write_json, mkdir
from gerbil.lock import STALE_AFTER_S, Lock
from gerbil.runs.rundir import RunDir, read_meta, verify_checkpoint
from gerbil.suite.records import RunSpec, Suite
from gerbil.units import fmt_duration, fmt_tokens

log = logging.getLogger(__name__)

#: A claim file that holds no readable holder (its writer was killed between creating and filling it)
#: is taken over after this long; a live writer fills it within microseconds.
TORN_AFTER_S = 10.0
TERMINAL = ("done", "failed", "blocked")
#: the results table's file names (Markdown, CSV) in a suite directory and in an export
TABLE_MD, TABLE_CSV = "table" + ".md", "table.csv"
README = "README" + ".md"


#: The fields of a registry record that are read back, and their types (`SuiteDir.record`).
_RECORD_FIELDS = {"status": str, "role": str, "parent": str, "branch_at": int, "options": dict, "reason": str,
                  "attempts": int, "worker": dict, "started": str, "result": dict, "trained": bool, "eval": dict,
                  "failed": str, "finished": str}
_KIND_NAMES = {str: "a string", int: "an integer", dict: "a mapping", bool: "true/false"}
_WARNED: set[tuple[str, str, str]] = set()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def default_worker_id() -> str:
    """A Slurm array task's id (`slurm-JOB_TASK`), else host-pid; the GPU it sees appended."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        wid = f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    elif env.get("SLURM_JOB_ID"):
        wid = f"slurm-{env['SLURM_JOB_ID']}"
    else:
        wid = f"{platform.node()}-{os.getpid()}"
    if env.get("CUDA_VISIBLE_DEVICES"):
        wid += f"-gpu{env['CUDA_VISIBLE_DEVICES'].replace(',', '+')}"
    return wid


class Claim(Lock):
    """A worker's claim on a run: `gerbil.lock.Lock` (O_EXCL file with the worker's pid, host and process
    identity, heartbeat = mtime; a dead holder's claim is taken over: on its host — its process is gone,
    or its pid now belongs to another process (a restarted container's pid 1, a wrapped-around pid);
    elsewhere — no heartbeat for `STALE_AFTER_S` = 120 s), plus one rule: a claim file without a readable
    holder, older than `TORN_AFTER_S`, is stale — a worker killed mid-claim never leaves a run
    unclaimable."""

    def state(self, info: dict) -> tuple[bool, str]:
        if not info:
            age = self.age()
            return age > TORN_AFTER_S, f"a claim file without a holder, {age:.0f} s old"
        return super().state(info)

    def live_holder(self) -> dict | None:
        """The holder if it is alive, else None."""
        info = self.holder()
        if info is None or self.is_stale(info):
            return None
        return info


class SuiteDir:
    """The paths of a suite directory and its small readers and writers (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def suite_json(self) -> Path:
        return self.path / "suite.json"

    @property
    def registry(self) -> Path:
        return self.path / "registry"

    @property
    def claims(self) -> Path:
        return self.path / "claims"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def workers(self) -> Path:
        return self.path / "workers"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def run_dir(self, name: str) -> RunDir:
        return RunDir(self.runs / name)

    def claim(self, name: str, stale_after: float = STALE_AFTER_S, beat_every: float | None = None) -> Claim:
        """The claim on run `name`; while held it beats every `beat_every` s (default `gerbil.lock.Lock`'s)."""
        return Claim(self.claims / f"{name}.lock", f"suite run {name}", stale_after, beat_every)

    # ------------------------------------------------------------------------------ the suite
    def exists(self) -> bool:
        return self.suite_json.is_file()

    def read_suite(self) -> Suite:
        try:
            data = json.loads(self.suite_json.read_text())
        except FileNotFoundError:
            raise GerbilError(f"{self.path}: not a suite directory (no suite.json; start it with "
                              f"`gerbil suite run SUITE --out {self.path}`)") from None
        except (OSError, ValueError) as e:
            raise GerbilError(f"{self.suite_json}: unreadable ({e})") from None
        return Suite.from_dict(data)

    def write_suite(self, suite: Suite, extra: dict | None = None) -> None:
        atomic_write_json(self.suite_json, dict(suite.to_dict(), **(extra or {})), indent=1)

    # ------------------------------------------------------------------------------ records
    def record(self, name: str) -> dict | None:
        """The run's status record (None: never started). A field of the wrong type (a hand-edited or
        damaged record) is left out with a warning: never a traceback, never a guess."""
        p = self.registry / f"{name}.json"
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:  # cannot happen with atomic writes; never hide it
            log.warning("unreadable registry record %s (%s); treating the run as not started", p, e)
            return None
        if not isinstance(data, dict):
            log.warning("registry record %s is not a mapping; treating the run as not started", p)
            return None
        for key, kind in _RECORD_FIELDS.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
                if (str(p), key, repr(value)) not in _WARNED:  # once, not at every look of a waiting worker
                    _WARNED.add((str(p), key, repr(value)))
                    log.warning("registry record %s: %r should be %s, not %r; ignoring it", p, key,
                                _KIND_NAMES[kind], value)
                del data[key]
        return data

    def write_record(self, name: str, rec: dict) -> None:
        rec = dict(rec, name=name, updated=now())
        atomic_write_json(self.registry / f"{name}.json", rec, indent=1)

    def log_event(self, worker: str, event: str, run: str | None = None, **info: Any) -> None:
        """One line in the worker's own log (no other process writes it)."""
        mkdir(self.workers)
        line = json.dumps({"time": now(), "t": round(time.time(), 3), "worker": worker, "pid": os.getpid(),
                           "event": event, "run": run, **info}, default=str)
        with open(self.workers / f"{_safe(worker)}.jsonl", "a") as f:
            f.write(line + "\n")

    def events(self) -> list[dict]:
        """Every worker's events, in time order."""
        out = []
        for p in sorted(self.workers.glob("*.jsonl")) if self.workers.is_dir() else []:
            for line in p.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by a kill
        return sorted(out, key=lambda e: e.get("t", 0))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


# ------------------------------------------------------------------------------------------ run facts
def branch_checkpoint(sdir: SuiteDir, spec: RunSpec) -> Path | None:
    """The trunk checkpoint a cascade branch starts from: the trunk's first checkpoint at or after the
    branch point (`checkpoint_at` puts one at the first step boundary at or after it, never pruned), or
    None while the trunk has not got there."""
    trunk = sdir.run_dir(spec.parent or "")
    best: tuple[int, Path] | None = None
    for c in trunk.list_checkpoints():
        try:
            tokens = int(read_meta(c)["tokens"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if tokens >= (spec.branch_at or 0) and (best is None or tokens < best[0]):
            if verify_checkpoint(c, check_hash=False) is None:
                best = (tokens, c)
    return best[1] if best else None


def is_trained(sdir: SuiteDir, spec: RunSpec) -> bool:
    """The run reached its budget: its latest intact checkpoint (sizes checked) is at the budget. Neither
    the record's `trained` nor result.json is enough: a run whose checkpoints (or whole directory) were
    removed since is not trained — it trains again, and is never reported or exported as finished."""
    try:
        return int(sdir.run_dir(spec.name).latest_meta().get("tokens") or 0) >= spec.budget
    except (TypeError, ValueError):
        return False


def evals_missing(sdir: SuiteDir, spec: RunSpec, tasks: list[str], limit: int | None) -> list[str]:
    """The suite's tasks this run has no current result for (a full-set result always counts; with a
    limit, a partial one of at least that many items; a result at an older checkpoint does not)."""
    if not tasks:
        return []
    run = sdir.run_dir(spec.name)
    have = run.read_evals(run.latest_meta().get("step"))
    return [t for t in tasks if t not in have or have[t].stale or not have[t].covers(limit)]


# ------------------------------------------------------------------------------------------ statuses
@dataclass
class RunState:
    """Where one run of a suite stands (`gerbil suite status`)."""

    name: str
    status: str
    role: str = "run"
    parent: str | None = None
    worker: str | None = None
    tokens: int | None = None
    budget: int | None = None
    loss: float | None = None
    val_loss: float | None = None
    tok_s: float | None = None
    eta_s: float | None = None
    reason: str | None = None
    attempts: int = 0
    detail: str = ""
    evals: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "status", "role", "parent", "worker", "tokens", "budget",
                                              "loss", "val_loss", "tok_s", "eta_s", "reason", "attempts", "detail",
                                              "evals")}


def run_states(sdir: SuiteDir, suite: Suite, stale_after: float = STALE_AFTER_S) -> dict[str, RunState]:
    """Every run's state, derived from its record, its claim, its run directory and its parent's state. A
    run recorded done whose checkpoint at the budget is gone (removed, or its directory) is pending: it
    trains again, and is never reported as finished."""
    states: dict[str, RunState] = {}
    for spec in suite.order():  # parents first: a child's state depends on its parent's
        rec = sdir.record(spec.name) or {}
        claim = sdir.claim(spec.name, stale_after)
        holder = claim.live_holder()
        run = sdir.run_dir(spec.name)
        st = RunState(spec.name, "pending", spec.role, spec.parent, budget=spec.budget,
                      attempts=int(rec.get("attempts") or 0), reason=rec.get("reason"),
                      evals=dict(rec.get("eval") or {}))
        _progress(st, run)
        val = (rec.get("result") or {}).get("val_loss")
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            st.val_loss = float(val)
        status = rec.get("status")
        parent = states.get(spec.parent) if spec.parent else None
        lost = status == "done" and not is_trained(sdir, spec)
        if holder is not None:
            st.status = status if status in ("running", "evaluating") else "running"
            w = (rec.get("worker") or {})
            st.worker = w.get("id") or f"pid {holder.get('pid')} on {holder.get('host')}"
            st.detail = claim.describe(holder)
            if st.tok_s and st.tokens is not None and st.status == "running":
                st.eta_s = max(0.0, (spec.budget - st.tokens) / st.tok_s)
        elif status == "done" and not lost:
            st.status = "done"
        elif status == "failed":
            st.status = "failed"
        elif parent is not None and _parent_blocks(sdir, suite, spec, parent):
            st.status, st.detail = "blocked", f"{spec.parent} {parent.status}"
        elif parent is not None and not parent_ready(sdir, suite, spec, parent):
            st.status = "waiting"
            st.detail = (f"for {spec.parent} to reach {spec.branch_at:,} tokens" if spec.role == "branch"
                         else f"for {spec.parent}")
        else:
            st.status = "pending"
            if lost:
                where = run.checkpoints if run.path.is_dir() else run.path
                st.detail = f"recorded done, but its final checkpoint is gone ({where}): trains again"
                st.evals, st.val_loss = {}, None
            elif status in ("running", "evaluating"):
                st.detail = f"interrupted ({status}); " + ("resumes from its checkpoint" if run.list_checkpoints()
                                                           else "starts again (no checkpoint yet)")
        states[spec.name] = st
    return {r.name: states[r.name] for r in suite.runs}


def _progress(st: RunState, run: RunDir) -> None:
    """Tokens, losses and speed from the tail of the run's metrics.jsonl (nothing for a run not started)."""
    tail = run.tail_metrics() if run.path.is_dir() else []
    if not tail:
        return
    st.tokens = tail[-1].get("tokens")
    st.loss = tail[-1].get("loss")
    vals = [m["val_loss"] for m in tail if m.get("val_loss") is not None]
    st.val_loss = vals[-1] if vals else None
    rates = [m["tok_s"] for m in tail[-20:] if m.get("tok_s")]
    st.tok_s = sum(rates) / len(rates) if rates else None


def waiting_on(states: dict[str, RunState]) -> str:
    """What a worker with nothing to do waits for, in one line: runs other workers hold (with their
    holder and heartbeat) and runs waiting for a parent — "" when nothing is left to wait for."""
    parts = []
    for s in states.values():
        if s.status in ("running", "evaluating"):
            parts.append(f"{s.name} ({s.status} on {s.worker}: {s.detail})" if s.detail else f"{s.name} ({s.status})")
        elif s.status == "waiting":
            parts.append(f"{s.name} (waiting {s.detail})")
    return "; ".join(parts)


def parent_ready(sdir: SuiteDir, suite: Suite, spec: RunSpec, parent: RunState | None = None) -> bool:
    """What `spec` continues from exists: a branch's trunk checkpoint, a star run's finished parent."""
    if spec.parent is None:
        return True
    if spec.role == "branch":
        return branch_checkpoint(sdir, spec) is not None
    if parent is not None and parent.status in ("done", "evaluating"):
        return True
    return is_trained(sdir, suite.get(spec.parent))


def _parent_blocks(sdir: SuiteDir, suite: Suite, spec: RunSpec, parent: RunState) -> bool:
    """The parent failed (or is blocked) without producing what this run continues from."""
    if parent.status == "blocked":
        return True
    if parent.status != "failed":
        return False
    return not parent_ready(sdir, suite, spec, parent)


def format_states(states: dict[str, RunState]) -> str:
    """One line per run (what `gerbil suite status` prints)."""
    rows = []
    for s in states.values():
        where = s.worker or s.detail or (s.reason or "")
        if s.status == "failed":
            where = s.reason or "failed"
        progress = "" if s.budget is None else (
            f"{fmt_tokens(s.tokens) if s.tokens else '0'}/{fmt_tokens(s.budget)}")
        loss = "" if s.loss is None else f"{s.loss:.4f}"
        val = "" if s.val_loss is None else f"{s.val_loss:.4f}"
        eta = "" if s.eta_s is None else fmt_duration(s.eta_s)
        rows.append([s.name, s.status, progress, loss, val, eta, where])
    header = ["run", "status", "tokens", "loss", "val", "ETA", "worker / detail"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s.status] = counts.get(s.status, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()))
    return "\n".join(lines)

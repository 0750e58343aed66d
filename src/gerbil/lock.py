"""An exclusive claim on a path by one process, and whether a process lives.

One home for both: the run lock (`RUN/.lock`, `gerbil.runs.rundir.RunDir.lock`), a suite worker's claim
on a run (`gerbil.suite.state.Claim`), a built-in store's preparation lock, and the token store's check
for a dead writer's leftovers (`gerbil.data.store`). Depends on nothing of gerbil but `errors`, so every
package may use it.

Whether a lock's holder still lives is never judged by "is a process with that pid alive" alone: after a
crash in a container the restarted worker is pid 1 again, and pids wrap around. A holder records who it
is — pid, host, the kernel's boot id, its pid namespace and the pid's start time (`identity`, from
/proc) — and beats a heartbeat (the file's mtime, refreshed by a thread while the lock is held). On the
holder's host and in its pid namespace the identity decides; where there is none to compare (another
host on a shared filesystem, another pid namespace, no /proc, a lock written by an older gerbil) the
heartbeat does: no beat for `STALE_AFTER_S` and the holder is presumed dead.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import stat
import threading
import time
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError

log = logging.getLogger(__name__)

#: A holder whose heartbeat (the lock file's mtime) is older than this is presumed dead where its
#: process cannot be identified (another host, another pid namespace, no /proc).
STALE_AFTER_S = 120.0

#: Locks this process holds (resolved paths): a lock file naming this very pid that is not among them
#: was left by an earlier process that had the same pid (a restarted container's pid 1).
_HELD: set[str] = set()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/PID/stat, field 22): with the boot id,
    what tells a process from a later one that got the same pid. None without /proc or without the pid."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count fields after its last ')'
        return int(text[text.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def identity(pid: int | None = None) -> dict[str, Any]:
    """Who process `pid` (default: this one) is beyond its number: the kernel's boot id, the pid
    namespace (a container has its own) and the pid's start time. Fields that cannot be read (no /proc:
    macOS, some sandboxes) are left out."""
    pid = os.getpid() if pid is None else pid
    ns = None
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    out = {"boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": ns, "start": process_start(pid)}
    return {k: v for k, v in out.items() if v is not None}


def holder_state(info: dict, age: float, stale_after: float, held_here: bool) -> tuple[bool, str]:
    """(presumed dead, why) for a lock whose file holds `info` and was last beaten `age` seconds ago;
    `held_here`: this process holds that lock itself. The rule of the module docstring."""
    pid, host = info.get("pid"), info.get("host")
    beat = f"no heartbeat for {age:.0f} s"
    if host != platform.node() or not isinstance(pid, int) or isinstance(pid, bool):
        return age > stale_after, f"{beat} (another host: judged by its heartbeat, stale after {stale_after:.0f} s)"
    mine = identity()
    if info.get("boot") and mine.get("boot") and info["boot"] != mine["boot"]:
        return True, "the machine has rebooted since"
    if info.get("pidns") and mine.get("pidns") and info["pidns"] != mine["pidns"]:
        return age > stale_after, f"{beat} (another pid namespace: judged by its heartbeat)"
    if pid == os.getpid():
        return (not held_here), ("an earlier process with this process's pid" if not held_here else "this process")
    if not pid_alive(pid):
        return True, f"pid {pid} is gone"
    start = process_start(pid)
    if info.get("start") is not None and start is not None:
        if start != info["start"]:
            return True, f"pid {pid} is now another process"
        return False, f"pid {pid} is alive"
    return age > stale_after, f"pid {pid} lives, but the lock names no process identity; {beat}"


class Lock:
    """An exclusive claim on a path by one process: a file created with O_EXCL holding its pid, host,
    identity (`identity`) and start time, whose mtime is a heartbeat, refreshed every `beat_every`
    seconds by a thread while held (and by `beat`). Refused while the holder lives (one line naming it
    and its heartbeat's age); taken over when it is presumed dead (`holder_state`). Taking over renames
    the stale file away first (only one contender's rename succeeds), so two processes never both take a
    stale lock. Something else at the path (a directory) is refused, never removed.

    Used as a context manager; `what` names the thing locked in messages.
    """

    def __init__(self, path: str | os.PathLike, what: str, stale_after: float = STALE_AFTER_S,
                 beat_every: float | None = None):
        self.path, self.what, self.stale_after = Path(path), what, stale_after
        self.beat_every = beat_every if beat_every is not None else min(15.0, stale_after / 8)
        self.held = False
        self._stop: threading.Event | None = None

    def _key(self) -> str:
        return str(self.path.absolute())

    def holder(self) -> dict | None:
        """What the lock file says of its holder: None when there is no lock; {} while it is being written
        or when torn (a live unknown holder until it goes stale)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "something other than a file"
            raise GerbilError(f"{self.path} is {kind} where the lock file of {self.what} belongs; move it away "
                              f"(gerbil never deletes it)")
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def age(self) -> float:
        """Seconds since the holder's last heartbeat (inf when the file is gone)."""
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return float("inf")

    def state(self, info: dict) -> tuple[bool, str]:
        """(presumed dead, why) of the holder `info` (`holder_state`)."""
        return holder_state(info, self.age(), self.stale_after, self._key() in _HELD)

    def is_stale(self, info: dict) -> bool:
        return self.state(info)[0]

    def describe(self, info: dict) -> str:
        """The holder in words, e.g. "pid 12 on gpu3 (since 2026-12-02T10:00:00Z, last heartbeat 4 s ago)"."""
        age = self.age()
        beat = "no heartbeat yet" if age == float("inf") else f"last heartbeat {age:.0f} s ago"
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('since', '?')}, {beat})"

    def acquire(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **identity()}
        for _ in range(8):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released meanwhile: try again
                dead, why = self.state(info)
                if not dead:
                    raise GerbilError(f"{self.what} is in use by {self.describe(info)}; wait for it, or stop it "
                                      f"(its lock: {self.path})")
                grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, grave)  # only one contender wins this rename
                except FileNotFoundError:
                    continue
                log.warning("%s: taking over from a dead holder (pid %s on %s: %s)", self.what, info.get("pid"),
                            info.get("host"), why)
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            _HELD.add(self._key())
            self._start_beating()
            return self
        raise GerbilError(f"{self.what}: could not take its lock {self.path} (contended)")

    def _start_beating(self) -> None:
        """A heartbeat thread while held: the lock's liveness never depends on how long a step, a
        validation or a checkpoint write takes between `beat` calls."""
        if self.beat_every <= 0:
            return
        self._stop = stop = threading.Event()

        def run() -> None:
            while not stop.wait(self.beat_every):
                self.beat()

        threading.Thread(target=run, daemon=True, name=f"gerbil-lock-heartbeat {self.path.name}").start()

    def beat(self) -> None:
        """Refresh the heartbeat (cheap: one utime)."""
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        if self.held:
            _HELD.discard(self._key())
            try:
                info = self.holder() or {}
            except GerbilError:
                info = {}
            if info.get("pid") == os.getpid() and info.get("host") == platform.node():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

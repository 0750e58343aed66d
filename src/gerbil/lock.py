"""An exclusive claim on a path by one process, and whether a process lives.

One home for both: the run lock (`RUN/.lock`, `gerbil.runs.rundir.RunDir.lock`), a suite worker's claim
on a run (`gerbil.suite.state.Claim`), a built-in store's preparation lock, and the token store's check
for a dead writer's leftovers (`gerbil.data.store`). Depends on nothing of gerbil but `errors`, so every
package may use it.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from gerbil.errors import GerbilError

log = logging.getLogger(__name__)

#: A holder on another host whose heartbeat (the lock file's mtime) is older than this is presumed dead.
STALE_AFTER_S = 120.0


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lock:
    """An exclusive claim on a path by one process: a file created with O_EXCL holding its pid, host and
    start time, whose mtime is a heartbeat (`beat`). Refused while the holder lives (one line naming it);
    taken over when the holder is dead — on this host: its pid is gone; on another host (a shared
    filesystem): no heartbeat for `STALE_AFTER_S` seconds. Taking over renames the stale file away first
    (only one contender's rename succeeds), so two processes never both take a stale lock.

    Used as a context manager; `what` names the thing locked in messages.
    """

    def __init__(self, path: str | os.PathLike, what: str, stale_after: float = STALE_AFTER_S):
        self.path, self.what, self.stale_after = Path(path), what, stale_after
        self.held = False

    def holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or torn: treat as a live unknown holder until it goes stale

    def is_stale(self, info: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if info.get("host") == platform.node() and isinstance(info.get("pid"), int):
            return not pid_alive(info["pid"])
        return age > self.stale_after

    def acquire(self) -> "Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for _ in range(8):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if info is None:
                    continue  # released meanwhile: try again
                if not self.is_stale(info):
                    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
                    raise GerbilError(f"{self.what} is in use by {who} (since {info.get('since', '?')}); "
                                      f"wait for it, or stop it (its lock: {self.path})")
                grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, grave)  # only one contender wins this rename
                except FileNotFoundError:
                    continue
                log.warning("%s: taking over from a dead holder (pid %s on %s)", self.what, info.get("pid"),
                            info.get("host"))
                grave.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise GerbilError(f"{self.what}: could not take its lock {self.path} (contended)")

    def beat(self) -> None:
        """Refresh the heartbeat (cheap: one utime)."""
        if self.held:
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            info = self.holder() or {}
            if info.get("pid") == os.getpid() and info.get("host") == platform.node():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

"""The run's progress: a tqdm bar (tokens, loss, tok/s, ETA) on a terminal, else a log line every ~30 s.

tok/s is training throughput (validation and checkpoint writes not counted), the same measure as
metrics.jsonl's `tok_s` and the run's summary (`RunResult.tokens_per_second`); the ETA is wall-clock."""
from __future__ import annotations

import logging
import sys
import time

from gerbil.units import fmt_clock

log = logging.getLogger(__name__)


class Progress:
    """tqdm bar (tokens, loss, tok/s, ETA) on a terminal; otherwise a log line every ~30 s."""

    def __init__(self, total: int, initial: int, enabled: bool | None, name: str):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total, self.done, self.name = total, initial, name
        self.t0, self.t_log, self.start = time.perf_counter(), 0.0, initial
        self.train_s = 0.0  # this session's training time: tok/s is training only, as in the summary and tok_s
        self.bar = None
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=name,
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int, loss: float, tok_s: float, val_loss: float | None) -> None:
        self.done += n
        self.train_s += n / max(tok_s, 1e-9)
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "tok/s": f"{tok_s:,.0f}"}
            if val_loss is not None:
                post["val"] = f"{val_loss:.4f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.t_log >= 30 or self.done >= self.total or val_loss is not None:
            self.t_log = now
            rate = (self.done - self.start) / max(self.train_s, 1e-9)
            wall = (self.done - self.start) / max(now - self.t0, 1e-9)  # the ETA counts validations too
            eta = (self.total - self.done) / max(wall, 1e-9)
            log.info("%s: %d/%d tokens (%.1f%%), loss %.4f%s, %.0f tok/s, ETA %s", self.name, self.done,
                     self.total, 100 * self.done / self.total, loss,
                     f", val {val_loss:.4f}" if val_loss is not None else "", rate, fmt_clock(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


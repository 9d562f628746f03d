"""Download progress on stderr: a redrawn bar on a TTY, else an INFO log line every 10 %."""

from __future__ import annotations

import logging
import math
import sys
import time

logger = logging.getLogger(__name__)


class Progress:
    """Sizes are shown in MB (10^6 bytes); the speed counts only this transfer's bytes."""

    def __init__(self, label: str, *, total: int | None, initial: int, enabled: bool) -> None:
        self.label, self.total, self.done = label, total, initial
        self.enabled = enabled
        self.tty = enabled and getattr(sys.stderr, "isatty", lambda: False)()
        self.start, self.initial = time.monotonic(), initial
        self.last_draw = 0.0
        self.next_log = self._next_step(initial)
        self.closed = False

    def _next_step(self, done: int) -> int:
        step = self.total / 10 if self.total else 100e6
        return int((done // step + 1) * step)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and (now - self.last_draw >= 0.1 or self.done == self.total):
            self.last_draw = now
            sys.stderr.write("\r" + self._line(now, bar=True))
            sys.stderr.flush()
        elif not self.tty and self.done >= self.next_log:
            self.next_log = self._next_step(self.done)
            logger.info("Downloading %s", self._line(now, bar=False))

    def _line(self, now: float, *, bar: bool) -> str:
        elapsed = max(now - self.start, 1e-9)
        speed = (self.done - self.initial) / elapsed
        if not self.total:
            return f"{self.label}: {self.done / 1e6:,.1f} MB, {speed / 1e6:.1f} MB/s"
        fraction = min(self.done / self.total, 1.0)
        eta = (self.total - self.done) / speed if speed > 0 else math.inf
        eta_text = "?" if math.isinf(eta) else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        drawn = f"[{'#' * int(fraction * 30):<30}] " if bar else ""
        return (
            f"{self.label}: {drawn}{fraction:4.0%} {self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB, "
            f"{speed / 1e6:.1f} MB/s, ETA {eta_text}"
        )

    def close(self) -> None:
        if self.tty and not self.closed:
            sys.stderr.write("\r" + self._line(time.monotonic(), bar=True) + "\n")
            sys.stderr.flush()
        self.closed = True

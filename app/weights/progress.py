"""Download progress on stderr: a tqdm bar on a terminal, else an INFO log line about every 10 %."""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

logger = logging.getLogger(__name__)

_MB = 1e6
_SIZED = "{desc}: {percentage:3.0f}% {n:,.1f}/{total:,.1f} MB, {rate_fmt}, ETA {remaining}"
_SIZED_BAR = "{desc}: {percentage:3.0f}%|{bar:30}| {n:,.1f}/{total:,.1f} MB, {rate_fmt}, ETA {remaining}"
_UNSIZED = "{desc}: {n:,.1f} MB, {rate_fmt}"


class Progress:
    """Progress of one transfer, counted in bytes and shown in MB (10^6 bytes).

    `total` is the final size if known, `initial` the bytes already there (a resumed download: the
    speed counts only this transfer's bytes). Without a size, a log line every 100 MB.
    """

    def __init__(self, label: str, *, total: int | None, initial: int, enabled: bool) -> None:
        self.label, self.total, self.initial, self.done = label, total, initial, initial
        self.enabled = enabled
        self.started = time.monotonic()
        self.log_step = total / 10 if total else 100 * _MB
        self.next_log = (initial // self.log_step + 1) * self.log_step
        self.bar: tqdm | None = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total / _MB if total else None, initial=initial / _MB, desc=label, unit="MB",
                            bar_format=_SIZED_BAR if total else _UNSIZED, file=sys.stderr, mininterval=0.1)

    def update(self, num_bytes: int) -> None:
        self.done += num_bytes
        if self.bar is not None:
            self.bar.update(num_bytes / _MB)
        elif self.enabled and self.done >= self.next_log:
            self.next_log = (self.done // self.log_step + 1) * self.log_step
            line = tqdm.format_meter(self.done / _MB, self.total / _MB if self.total else None,
                                     time.monotonic() - self.started, prefix=self.label, unit="MB",
                                     initial=self.initial / _MB, bar_format=_SIZED if self.total else _UNSIZED)
            logger.info("Downloading %s", line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.done / _MB  # exact, not a sum of float increments
            self.bar.close()

"""Blocking work on a worker thread that stops when nobody waits for it any more.

`run_cancellable(work)` runs `work(check)` on a worker thread; `work` calls `check(stage, fraction)` at
every step (a block of the network, a frame of a render or of a clip). Once the awaiting task is cancelled
(a client that hung up, a shutdown, Modal cancelling a job's input), the next `check` raises
`RunCancelledError`, and the task's cancellation waits (shielded, at most `CANCEL_WAIT_S`) until the thread
has stopped, so that whatever the task holds (an admission, a slot) is held until then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from app.errors import SharpError
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)

CANCEL_WAIT_S = 60.0
"""Longest wait (seconds) for a cancelled run to reach its next check (one network block, one frame)."""

T = TypeVar("T")


class RunCancelledError(SharpError):
    """A run stopped because whoever waited for it went away (a client that hung up, a shutdown)."""

    code = "cancelled"
    status = 499


async def run_cancellable(work: Callable[[ProgressCallback], T], *, limiter: anyio.CapacityLimiter,
                          on_thread: Callable[[], None] | None = None) -> T:
    """`work(check)` on a worker thread of `limiter` (module docstring); `on_thread()` first, on that thread.
    Returns what `work` returns; raises what it raises, or the task's cancellation."""
    stop, started, ended = threading.Event(), threading.Event(), threading.Event()
    started_lock = threading.Lock()
    reached = ["", 0.0]  # the last stage and fraction reported

    def check(stage: str, fraction: float) -> None:
        if stop.is_set():
            raise RunCancelledError(f"The request was cancelled during {stage} ({fraction:.0%} done).")
        reached[:] = [stage, fraction]

    def run() -> T:
        with started_lock:  # a run cancelled before its thread took it never starts
            if stop.is_set():
                raise RunCancelledError("The request was cancelled before it started.")
            started.set()
        if on_thread is not None:
            on_thread()
        try:
            return work(check)
        finally:
            ended.set()

    try:
        return await anyio.to_thread.run_sync(run, limiter=limiter, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        with started_lock:
            stop.set()  # a started run stops at its next check
        LOGGER.info("Stopping a run nobody waits for any more (it was at %s, %.0f%%)",
                    reached[0] or "its start", 100 * float(reached[1]))
        if started.is_set():  # else the thread will not run it (anyio drops a cancelled call)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ended.wait, CANCEL_WAIT_S)
        raise

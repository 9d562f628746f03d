"""A Modal Volume of jobs, reloaded and committed safely: the helpers both sides of Modal's job queue use
(the web container's `app.jobs.modal`, the job's and the GPU side's `app.jobs.modal_worker`, `app.jobs.modal_clip`).

`Volume.reload()` fails while any file of the Volume is open in the container, and `commit()` reloads
afterwards: a file of another job open at that moment makes either fail. So both are retried briefly
(`VOLUME_ATTEMPTS`, backing off from `VOLUME_RETRY_S`); if the Volume stays busy the request gets a
retryable 503 (`VolumeBusyError`) rather than a stale answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app.errors import BusyError

LOGGER = logging.getLogger(__name__)

POLL_S = 1.0
"""How often `watch` looks at a job, and the least time between two reloads of the Volume."""
VOLUME_ATTEMPTS = 5
"""Tries of a Volume reload or commit before giving up (a file open elsewhere in the container)."""
VOLUME_RETRY_S = 0.2
"""The first wait between two tries; it doubles."""


class VolumeBusyError(BusyError):
    code = "volume_busy"


async def _retry(operation: Callable[[], Awaitable[None]], what: str) -> None:
    """`operation` (a Volume reload or commit), tried `VOLUME_ATTEMPTS` times; `VolumeBusyError` after."""
    wait = VOLUME_RETRY_S
    for attempt in range(1, VOLUME_ATTEMPTS + 1):
        try:
            await operation()
            return
        except Exception as error:  # the SDK's RuntimeError for open files, or a service error
            if attempt == VOLUME_ATTEMPTS:
                LOGGER.error("Jobs volume %s failed %d times: %s", what, attempt, error)
                raise VolumeBusyError(f"The jobs volume is busy ({what} failed: {error}); retry shortly.",
                                      retry_after_s=1) from error
            LOGGER.warning("Jobs volume %s failed (try %d): %s", what, attempt, error)
            await asyncio.sleep(wait)
            wait *= 2


async def reload(volume: Any) -> None:
    await _retry(volume.reload.aio, "reload")


async def commit(volume: Any) -> None:
    await _retry(volume.commit.aio, "commit")

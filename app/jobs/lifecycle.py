"""One job's run from `queued` to its end, the same wherever it runs (`app.jobs.local`, `app.jobs.modal`).

    queued --start--> running --work done--------------------------> succeeded
                              --SharpError (bad image, model error)--> failed   (its `error`)
                              --any other exception------------------> failed   (`internal_error`)
                              --cancelled (flag, or Modal's cancel)---> cancelled
                              --interrupted (task cancelled)----------> queued again when the runner reruns
                                                                        it (Modal reruns a preempted
                                                                        input), else failed `interrupted`

After the run the job's files are tidied (`JobStore.tidy`: the upload goes once the job is final, the
results unless it succeeded) and its state is recorded by the runner's `record` (a save, plus a
publish or a Volume commit). Blocking file work runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread

from app.errors import SharpError
from app.jobs.errors import JobCancelledError
from app.jobs.job import Job
from app.jobs.store import JobStore

LOGGER = logging.getLogger(__name__)

INTERRUPTED = SharpError("The server stopped before this job finished; submit it again.", code="interrupted",
                         status=503)
"""The failure of a job whose runner stopped and will not run it again."""


@dataclass(frozen=True)
class Runner:
    """What a lifecycle needs from the place a job runs.

    Attributes:
        store: where the job's files are.
        ttl_s: how long a finished job's results are kept.
        record: saves the job's state where watchers see it (async; the local queue publishes, Modal commits).
        cancelled: whether the job was cancelled, asked after the work stopped or was interrupted (`reason`:
            the interruption's `asyncio.CancelledError`, or None).
        rerun_interrupted: True when an interrupted job will be run again (Modal reruns a preempted input).
    """

    store: JobStore
    ttl_s: float
    record: Callable[[Job], Awaitable[None]]
    cancelled: Callable[[Job, asyncio.CancelledError | None], Awaitable[bool]]
    rerun_interrupted: bool


async def run(job: Job, work: Callable[[], Awaitable[None]], runner: Runner) -> Job:
    """Run `work` (the job's outputs, `app.jobs.runner.execute`) as `job`'s lifecycle (module docstring).
    Returns the job in its new state; re-raises an interruption (`asyncio.CancelledError`) once recorded."""
    job.status, job.started_at, job.stage, job.progress, job.error = "running", time.time(), "decode", 0.0, None
    job.queue_position = None
    await runner.record(job)
    interrupt: asyncio.CancelledError | None = None
    try:
        await work()
    except JobCancelledError as stopped:
        LOGGER.info("%s", stopped)
        _cancel(job, runner.ttl_s)
    except SharpError as error:
        if job.status == "running":
            job.finish("failed", time.time(), runner.ttl_s, error)
    except asyncio.CancelledError as error:
        interrupt = error
        _uncancel()  # let the bookkeeping below await; the interruption is raised again at the end
    except Exception as error:
        if job.status == "running":  # not one cancelled meanwhile, whose files went
            LOGGER.exception("Job %s failed", job.id)
            job.finish("failed", time.time(), runner.ttl_s, SharpError(
                f"Internal error ({type(error).__name__}); see the server log.", code="internal_error", status=500))
    if interrupt is not None or job.status == "running":
        if await runner.cancelled(job, interrupt):
            _cancel(job, runner.ttl_s)
        elif interrupt is None:
            job.finish("succeeded", time.time(), runner.ttl_s)
        elif runner.rerun_interrupted:
            LOGGER.warning("Job %s was interrupted; it goes back to the queue to run again", job.id)
            job.status, job.stage, job.progress, job.started_at = "queued", "queued", 0.0, None
        else:
            job.finish("failed", time.time(), runner.ttl_s, INTERRUPTED)
    await anyio.to_thread.run_sync(runner.store.tidy, job)
    await runner.record(job)
    if interrupt is not None:
        raise interrupt
    return job


def _cancel(job: Job, ttl_s: float) -> None:
    if job.status != "cancelled":
        job.finish("cancelled", time.time(), ttl_s)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()

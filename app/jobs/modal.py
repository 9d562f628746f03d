"""Jobs on Modal: each job is one spawned call of a GPU class, so Modal's own queue holds them and its
autoscaler fans them out over GPU containers (up to the class's `max_containers`).

    web container (SharpAPI)                        GPU container (SharpJobWorker, one job at a time)
    POST /jobs: check, write input + job.json  ──>  run_job(job_id): reload, `running`, app.pipeline,
                to the Volume, commit, .spawn(),      results + job.json to the Volume, commit
                then the call id (`call`), commit
    GET /jobs/{id}: reload the Volume, read job.json, poll the call (`FunctionCall.from_id(...).get(timeout=0)`)

This module is the web container's side, and the Volume's helpers both sides use; the GPU side (`run_job`,
and a clip's frames spread over more GPU containers) is `app.jobs.modal_worker`. The job's run is
`app.jobs.lifecycle`, as locally. Modal specifics, checked against the SDK (1.6):

* `FunctionCall.get(timeout=0)` raises Python's built-in `TimeoutError` while the call runs;
  `FunctionTimeoutError` / `OutputExpiredError` (and any other exception) mean it ended without a result.
* A cancelled or preempted input sees `asyncio.CancelledError` in `run_job` (Modal cancels the input's
  task, on SIGUSR1 with the message "Input was cancelled by user", on SIGINT without one). A cancel is
  recorded by the web container before it cancels the call; anything else is a preemption: the job
  goes back to `queued` and Modal runs the same input again.
* `Volume.reload()` fails while any file of the Volume is open in the container, and `commit()` reloads
  afterwards. So this container touches the Volume's files only under one lock, never across a reload
  or commit (results are read into memory before they are sent), and both are retried briefly; if the
  Volume stays busy the request gets a retryable 503 rather than a stale answer.
* The worker and the web container never write the same file at the same stage: `job.json` is the
  worker's once the job is spawned (the web container writes it again only to cancel or to fail a dead
  call), the call id lives in its own file.

State and results live in a Modal Volume laid out like the local `JobStore` (same code), so any web
container can answer for any job, and results survive every container. Differences from the local
queue, all documented in the README: progress is coarse (queued, running, done: the worker commits
the Volume at those points only, not ten times a second), `queue_position` is null (Modal does not
say), a web container restarting does not interrupt anything (the calls run on), and a call that
died (timeout, crash, out of memory) turns the job `failed` with the code `worker_failed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread

from app.errors import SharpError
from app.jobs.base import (
    Job,
    JobNotFoundError,
    ResultFile,
    check_file,
    check_job_id,
    check_live,
    check_result,
    new_job_id,
)
from app.jobs.store import JobStore
from app.settings import Settings

LOGGER = logging.getLogger(__name__)

POLL_S = 1.0
"""How often `watch` looks at a job, and the least time between two reloads of the Volume."""
VOLUME_ATTEMPTS = 5
"""Tries of a Volume reload or commit before giving up (a file open elsewhere in the container)."""
VOLUME_RETRY_S = 0.2
"""The first wait between two tries; it doubles."""

Spawn = Callable[[str], Awaitable[str]]
"""`spawn(job_id) -> call id`: queue `run_job(job_id)` on the GPU class (`modal_api.spawn_job`)."""


class VolumeBusyError(SharpError):
    code = "volume_busy"
    status = 503
    retryable = True


class QueueUnavailableError(SharpError):
    code = "queue_unavailable"
    status = 503
    retryable = True


def function_call(call_id: str) -> Any:
    """`modal.FunctionCall.from_id(call_id)` (the SDK is imported only where Modal runs)."""
    import modal

    return modal.FunctionCall.from_id(call_id)


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


class ModalJobQueue:
    """The `JobQueue` of a Modal web container (see the module docstring).

    Args:
        settings: time to live and size cap.
        store: the job directories on the mounted Volume.
        volume: that `modal.Volume` (`reload` to see other containers' commits, `commit` to publish ours).
        spawn: queues a job on the GPU class, returns the call's id.
    """

    def __init__(self, settings: Settings, store: JobStore, volume: Any, spawn: Spawn) -> None:
        self.settings = settings
        self.store = store
        self.volume = volume
        self.spawn = spawn
        self._reloaded_at = 0.0
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        """Held around every use of the Volume's files, its reloads and commits (see the module docstring)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def start(self) -> None:
        """Nothing to recover: jobs run in their own calls, whatever happens to this container."""

    async def close(self) -> None:
        """Nothing to stop (see `start`)."""

    async def submit(self, data: bytes, *, filename: str | None, f_px: float | None, outputs: list[str],
                     options: dict[str, Any], sequence: dict[str, Any] | None = None,
                     projected_bytes: int = 0) -> Job:
        job = Job(id=new_job_id(), created_at=time.time(), outputs=outputs, filename=filename, f_px=f_px,
                  options=options, input_bytes=len(data), sequence=sequence, projected_bytes=projected_bytes)
        try:
            async with self.lock:  # the worker must find the input and the state when it starts
                await anyio.to_thread.run_sync(self._store_new, job, data)
                await commit(self.volume)
            try:
                job.call_id = await self.spawn(job.id)
            except Exception as error:
                raise QueueUnavailableError(f"Modal did not queue the job ({type(error).__name__}: {error}); "
                                            "retry shortly.", retry_after_s=5) from error
        except BaseException as error:
            await self._roll_back(job, error)
            raise
        async with self.lock:
            await anyio.to_thread.run_sync(self.store.save_call, job.id, job.call_id)
            await commit(self.volume)
        return job

    async def get(self, job_id: str) -> Job:
        job = await self._load(check_job_id(job_id))
        if not job.final and job.call_id is not None:
            job = await self._poll(job)
        if job.expired is None and job.expires_at is not None and time.time() >= job.expires_at:
            async with self.lock:
                expired, _ = await anyio.to_thread.run_sync(self.store.sweep, [job], time.time())
                if expired:
                    await commit(self.volume)
        check_live(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.final:
            async with self.lock:
                await anyio.to_thread.run_sync(self.store.remove, job.id)
                await commit(self.volume)
            return job
        job.finish("cancelled", time.time(), self.settings.job_ttl_s)
        await self._record(job)  # first, so that the worker, interrupted, sees a cancel and not a preemption
        if job.call_id is not None:
            await function_call(job.call_id).cancel.aio()
        return job

    async def result(self, job_id: str, format_name: str) -> ResultFile:
        job = await self.get(job_id)
        check_result(job, format_name)
        body = await self._read(self.store.read_result, job.id, format_name)
        return ResultFile(job=job, format=format_name, path=self.store.result_path(job.id, format_name), body=body)

    async def file(self, job_id: str, path: str) -> ResultFile:
        """A clip job's file, read into memory as `result` does (one GPU container ran all its frames)."""
        job = await self.get(job_id)
        check_file(job, path)
        body = await self._read(self.store.read_file, job.id, path)
        return ResultFile(job=job, format=path, path=self.store.file_path(job.id, path), body=body)

    async def _read(self, read: Callable[[str, str], bytes | None], job_id: str, name: str) -> bytes | None:
        """`read(job_id, name)` under the Volume lock, once more after a reload if the file is not there yet
        (committed by the worker after our last reload)."""
        async with self.lock:
            body = await anyio.to_thread.run_sync(read, job_id, name)
        if body is None:
            await self._reload(force=True)
            async with self.lock:
                body = await anyio.to_thread.run_sync(read, job_id, name)
        return body

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        job = await self.get(job_id)
        yield job
        shown = job.to_dict()
        while not job.final:
            await asyncio.sleep(POLL_S)
            try:
                job = await self.get(job_id)
            except JobNotFoundError:
                return
            if job.to_dict() != shown:
                shown = job.to_dict()
                yield job

    # ------------------------------------------------------------------------------------------ helpers

    def _store_new(self, job: Job, data: bytes) -> None:
        self.store.write_input(job.id, data)
        self.store.save(job)

    async def _roll_back(self, job: Job, error: BaseException) -> None:
        """A submission that could not be queued leaves nothing behind (else it would wait forever)."""
        LOGGER.error("Job %s could not be queued (%s: %s); rolling it back", job.id, type(error).__name__, error)
        try:
            async with self.lock:
                await anyio.to_thread.run_sync(self.store.remove, job.id)
                await commit(self.volume)
        except Exception:
            LOGGER.exception("Rolling back job %s failed", job.id)

    async def _load(self, job_id: str) -> Job:
        await self._reload()
        async with self.lock:
            job = await anyio.to_thread.run_sync(self.store.load, job_id)
        if job is None:
            await self._reload(force=True)  # submitted through another web container a moment ago
            async with self.lock:
                job = await anyio.to_thread.run_sync(self.store.load, job_id)
        if job is None:
            raise JobNotFoundError(f"No job {job_id!r} (unknown, deleted, or expired long ago).")
        return job

    async def _poll(self, job: Job) -> Job:
        """The job, failed if its call died without recording an end; the call's own answer if it ended
        and the Volume does not show it yet."""
        import modal.exception

        assert job.call_id is not None
        try:
            state = await function_call(job.call_id).get.aio(timeout=0)
        except TimeoutError:  # Python's own: the call has not finished (queued, running, or rerun)
            return job
        except (modal.exception.FunctionTimeoutError, modal.exception.OutputExpiredError) as error:
            return await self._worker_failed(job, f"The GPU call ended without a result: {error!r}")
        except Exception as error:
            return await self._worker_failed(job, f"The GPU call failed: {type(error).__name__}: {error}")
        return Job.from_dict({**state, "call_id": job.call_id}) if isinstance(state, dict) else job

    async def _worker_failed(self, job: Job, message: str) -> Job:
        await self._reload(force=True)
        async with self.lock:
            latest = await anyio.to_thread.run_sync(self.store.load, job.id)
        if latest is not None and latest.final:
            return latest
        LOGGER.error("Job %s: %s", job.id, message)
        job.finish("failed", time.time(), self.settings.job_ttl_s, SharpError(message, code="worker_failed"))
        await self._record(job)
        return job

    async def _record(self, job: Job) -> None:
        async with self.lock:
            await anyio.to_thread.run_sync(self.store.tidy, job)
            await anyio.to_thread.run_sync(self.store.save, job)
            await commit(self.volume)

    async def _reload(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._reloaded_at < POLL_S:
            return
        async with self.lock:
            await reload(self.volume)
            self._reloaded_at = time.monotonic()

"""Jobs on Modal: each job is one spawned call of a GPU class, so Modal's own queue holds them and its
autoscaler fans them out over GPU containers (up to the class's `max_containers`).

    web container (SharpAPI)                        GPU container (SharpJobWorker, one job at a time)
    POST /jobs: check, write input + job.json  ──>  run_job(job_id): reload, `running`, app.pipeline,
                to the Volume, commit, .spawn(),      results + job.json to the Volume, commit
                then the call id (`call`), commit
    GET /jobs/{id}: reload the Volume, read job.json, poll the call (`FunctionCall.from_id(...).get(timeout=0)`)

This module is the web container's side; the Volume's helpers both sides use are `app.jobs.modal_volume`;
the job's side (`run_job`, and its predictions made in GPU containers) is `app.jobs.modal_worker` (a clip's
frames: `app.jobs.modal_clip`).
The job's run is `app.jobs.lifecycle`, as locally. Modal specifics, checked against the SDK (1.6):

* `FunctionCall.get(timeout=0)` raises Python's built-in `TimeoutError` while the call runs;
  `FunctionTimeoutError` / `OutputExpiredError` (or the run's own exception) mean it ended without a result.
* A cancelled or preempted input sees `asyncio.CancelledError` in `run_job` (Modal cancels the input's
  task, on SIGUSR1 with the message "Input was cancelled by user", on SIGINT without one). A cancel is
  recorded by the web container before it cancels the call; anything else is a preemption: the job
  goes back to `queued` and Modal runs the same input again. When Modal does not (the call ends
  `GENERIC_STATUS_TERMINATED`, `INTERNAL_FAILURE` or an eviction: the SDK raises `RemoteError` or
  `InternalFailure`), the web container queues the job again on a new call, `MAX_REQUEUES` times at most
  (`Job.requeues`), then fails it `worker_failed`. A transient RPC error of a poll (after the SDK's own
  retries) is retried with backoff, and never fails a job.
* `Volume.reload()` fails while any file of the Volume is open in the container, and `commit()` reloads
  afterwards; the SDK runs one reload or commit of a Volume at a time. So this container touches a job's
  files only under that job's lock (`locked`: other jobs never wait for it; waited `LOCK_TIMEOUT_S` at
  most, then a retryable 503 with Retry-After), reads results into memory before sending them, shares
  one reload among the requests that need one, and retries reloads and commits briefly (a file of another
  job open at that moment); if the Volume stays busy the request gets a retryable 503 rather than a
  stale answer.
* The worker and the web container never write the same file at the same stage: `job.json` is the
  worker's once the job is spawned (the web container writes it again only to cancel, to fail a dead
  call or to queue a lost one's job again), the call id lives in its own file.

State and results live in a Modal Volume laid out like the local `JobStore` (same code), so any web
container can answer for any job, and results survive every container. Differences from the local
queue, all documented in the README: progress is coarse (queued, running, done: the worker commits
the Volume at those points only, not ten times a second), `queue_position` is null (Modal does not
say), a web container restarting does not interrupt anything (the calls run on), and a call that
timed out, lost its output or raised turns the job `failed` with the code `worker_failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread

from app.errors import BusyError, InvalidRequestError, SharpError
from app.jobs.errors import JobNotFoundError
from app.jobs.job import Job, ResultFile, check_file, check_job_id, check_live, check_result, new_job_id
from app.jobs.modal_volume import POLL_S, VOLUME_RETRY_S, VolumeBusyError, commit, reload
from app.jobs.store import JobStore
from app.settings import Settings

LOGGER = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 10.0
"""Longest wait for another request's work on the same job's files (a slow commit) before a retryable 503."""
MAX_REQUEUES = 3
"""Times a job whose call was lost (terminated, preempted for good, Modal's internal failure, an eviction)
is queued again before it fails `worker_failed`."""
POLL_ATTEMPTS = 4
"""Tries of one poll of a job's call when the SDK's own retries of a transient RPC error ran out."""


def lost_call_errors() -> tuple[type[Exception], ...]:
    """What the SDK raises for a call Modal lost (TERMINATED, GENERIC_STATUS_INTERNAL_FAILURE, an eviction: no
    exception of the run's own): such a call is queued again, `MAX_REQUEUES` times at most."""
    import modal.exception

    return (modal.exception.InternalFailure, modal.exception.RemoteError)


def lost_too_often(call: str, times: int, last: str) -> str:
    """Why a job failed `worker_failed`: its `call` ("The GPU call") was lost `times` times, the last for `last`."""
    return f"{call} was lost {times} times (last: {last}); submit it again."


Spawn = Callable[[str], Awaitable[str]]
"""`spawn(job_id) -> call id`: queue `run_job(job_id)` (`modal_api.spawn_job`: on the CPU class `SharpJobRunner`,
whose GPU calls only predict, `app.jobs.modal_worker`)."""


class QueueUnavailableError(BusyError):
    code = "queue_unavailable"


def function_call(call_id: str) -> Any:
    """`modal.FunctionCall.from_id(call_id)` (the SDK is imported only where Modal runs)."""
    import modal

    return modal.FunctionCall.from_id(call_id)


class ModalJobQueue:
    """The `JobQueue` of a Modal web container (see the module docstring).

    Args:
        settings: time to live and size cap.
        store: the job directories on the mounted Volume.
        volume: that `modal.Volume` (`reload` to see other containers' commits, `commit` to publish ours).
        spawn: queues a job's call (`Spawn`; `modal_api`: on the CPU class `SharpJobRunner`, whose GPU calls only
            predict, `app.jobs.modal_worker`), returns the call's id.
        lock_timeout_s: the longest wait for a job's lock, or a forced reload, before a 503 (`locked`).
    """

    def __init__(self, settings: Settings, store: JobStore, volume: Any, spawn: Spawn, *,
                 lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.settings = settings
        self.store = store
        self.volume = volume
        self.spawn = spawn
        self.lock_timeout_s = lock_timeout_s
        self._reloaded_at = 0.0
        self._reloading: asyncio.Future[None] | None = None
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def locked(self, job_id: str) -> AsyncIterator[None]:
        """Held around every use of one job's files and the commit that publishes them (module docstring);
        other jobs' requests never wait for it. Waited for `lock_timeout_s` at most: then a 503
        `volume_busy` with Retry-After."""
        lock = self._locks.get(job_id)
        if lock is None:
            lock = self._locks[job_id] = asyncio.Lock()
        try:
            async with asyncio.timeout(self.lock_timeout_s):
                await lock.acquire()
        except TimeoutError:
            raise VolumeBusyError(f"Another request is still writing job {job_id}'s files to the jobs volume "
                                  f"(waited {self.lock_timeout_s:g} s); retry shortly.", retry_after_s=2) from None
        try:
            yield
        finally:
            lock.release()

    async def start(self) -> None:
        """Nothing to recover: jobs run in their own calls, whatever happens to this container."""

    async def close(self) -> None:
        """Nothing to stop (see `start`)."""

    async def submit(self, data: bytes, *, filename: str | None, f_px: float | None, outputs: list[str],
                     options: dict[str, Any], sequence: dict[str, Any] | None = None,
                     projected_bytes: int = 0, first: str | None = None,
                     webhook: dict[str, Any] | None = None) -> Job:
        if webhook is not None:
            raise InvalidRequestError("webhook_url: this deployment (Modal) sends no webhooks yet; follow the job "
                                      "with GET /jobs/{id} or its /events.", code="webhooks_disabled")
        job = Job(id=new_job_id(), created_at=time.time(), outputs=outputs, filename=filename, f_px=f_px,
                  options=options, input_bytes=len(data), sequence=sequence, projected_bytes=projected_bytes,
                  first=first)
        try:
            async with self.locked(job.id):  # the worker must find the input and the state when it starts
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
        async with self.locked(job.id):
            await anyio.to_thread.run_sync(self.store.save_call, job.id, job.call_id)
            await commit(self.volume)
        return job

    async def get(self, job_id: str) -> Job:
        job = await self._load(check_job_id(job_id))
        if not job.final and job.call_id is not None:
            job = await self._poll(job)
        if job.expired is None and job.expires_at is not None and time.time() >= job.expires_at:
            async with self.locked(job.id):
                expired, _ = await anyio.to_thread.run_sync(self.store.sweep, [job], time.time())
                if expired:
                    await commit(self.volume)
        check_live(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.final:
            async with self.locked(job.id):
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
        """A clip job's file, read into memory as `result` does (one container made all its files)."""
        job = await self.get(job_id)
        check_file(job, path)
        body = await self._read(self.store.read_file, job.id, path)
        return ResultFile(job=job, format=path, path=self.store.file_path(job.id, path), body=body)

    async def _read(self, read: Callable[[str, str], bytes | None], job_id: str, name: str) -> bytes | None:
        """`read(job_id, name)` under the job's lock, once more after a reload if the file is not there yet
        (committed by the worker after our last reload)."""
        async with self.locked(job_id):
            body = await anyio.to_thread.run_sync(read, job_id, name)
        if body is None:
            await self._reload(force=True)
            async with self.locked(job_id):
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
            async with self.locked(job.id):
                await anyio.to_thread.run_sync(self.store.remove, job.id)
                await commit(self.volume)
        except Exception:
            LOGGER.exception("Rolling back job %s failed", job.id)

    async def _load(self, job_id: str) -> Job:
        await self._reload()
        async with self.locked(job_id):
            job = await anyio.to_thread.run_sync(self.store.load, job_id)
        if job is None:
            await self._reload(force=True)  # submitted through another web container a moment ago
            async with self.locked(job_id):
                job = await anyio.to_thread.run_sync(self.store.load, job_id)
        if job is None:
            raise JobNotFoundError(f"No job {job_id!r} (unknown, deleted, or expired long ago).")
        return job

    async def _poll(self, job: Job) -> Job:
        """The job as its call stands: unchanged while the call runs (or while Modal cannot be asked: a
        transient error, retried `POLL_ATTEMPTS` times, fails no job); the call's own answer if it ended and
        the Volume does not show it yet; queued again on a new call if the call was lost (`_requeue`);
        failed `worker_failed` if it timed out, its output expired, or the run raised."""
        import modal.exception
        from grpclib import GRPCError

        assert job.call_id is not None
        wait = VOLUME_RETRY_S
        for attempt in range(1, POLL_ATTEMPTS + 1):
            try:
                state = await function_call(job.call_id).get.aio(timeout=0)
            except TimeoutError:  # Python's own: the call has not finished (queued, running, or rerun)
                return job
            except (modal.exception.FunctionTimeoutError, modal.exception.OutputExpiredError) as error:
                return await self._worker_failed(job, f"The GPU call ended without a result: {error!r}")
            except lost_call_errors() as error:
                return await self._requeue(job, f"{type(error).__name__}: {error}")
            except (modal.exception.ServiceError, modal.exception.ConnectionError, modal.exception.TimeoutError,
                    GRPCError, OSError) as error:  # the SDK retried the RPC already
                if attempt == POLL_ATTEMPTS:
                    LOGGER.warning("Job %s: polling its call %s failed %d times (%s: %s); the job stays as stored",
                                   job.id, job.call_id, attempt, type(error).__name__, error)
                    return job
                await asyncio.sleep(wait)
                wait *= 2
                continue
            except Exception as error:
                return await self._worker_failed(job, f"The GPU call failed: {type(error).__name__}: {error}")
            return Job.from_dict({**state, "call_id": job.call_id}) if isinstance(state, dict) else job
        return job

    async def _requeue(self, job: Job, reason: str) -> Job:
        """A lost call's job, queued again on a new call (`Job.requeues` counts it), at most `MAX_REQUEUES`
        times, then failed; unless the Volume shows it ended, or another web container requeued it already."""
        await self._reload(force=True)
        async with self.locked(job.id):
            latest = await anyio.to_thread.run_sync(self.store.load, job.id)
        if latest is None or latest.final or latest.call_id != job.call_id:
            return latest or job
        if latest.requeues >= MAX_REQUEUES:
            return await self._worker_failed(latest, lost_too_often("The GPU call", latest.requeues + 1, reason))
        LOGGER.warning("Job %s: its call %s was lost (%s); queueing it again", job.id, job.call_id, reason)
        latest.status, latest.stage, latest.progress, latest.started_at = "queued", "queued", 0.0, None
        latest.frame, latest.requeues = None, latest.requeues + 1
        async with self.locked(job.id):  # first: the new call's worker must find the job queued, not overwrite it
            await anyio.to_thread.run_sync(self.store.save, latest)
            await commit(self.volume)
        try:
            call_id = await self.spawn(job.id)
        except Exception as error:  # the next poll sees the same lost call and tries again
            LOGGER.error("Job %s: queueing it again failed (%s: %s)", job.id, type(error).__name__, error)
            return latest
        latest.call_id = call_id
        async with self.locked(job.id):
            await anyio.to_thread.run_sync(self.store.save_call, job.id, call_id)
            await commit(self.volume)
        return latest

    async def _worker_failed(self, job: Job, message: str) -> Job:
        await self._reload(force=True)
        async with self.locked(job.id):
            latest = await anyio.to_thread.run_sync(self.store.load, job.id)
        if latest is not None and latest.final:
            return latest
        LOGGER.error("Job %s: %s", job.id, message)
        job.finish("failed", time.time(), self.settings.job_ttl_s, SharpError(message, code="worker_failed"))
        await self._record(job)
        return job

    async def _record(self, job: Job) -> None:
        async with self.locked(job.id):
            await anyio.to_thread.run_sync(self.store.tidy, job)
            await anyio.to_thread.run_sync(self.store.save, job)
            await commit(self.volume)

    async def _reload(self, force: bool = False) -> None:
        """See other containers' commits: a reload of the Volume at most every `POLL_S`, shared by the requests
        that ask while it runs (the SDK runs one reload or commit of a Volume at a time). A reload held up
        behind a slow commit is waited for `lock_timeout_s`; then a request that must see a fresh view
        (`force`: a file that must be there, a state about to be replaced) gets 503 `volume_busy`, and any
        other goes on with this container's view (a job's state is also polled from its call)."""
        if self._reloading is None:
            if not force and time.monotonic() - self._reloaded_at < POLL_S:
                return
            self._reloading = asyncio.ensure_future(self._reload_now())
            self._reloading.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen by all
        try:
            async with asyncio.timeout(self.lock_timeout_s):
                await asyncio.shield(self._reloading)
        except TimeoutError:
            if force:
                raise VolumeBusyError(f"The jobs volume did not reload within {self.lock_timeout_s:g} s (a slow "
                                      "commit); retry shortly.", retry_after_s=2) from None

    async def _reload_now(self) -> None:
        try:
            await reload(self.volume)
            self._reloaded_at = time.monotonic()
        finally:
            self._reloading = None

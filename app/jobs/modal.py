"""Jobs on Modal: each job is one spawned call of a GPU class, so Modal's own queue holds them and its
autoscaler fans them out over GPU containers (up to the class's `max_containers`).

    web container (SharpAPI)                        GPU container (SharpJobWorker, one job at a time)
    POST /jobs: check, write input + job.json  ──>  run_job(job_id): reload, `running`, app.pipeline,
                to the Volume, commit, .spawn()       results + job.json to the Volume, commit
    GET /jobs/{id}: reload the Volume, read job.json, poll the call (`FunctionCall.from_id(...).get(timeout=0)`)

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
from app.imaging import ImageError
from app.jobs import runner
from app.jobs.base import (
    Job,
    JobNotFoundError,
    ResultFile,
    check_job_id,
    check_live,
    check_result,
    new_job_id,
)
from app.jobs.store import JobStore
from app.service import InferenceService
from app.settings import Settings

LOGGER = logging.getLogger(__name__)

POLL_S = 1.0
"""How often `watch` looks at a job, and the least time between two reloads of the Volume."""

Spawn = Callable[[str], Awaitable[str]]
"""`spawn(job_id) -> call id`: queue `run_job(job_id)` on the GPU class (`modal_api.spawn_job`)."""


def _function_call(call_id: str) -> Any:
    import modal

    return modal.FunctionCall.from_id(call_id)


class ModalJobQueue:
    """The `JobQueue` of a Modal web container (see the module docstring).

    Args:
        settings: time to live and size cap.
        store: the job directories on the mounted Volume.
        volume: that Volume (`reload()` to see other containers' commits, `commit()` to publish ours).
        spawn: queues a job on the GPU class, returns the call's id.
        function_call: call id -> `modal.FunctionCall` (tests pass a fake).
    """

    def __init__(self, settings: Settings, store: JobStore, volume: Any, spawn: Spawn,
                 function_call: Callable[[str], Any] = _function_call) -> None:
        self.settings = settings
        self.store = store
        self.volume = volume
        self.spawn = spawn
        self.function_call = function_call
        self._reloaded_at = 0.0

    async def start(self) -> None:
        """Nothing to recover: jobs run in their own calls, whatever happens to this container."""

    async def close(self) -> None:
        """Nothing to stop (see `start`)."""

    async def submit(self, data: bytes, *, filename: str | None, f_px: float | None, outputs: list[str],
                     options: dict[str, Any]) -> Job:
        job = Job(id=new_job_id(), created_at=time.time(), outputs=outputs, filename=filename, f_px=f_px,
                  options=options, input_bytes=len(data))
        await anyio.to_thread.run_sync(self.store.write_input, job.id, data)
        await self._save(job)  # the worker must find the input and the state when it starts
        job.call_id = await self.spawn(job.id)
        await self._save(job)
        return job

    async def get(self, job_id: str) -> Job:
        job = await self._load(check_job_id(job_id))
        if not job.final and job.call_id is not None:
            job = await self._poll(job)
        if job.expired is None and job.expires_at is not None and time.time() >= job.expires_at:
            expired, _ = await anyio.to_thread.run_sync(self.store.sweep, [job], time.time())
            if expired:
                await self._commit()
        check_live(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.final:
            await anyio.to_thread.run_sync(self.store.remove, job.id)
            await self._commit()
            return job
        if job.call_id is not None:
            await self.function_call(job.call_id).cancel.aio()
        job.finish("cancelled", time.time(), self.settings.job_ttl_s)
        await anyio.to_thread.run_sync(self.store.delete_files, job)
        await self._save(job)
        return job

    async def result(self, job_id: str, format_name: str) -> ResultFile:
        job = await self.get(job_id)
        check_result(job, format_name)
        path = self.store.result_path(job.id, format_name)
        if not path.is_file():  # committed by the worker after our last reload
            await self._reload(force=True)
        return ResultFile(job=job, format=format_name, path=path)

    async def watch(self, job_id: str, keepalive_s: float = 15.0) -> AsyncIterator[Job | None]:
        job = await self.get(job_id)
        yield job
        shown, quiet_since = job.public(), time.monotonic()
        while not job.final:
            await asyncio.sleep(POLL_S)
            try:
                job = await self.get(job_id)
            except JobNotFoundError:
                return
            if job.public() != shown:
                shown, quiet_since = job.public(), time.monotonic()
                yield job
            elif time.monotonic() - quiet_since >= keepalive_s:
                quiet_since = time.monotonic()
                yield None

    # ------------------------------------------------------------------------------------------ helpers

    async def _load(self, job_id: str) -> Job:
        await self._reload()
        job = await anyio.to_thread.run_sync(self.store.load, job_id)
        if job is None:
            await self._reload(force=True)  # submitted through another web container a moment ago
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
            state = await self.function_call(job.call_id).get.aio(timeout=0)
        except (modal.exception.FunctionTimeoutError, modal.exception.OutputExpiredError) as error:
            return await self._worker_failed(job, f"The GPU call ended without a result: {error}")
        except modal.exception.TimeoutError:
            return job  # still queued or running
        except Exception as error:
            return await self._worker_failed(job, f"The GPU call failed: {type(error).__name__}: {error}")
        return Job.from_dict(state) if isinstance(state, dict) else job

    async def _worker_failed(self, job: Job, message: str) -> Job:
        latest = await anyio.to_thread.run_sync(self.store.load, job.id)
        if latest is not None and latest.final:
            return latest
        LOGGER.error("Job %s: %s", job.id, message)
        job.finish("failed", time.time(), self.settings.job_ttl_s, SharpError(message, code="worker_failed"))
        await anyio.to_thread.run_sync(self.store.delete_files, job)
        await self._save(job)
        return job

    async def _save(self, job: Job) -> None:
        await anyio.to_thread.run_sync(self.store.save, job)
        await self._commit()

    async def _commit(self) -> None:
        await anyio.to_thread.run_sync(self.volume.commit)

    async def _reload(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._reloaded_at < POLL_S:
            return
        self._reloaded_at = time.monotonic()
        try:
            await anyio.to_thread.run_sync(self.volume.reload)
        except Exception as error:  # e.g. a result file still open for a download: try again next time
            LOGGER.warning("Could not reload the jobs volume: %s", error)


async def run_job(service: InferenceService, settings: Settings, store: JobStore, volume: Any, job_id: str,
                  ) -> dict[str, Any]:
    """The GPU side (`SharpJobWorker.run_job`): run one stored job, commit its results and final state,
    and return that state (the web container uses it if its view of the Volume lags)."""
    await anyio.to_thread.run_sync(volume.reload)
    job = await anyio.to_thread.run_sync(store.load, check_job_id(job_id))
    if job is None:
        raise JobNotFoundError(f"No job {job_id!r} on the jobs volume.")
    if job.final:  # cancelled while it waited in Modal's queue
        return job.to_dict()
    job.status, job.started_at, job.stage, job.progress = "running", time.time(), "forward", 0.04
    await anyio.to_thread.run_sync(store.save, job)
    await anyio.to_thread.run_sync(volume.commit)
    try:
        await runner.execute(service, store, job, lambda stage, fraction: None)
        job.finish("succeeded", time.time(), settings.job_ttl_s)
    except (SharpError, ImageError) as error:
        failure = error if isinstance(error, SharpError) else SharpError(str(error), code=error.code)
        job.finish("failed", time.time(), settings.job_ttl_s, failure)
    except BaseException:  # cancelled through its FunctionCall, or a fault: record it, then let it go on
        latest = _latest(store, volume, job.id)
        if latest is not None and latest.status == "cancelled":
            job = latest
        else:
            job.finish("failed", time.time(), settings.job_ttl_s,
                       SharpError("Internal error on the GPU worker; see its log.", code="internal_error"))
        raise
    finally:
        if job.status != "succeeded":
            store.delete_files(job)
        (store.directory(job.id) / "input").unlink(missing_ok=True)
        job.input_bytes = 0
        store.save(job)
        volume.commit()
    if await anyio.to_thread.run_sync(_sweep, store):
        await anyio.to_thread.run_sync(volume.commit)
    return job.to_dict()


def _latest(store: JobStore, volume: Any, job_id: str) -> Job | None:
    try:
        volume.reload()
        return store.load(job_id)
    except Exception:
        return None


def _sweep(store: JobStore) -> bool:
    expired, removed = store.sweep(store.load_all(), time.time())
    return bool(expired or removed)

"""Jobs run by this process: a FIFO of job ids and one worker task feeding the `InferenceService`.

The worker takes the oldest queued job, reads its upload back from the `JobStore`, and runs
`app.pipeline` through the service (decode on a worker thread, the forward pass on the service's one
prediction thread, so jobs and synchronous requests take turns on the model), then encodes each
requested output and writes it atomically. Progress comes from the predictor's callback (forward hooks,
see `app.predictor.progress`), hopped onto the event loop and published at most `PROGRESS_HZ` times a
second. A cancel sets a flag that the callback turns into an exception at the next network block or render
frame; the job then ends `cancelled`, whatever step it was in.

All job state is changed on the event loop; watchers (`watch`) wake on every change. The state files
make finished jobs survive a restart; a job that was queued or running when the process stopped is
`failed` with the error code `interrupted`, at shutdown or, after a crash, at the next start.

The queue owns its folder for its whole life (`claim`, `JobStore.claim`): a second server on the same
folder stops before it reads a job. A submission reserves its projected bytes (`Job.projected_bytes`); one
that does not fit beside the reservations of the unfinished jobs is refused (503 `store_full`), and older
finished jobs are evicted to make room for it at once (`JobStore.sweep`).

A photo's job with several outputs succeeds once its prediction is kept and its first output made; its other
outputs are then encoded by this queue's `app.jobs.lazy.Encoder`, and a download of one still pending waits
for it (`result`). Watchers follow a job until it is settled (final, nothing pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread

from app.errors import SharpError
from app.jobs import lazy, lifecycle, runner, webhooks
from app.jobs.errors import JobCancelledError, JobNotFoundError, JobQueueFullError, JobStoreFullError
from app.jobs.job import Job, ResultFile, check_file, check_job_id, check_live, check_result, iso_time, new_job_id
from app.jobs.lifecycle import INTERRUPTED
from app.jobs.options import keeps_prediction
from app.jobs.progress import overall_progress
from app.jobs.store import JobStore
from app.prediction import Prediction
from app.service import InferenceService, ModelFailedError, ModelLoadingError
from app.settings import Settings
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)

PROGRESS_HZ = 10.0
"""Progress updates published per second at most (stage changes are always published)."""
MAX_RETRY_AFTER_S = 300
"""The longest Retry-After a full queue suggests (the queue's expected duration, at most this)."""
SWEEP_INTERVAL_S = 60.0
"""How often expired jobs are looked for (also after every finished job)."""


class LocalJobQueue:
    """The `JobQueue` of one server process (see the module docstring)."""

    def __init__(self, service: InferenceService, settings: Settings, store: JobStore | None = None) -> None:
        self.service = service
        self.settings = settings
        self.store = store or JobStore(settings.jobs_path, ttl_s=settings.job_ttl_s,
                                       max_bytes=settings.jobs_max_bytes)
        self._jobs: dict[str, Job] = {}
        self._pending: deque[str] = deque()
        self._changed: dict[str, asyncio.Event] = {}
        self._wakeup = asyncio.Event()
        self._cancel_running: threading.Event | None = None
        self._running: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner = lifecycle.Runner(store=self.store, ttl_s=settings.job_ttl_s, record=self._record,
                                        cancelled=self._cancelled, rerun_interrupted=False)
        self.webhooks = webhooks.WebhookSender(self.store.root / webhooks.OUTBOX_DIR, settings, self._record_webhook)
        self._encoder = lazy.Encoder(service, self.store, ahead=settings.jobs_encode_ahead, record=self._record)

    # ------------------------------------------------------------------------------------- lifecycle

    def claim(self) -> None:
        """Take the jobs folder for this server's life (`JobStore.claim`); `JobsFolderBusyError` if another
        holds it. `start` does it too; `python -m app serve` calls it first, to stop with one line."""
        settings = self.settings
        self.store.claim(f"pid {os.getpid()} on {socket.gethostname()}, http://{settings.host}:{settings.port}, "
                         f"since {iso_time(time.time())}")

    def release(self) -> None:
        """Let go of the jobs folder (`close` does it last)."""
        self.store.release()

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.claim)
        await anyio.to_thread.run_sync(self.store.remove_orphans)
        jobs = await anyio.to_thread.run_sync(self.store.load_all)
        now = time.time()
        await self.webhooks.start()  # before the interrupted jobs' failures, which are events too
        for job in jobs:
            if not job.final:
                self._fail(job, INTERRUPTED, now)
            self._jobs[job.id] = job
            self._encoder.add(job)  # a succeeded job's outputs that a stop left pending: made from its prediction
        await self._sweep()
        self._encoder.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name="sharp-jobs-worker"),
                       loop.create_task(self._sweep_periodically(), name="sharp-jobs-sweeper")]
        LOGGER.info("Jobs: %d stored under %s", len(self._jobs), self.store.root)

    async def close(self) -> None:
        if self._cancel_running is not None:
            self._cancel_running.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._encoder.close()
        now = time.time()
        for job in self._jobs.values():
            if not job.final:
                self._fail(job, INTERRUPTED, now)
                self._publish(job)
        self._pending.clear()
        await self.webhooks.close()
        self.release()

    # ---------------------------------------------------------------------------------------- the API

    async def submit(self, data: bytes, *, filename: str | None, f_px: float | None, outputs: list[str],
                     options: dict[str, Any], sequence: dict[str, Any] | None = None,
                     projected_bytes: int = 0, first: str | None = None,
                     webhook: dict[str, Any] | None = None) -> Job:
        wait = math.ceil(self.service.predict_estimate_s * (len(self._pending) + 1))
        retry_after_s = max(1, min(wait, MAX_RETRY_AFTER_S))
        if len(self._pending) >= self.settings.jobs_max_queued:
            raise JobQueueFullError(f"{len(self._pending)} jobs are queued (SHARP_JOBS_MAX_QUEUED); retry later.",
                                    retry_after_s=retry_after_s)
        job = Job(id=new_job_id(), created_at=time.time(), outputs=outputs, filename=filename, f_px=f_px,
                  options=options, input_bytes=len(data), sequence=sequence, projected_bytes=projected_bytes,
                  first=first, webhook=webhook)
        reserved = self.store.reserved_bytes(self._jobs.values())
        if reserved + job.input_bytes + projected_bytes > self.store.max_bytes:
            raise JobStoreFullError(
                f"This job needs about {_mb(job.input_bytes + projected_bytes)} in the job store, and the jobs "
                f"queued or running reserve {_mb(reserved)} of its {_mb(self.store.max_bytes)} "
                "(SHARP_JOBS_MAX_BYTES); retry once they are done.", retry_after_s=retry_after_s)
        self._jobs[job.id] = job  # its reservation counts from now, also for a submission made meanwhile
        try:
            await anyio.to_thread.run_sync(self._store_new, job, data)
        except BaseException:
            del self._jobs[job.id]
            raise
        await self._sweep(spare_last=False)  # make its room now: the oldest finished jobs go first
        self._pending.append(job.id)
        job.queue_position = len(self._pending) - 1
        self._wakeup.set()
        return job

    async def get(self, job_id: str) -> Job:
        job = self._jobs.get(check_job_id(job_id))
        if job is None:
            raise JobNotFoundError(f"No job {job_id!r} (unknown, deleted, or expired long ago).")
        if job.expired is None and job.expires_at is not None and time.time() >= job.expires_at:
            await self._sweep()  # its time is up: expire it now rather than at the next periodic sweep
        check_live(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.final:  # finished: delete it altogether
            del self._jobs[job.id]
            self._encoder.forget(job.id)
            await anyio.to_thread.run_sync(self.store.remove, job.id)
            self._publish(job)
            return job
        job.finish("cancelled", time.time(), self.settings.job_ttl_s)
        self.webhooks.observe(job)
        if job.id == self._running and self._cancel_running is not None:
            # The run stops at its next network block or render frame; its lifecycle then tidies the files
            # (deleting them under the running worker would fail the job instead).
            self._cancel_running.set()
            await anyio.to_thread.run_sync(self.store.save, job)
        else:
            if job.id in self._pending:
                self._pending.remove(job.id)
                self._publish_queued()
            await anyio.to_thread.run_sync(self._delete_and_save, job)
        self._publish(job)
        return job

    async def result(self, job_id: str, format_name: str) -> ResultFile:
        job = await self.get(job_id)
        check_result(job, format_name)
        if format_name in job.pending:  # not made yet: made next, and waited for (a bounded time)
            await self._encoder.wait(job, format_name, self.settings.job_file_wait_s)
            job = await self.get(job_id)  # it may have been deleted meanwhile
            check_result(job, format_name)  # an encode that failed: 409 result_failed
        return ResultFile(job=job, format=format_name, path=self.store.result_path(job.id, format_name))

    async def file(self, job_id: str, path: str) -> ResultFile:
        job = await self.get(job_id)
        check_file(job, path)
        if path in job.pending:  # a clip's preview or zip, made after it succeeded: made next, and waited for
            await self._encoder.wait(job, path, self.settings.job_file_wait_s)
            job = await self.get(job_id)
            check_file(job, path)
        return ResultFile(job=job, format=path, path=self.store.file_path(job.id, path))

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        job = await self.get(job_id)
        while True:
            changed = self._changed.setdefault(job.id, asyncio.Event())
            yield job
            if job.settled or self._jobs.get(job.id) is not job:
                return
            await changed.wait()

    # -------------------------------------------------------------------------------------- the worker

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if not await self._model_ready():
                continue
            job = self._jobs[self._pending.popleft()]
            self._publish_queued()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # the worker must survive anything one job does
                LOGGER.exception("Job %s crashed the worker step", job.id)
            await self._sweep()

    async def _model_ready(self) -> bool:
        """Wait while the model loads; if it failed for good, fail the queued jobs (False)."""
        while True:
            try:
                self.service.require_predictor()
                return True
            except ModelLoadingError:
                await asyncio.sleep(0.1)
            except ModelFailedError as error:
                if error.retry_after_s is not None:
                    await asyncio.sleep(0.5)
                    continue
                now = time.time()
                while self._pending:
                    job = self._jobs[self._pending.popleft()]
                    self._fail(job, error, now)
                    self._publish(job)
                return False

    async def _run(self, job: Job) -> None:
        cancel = threading.Event()
        self._running, self._cancel_running = job.id, cancel
        progress = self._progress_callback(job, cancel)
        kept: list[Prediction] = []

        async def work() -> None:
            if keeps_prediction(job.outputs, job.sequence):  # its first output, then the others (app.jobs.lazy)
                kept.append(await lazy.predict_and_keep(self.service, self.store, job, progress))
            else:
                await runner.execute(self.service, self.store, job, progress, later=True)

        try:
            await lifecycle.run(job, work, self._runner)
        finally:
            self._running = self._cancel_running = None
        if job.status == "succeeded" and job.id in self._jobs:
            self._encoder.add(job, kept[0] if kept else None)

    async def _record(self, job: Job) -> None:
        """Save the job's state and wake its watchers; a job deleted while it ran is removed instead."""
        if job.id in self._jobs:
            self.webhooks.observe(job)  # before the save: the job's record says which events were queued
            await anyio.to_thread.run_sync(self.store.save, job)
        else:
            await anyio.to_thread.run_sync(self.store.remove, job.id)
        self._publish(job)

    async def _cancelled(self, job: Job, _interrupt: asyncio.CancelledError | None) -> bool:
        return job.status == "cancelled" or job.id not in self._jobs

    def _progress_callback(self, job: Job, cancel: threading.Event) -> ProgressCallback:
        """Checks for a cancel and publishes progress (throttled) on the event loop, from any thread."""
        loop = asyncio.get_running_loop()
        last_sent = [0.0, ""]

        def progress(stage: str, fraction: float) -> None:
            if cancel.is_set():
                raise JobCancelledError(f"Job {job.id} stopped (cancelled) during {stage} at {fraction:.0%}.")
            now = time.monotonic()
            if stage != last_sent[1] or fraction >= 1.0 or now - last_sent[0] >= 1.0 / PROGRESS_HZ:
                last_sent[:] = [now, stage]
                loop.call_soon_threadsafe(self._set_progress, job, stage, fraction)

        return progress

    # ----------------------------------------------------------------------------------------- helpers

    def _store_new(self, job: Job, data: bytes) -> None:
        """The state file first (atomically), then the upload; a failure of either leaves no directory."""
        try:
            self.store.save(job)
            self.store.write_input(job.id, data)
        except BaseException:
            self.store.remove(job.id)
            raise

    def _delete_and_save(self, job: Job) -> None:
        self.store.delete_files(job)
        self.store.save(job)

    def _fail(self, job: Job, error: SharpError, now: float) -> None:
        job.finish("failed", now, self.settings.job_ttl_s, error)
        self.webhooks.observe(job)
        try:
            self.store.delete_files(job)
            self.store.save(job)
        except OSError:
            LOGGER.exception("Could not record the failure of job %s", job.id)

    def _set_progress(self, job: Job, stage: str, fraction: float) -> None:
        if job.status != "running":
            return
        job.stage = stage
        job.progress = max(job.progress, overall_progress(stage, fraction, job.frame, job.frames))
        self._publish(job)

    def _publish(self, job: Job) -> None:
        """Wake everyone watching `job` (its webhook's events included)."""
        self.webhooks.observe(job)
        changed = self._changed.pop(job.id, None)
        if changed is not None:
            changed.set()

    async def _record_webhook(self, job_id: str, changes: dict[str, Any]) -> None:
        """A webhook attempt's outcome, into its job's record (`webhooks.merge_record`), saved."""
        job = self._jobs.get(job_id)
        if job is not None and job.webhook is not None:
            job.webhook = webhooks.merge_record(job.webhook, changes)
            await anyio.to_thread.run_sync(self.store.save, job)
            self._publish(job)

    def _publish_queued(self) -> None:
        for position, job_id in enumerate(self._pending):
            job = self._jobs[job_id]
            if job.queue_position != position:
                job.queue_position = position
                self._publish(job)

    async def _sweep(self, *, spare_last: bool = True) -> None:
        expired, removed = await anyio.to_thread.run_sync(
            lambda: self.store.sweep(list(self._jobs.values()), time.time(), spare_last=spare_last))
        for job in removed:
            self._jobs.pop(job.id, None)
        for job in [*expired, *removed]:
            self._publish(job)

    async def _sweep_periodically(self) -> None:
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL_S, self.settings.job_ttl_s / 2))
            try:
                await self._sweep()
            except Exception:
                LOGGER.exception("Sweeping the jobs directory failed")


def _mb(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:,.1f} MB"

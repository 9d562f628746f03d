"""Jobs on Modal, the containers' side: a photo job runs in a CPU container (`run_job` with `predict`), whose
prediction a GPU container makes and stashes on the jobs Volume (`predict_job`); a clip job runs in its own
GPU container (`run_job`), its frames spread over more GPU containers (`predict_frames`, `ModalFrames`),
then finished in the job's, in order.

    job's CPU container (SharpJobRunner)             GPU container (SharpJobWorker.predict_job)
      run_job: `running`; spawn predict_job, wait ─>   reload; decode, forward, postprocess;
                                                       the prediction -> work/000000.npz (lossless); commit
      reload; load the stash <──────────────────────   return (a few numbers, no scene)
      budget, every encode and preview, here; results, `succeeded`, commit

So a GPU container is held for a photo's forward pass and the stash's write and commit, not for its encodes
and previews (`bench/gpu_hold.py`). Cancelling the job's call cancels the GPU call it waits for.

A clip job (in one GPU container, whose model predicts the frames no other container did):

    job's container: run_job -> run_sequence          frame containers: predict_frames(job, first, count)
      frames 0..7: predicted here                       reload; decode the clip; predict frames first..;
      at frame 0: spawn chunks 1..P  ───────────────>   each one stashed as work/<frame>.npz; commit
      frame 8: wait for chunk 1's call, reload, take
        work/000008.npz -> align, budget, encode, preview (here, in frame order)
      each chunk collected: spawn the next one
      end: cancel what is still running; the work/ files go with the lifecycle's tidy

Chunks are `SHARP_VIDEO_CHUNK_FRAMES` frames long and at most `SHARP_VIDEO_PARALLEL_CHUNKS` are out at once
per job (each a GPU container of `modal_api.SharpFrameWorker`, which loads the model once per container).
A chunk whose call fails (its container died, timed out, could not be spawned) or that stashed fewer
frames than asked is predicted here instead: the files are the same, only slower. So is a chunk still
unfinished `SHARP_VIDEO_CHUNK_WAIT_S` after its spawn (waiting in Modal's queue under load, or on a slow
container): its call is cancelled, and no more chunks are sent out, so the job's own call (its timeout)
covers at most that wait plus its clip's frames predicted here. Since every frame's
scene is made by `app.pipeline.run` from the same prediction, in the same order, the files are those of
a serial run (`app.sequence.fanout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from app.cancel import run_cancellable
from app.errors import SharpError
from app.imaging import LoadedImage
from app.jobs import lifecycle, runner
from app.jobs.errors import JobCancelledError, JobNotFoundError
from app.jobs.job import Job, check_job_id
from app.jobs.modal import MAX_REQUEUES, Spawn, function_call
from app.jobs.modal_volume import POLL_S, VolumeBusyError, commit, reload
from app.jobs.store import JobStore
from app.prediction import Prediction
from app.sequence.fanout import Timings, load_prediction, predict_chunk, save_prediction
from app.service import InferenceService
from app.settings import Settings
from app.video import VideoLimits
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)

CANCELLED_BY_USER = "Input was cancelled by user"
"""What Modal's container passes to `Task.cancel` when the input's `FunctionCall` is cancelled."""

PHOTO_STASH = 0
"""A photo job's prediction is its stash 0 (`JobStore.stash_path`), as a clip's frame 0 would be."""

SpawnFrames = Callable[[str, int, int], Awaitable[str]]
"""`spawn_frames(job_id, first, count) -> call id`: queue `predict_frames` on the frame class
(`modal_api.spawn_frames`)."""


async def run_job(service: InferenceService, settings: Settings, store: JobStore, volume: Any, job_id: str,
                  spawn_frames: SpawnFrames | None = None, *, predict: Spawn | None = None) -> dict[str, Any]:
    """A job's run (`SharpJobWorker.run_job`, `SharpJobRunner.run_job`): through `app.jobs.lifecycle`, commit
    its results and state, and return that state (the web container uses it if its view of the Volume lags).
    An interruption is re-raised once the job is back in the queue (Modal then runs the input again).
    `spawn_frames`: where a clip's later frames go (None: all are predicted here). `predict`: queues
    `predict_job` on the GPU class (a photo job's prediction is made there, the rest here; `service` then
    holds no model); None: `service`'s model predicts."""
    await reload(volume)
    job = await anyio.to_thread.run_sync(store.load, check_job_id(job_id))
    if job is None:
        raise JobNotFoundError(f"No job {job_id!r} on the jobs volume.")
    if job.final:  # cancelled while it waited in Modal's queue
        return job.to_dict()

    async def record(job: Job) -> None:
        await anyio.to_thread.run_sync(store.save, job)
        await commit(volume)

    async def cancelled(job: Job, interrupt: asyncio.CancelledError | None) -> bool:
        if interrupt is not None and CANCELLED_BY_USER in map(str, interrupt.args):
            return True
        try:
            await reload(volume)
        except VolumeBusyError:
            return False
        latest = await anyio.to_thread.run_sync(store.load, job.id)
        return latest is not None and latest.status == "cancelled"

    frames = None
    if job.sequence is not None and spawn_frames is not None and settings.video_parallel_chunks > 0:
        frames = ModalFrames(job.id, store, volume, spawn_frames, chunk_frames=settings.video_chunk_frames,
                             parallel=settings.video_parallel_chunks, wait_s=settings.video_chunk_wait_s)
    work = lifecycle.Runner(store=store, ttl_s=settings.job_ttl_s, record=record, cancelled=cancelled,
                            rerun_interrupted=True)

    async def execute() -> None:
        if predict is None or job.sequence is not None:
            await runner.execute(service, store, job, _no_progress, elsewhere=frames)
            return
        prediction, timings = await predicted_on_gpu(predict, store, volume, job.id)
        here = InferenceService(settings, PredictedElsewhere(prediction, timings))  # type: ignore[arg-type]
        await runner.execute(here, store, job, _no_progress)
        job.model = prediction.model.summary()  # the model that predicted it, not this CPU container

    try:
        await lifecycle.run(job, execute, work)
    finally:
        if frames is not None:
            await frames.close()
    if await anyio.to_thread.run_sync(_sweep, store):
        await commit(volume)
    return job.to_dict()


async def predict_job(service: InferenceService, store: JobStore, volume: Any, job_id: str) -> dict[str, Any]:
    """The GPU side of a photo job (`SharpJobWorker.predict_job`): decode, forward, postprocess (on the
    container's device), then the prediction stashed on the jobs Volume (`save_prediction`: lossless, the
    scene's float32 arrays, 56 B per Gaussian) and committed; nothing is encoded here. Returns a few numbers:
    `stash_bytes`, `timings_ms` and `after_forward_s` (from the forward's end to this return: the postprocess,
    the stash's write and the commit, what the GPU container is held for beyond its forward pass)."""
    await reload(volume)
    job = await anyio.to_thread.run_sync(store.load, check_job_id(job_id))
    if job is None:
        raise JobNotFoundError(f"No job {job_id!r} on the jobs volume.")
    if job.final:  # cancelled meanwhile
        return {}
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    forward_end: list[float] = []

    def mark(stage: str, fraction: float) -> None:  # the predictor's stages: ..., forward, postprocess
        if stage == "postprocess" and not forward_end:
            forward_end.append(time.perf_counter())

    result = await service.run(data, filename=job.filename, f_px=job.f_px, outputs={}, progress=mark, admit=False)
    del data
    body = await anyio.to_thread.run_sync(save_prediction, result.prediction, result.timings_ms)
    await anyio.to_thread.run_sync(store.write_stash, job.id, PHOTO_STASH, body)
    await commit(volume)
    return {"stash_bytes": len(body), "timings_ms": result.timings_ms,
            "after_forward_s": time.perf_counter() - forward_end[0]}


async def predicted_on_gpu(predict: Spawn, store: JobStore, volume: Any, job_id: str) -> tuple[Prediction, Timings]:
    """Queue `predict_job(job_id)` on the GPU class, wait for it, and load the prediction it stashed. A call
    Modal lost (terminated, its internal failure, an eviction: `RemoteError`, `InternalFailure`) is queued
    again, `MAX_REQUEUES` times at most, then the job fails `worker_failed`. Cancelling the wait (the job
    cancelled or preempted) cancels the GPU call too."""
    import modal.exception

    for attempt in range(1, MAX_REQUEUES + 2):
        call_id = await predict(job_id)
        try:
            stashed = await function_call(call_id).get.aio()
            break
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # it stops at its timeout otherwise
                await function_call(call_id).cancel.aio()
            raise
        except (modal.exception.InternalFailure, modal.exception.RemoteError) as error:
            if attempt > MAX_REQUEUES:
                raise SharpError(f"The GPU call was lost {attempt} times (last: {type(error).__name__}: {error}); "
                                 "submit it again.", code="worker_failed", status=503) from error
            LOGGER.warning("Job %s: its GPU call %s was lost (%s: %s); queueing it again", job_id, call_id,
                           type(error).__name__, error)
    if not stashed:  # the job ended (was cancelled) before its prediction
        raise JobCancelledError(f"Job {job_id} ended before the GPU container predicted it.")
    await reload(volume)
    body = await anyio.to_thread.run_sync(_read_stash, store, job_id)
    return await anyio.to_thread.run_sync(load_prediction, body)


def _read_stash(store: JobStore, job_id: str) -> bytes:
    """The photo job's stash, kept (a rerun of the job's call reads it again; the lifecycle's tidy removes it)."""
    path = store.stash_path(job_id, PHOTO_STASH)
    if not path.is_file():
        raise RuntimeError(f"the GPU call ended without stashing job {job_id}'s prediction on the jobs volume")
    return path.read_bytes()


class PredictedElsewhere:
    """The model of a photo job's CPU container (`run_job` with `predict`): its `predict` answers with the
    prediction the GPU class made (`predict_job`), so `app.pipeline.run` does the rest here (the budget, the
    encodes, the renders: on this container's CPU). The photo is decoded here again (checked as ever; CPU time,
    not GPU time)."""

    def __init__(self, prediction: Prediction, timings_ms: Timings) -> None:
        self.prediction = replace(prediction, model=replace(prediction.model, device="cpu"))
        self.timings_ms = timings_ms
        self.info = self.prediction.model

    def predict(self, image: LoadedImage, *, f_px: float | None = None, progress: ProgressCallback | None = None,
                timings_ms: dict[str, float] | None = None) -> Prediction:
        if timings_ms is not None:
            timings_ms.update({stage: ms for stage, ms in self.timings_ms.items() if stage != "decode"})
        return self.prediction


async def predict_frames(service: InferenceService, settings: Settings, store: JobStore, volume: Any,
                         job_id: str, first: int, count: int) -> list[int]:
    """A frame container's part of a clip job (`SharpFrameWorker.predict_frames`): predict its sampled frames
    `first` .. `first + count - 1`, stash each on the Volume, commit; returns the frames stashed. Nothing
    for a job that is gone or over. Cancelling the call stops it at the network's next block."""
    await reload(volume)
    job = await anyio.to_thread.run_sync(store.load, check_job_id(job_id))
    if job is None or job.final or job.sequence is None:
        return []
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    sampling, _ = runner.sequence_options(job)
    predictor = service.require_predictor()

    def stash(index: int, prediction: Prediction, timings: Timings) -> None:
        store.write_stash(job.id, index, save_prediction(prediction, timings))

    def work(check: ProgressCallback) -> list[int]:
        return predict_chunk(predictor, data, range(first, first + count), sampling=sampling,
                             limits=VideoLimits.from_settings(settings), f_px=job.f_px, stash=stash, progress=check)

    done = await run_cancellable(work, limiter=anyio.CapacityLimiter(1))
    await commit(volume)
    return done


class ModalFrames:
    """The `FramePredictions` of a clip job on Modal (module docstring), called on the run's thread.

    Args:
        job_id, store, volume: the job and the jobs Volume as this container sees it.
        spawn_frames: queues a chunk on the frame class.
        chunk_frames: frames per chunk; chunk 0 is predicted here.
        parallel: the most chunks out at once.
        wait_s: the longest a chunk may take from its spawn (Modal's queue included): past it, it is taken
            back (its call cancelled, its frames predicted here) and no more chunks are spawned (Modal's queue
            is full). So a job waits at most about `wait_s` for other containers, whatever the clip's length.
    """

    def __init__(self, job_id: str, store: JobStore, volume: Any, spawn_frames: SpawnFrames, *, chunk_frames: int,
                 parallel: int, wait_s: float) -> None:
        self.job_id, self.store, self.volume, self.spawn_frames = job_id, store, volume, spawn_frames
        self.chunk_frames, self.parallel, self.wait_s = chunk_frames, parallel, wait_s
        self._out: dict[int, str] = {}
        """Chunk -> its call's id, for the chunks spawned and not collected yet."""
        self._spawned_at: dict[int, float] = {}
        """Chunk -> when its call was spawned (`time.monotonic()`)."""
        self._taken_back = False
        """Whether a chunk was taken back for waiting too long (then no more are spawned)."""
        self._stashed: dict[int, bool] = {}
        """Chunk -> whether its frames were stashed (False: predict them here), once collected."""
        self._next = 1
        """The next chunk to spawn."""

    def __call__(self, index: int, expected: int, waiting: Callable[[], None]) -> tuple[Prediction, Timings] | None:
        chunk = index // self.chunk_frames
        while (stashed := anyio.from_thread.run(self._collect, chunk, expected)) is None:
            waiting()
        body = self.store.take_stash(self.job_id, index) if stashed else None
        return None if body is None else load_prediction(body)

    async def close(self) -> None:
        """Cancel the chunks still out (the job ended, failed or was cancelled before it needed them)."""
        for chunk, call_id in list(self._out.items()):
            try:
                await function_call(call_id).cancel.aio()
            except Exception as error:  # the job is over either way; the call ends at its timeout
                LOGGER.warning("Job %s: cancelling chunk %d (%s) failed: %s", self.job_id, chunk, call_id, error)
        self._out.clear()

    async def _collect(self, chunk: int, expected: int) -> bool | None:
        """Spawn the chunks due, then: whether `chunk`'s frames are stashed and visible here; None while its
        call runs or waits, within `wait_s` of its spawn (after waiting up to `POLL_S` for it); False once it
        failed or was taken back (predict its frames here)."""
        await self._spawn_due(expected)
        if chunk in self._stashed:
            return self._stashed[chunk]
        call_id = self._out.get(chunk)
        if call_id is None:  # chunk 0, one not planned from the header's frame count, or not sent out
            return False
        try:
            done = await function_call(call_id).get.aio(timeout=POLL_S)
        except TimeoutError:  # Python's own: the call waits in Modal's queue, or runs
            if time.monotonic() - self._spawned_at[chunk] <= self.wait_s:
                return None
            LOGGER.warning("Job %s: chunk %d (%s) did not finish within %g s of its spawn; taking it back, and "
                           "predicting the rest of the clip here", self.job_id, chunk, call_id, self.wait_s)
            try:
                await function_call(call_id).cancel.aio()
            except Exception as error:  # it ends at its timeout; its stashes go with the job's tidy
                LOGGER.warning("Job %s: cancelling chunk %d failed: %s", self.job_id, chunk, error)
            self._taken_back = True
            done = []
        except Exception as error:
            LOGGER.warning("Job %s: chunk %d failed in its GPU container (%s: %s); predicting it here",
                           self.job_id, chunk, type(error).__name__, error)
            done = []
        del self._out[chunk]
        if done:
            await reload(self.volume)
        self._stashed[chunk] = bool(done)
        return bool(done)

    async def _spawn_due(self, expected: int) -> None:
        last = (expected - 1) // self.chunk_frames
        while len(self._out) < self.parallel and self._next <= last and not self._taken_back:
            chunk, self._next = self._next, self._next + 1
            try:
                self._out[chunk] = await self.spawn_frames(self.job_id, chunk * self.chunk_frames, self.chunk_frames)
                self._spawned_at[chunk] = time.monotonic()
            except Exception as error:
                LOGGER.warning("Job %s: chunk %d could not be spawned (%s: %s); predicting it here",
                               self.job_id, chunk, type(error).__name__, error)
                self._stashed[chunk] = False


def _no_progress(stage: str, fraction: float) -> None:
    """Progress on Modal is coarse (the Volume is committed at queued, running and done only)."""


def _sweep(store: JobStore) -> bool:
    expired, removed = store.sweep(store.load_all(), time.time())
    return bool(expired or removed)

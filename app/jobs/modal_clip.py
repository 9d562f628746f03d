"""Jobs on Modal, a clip job's frames: GPU calls predict and stash them on the jobs Volume, the job's CPU
container (`app.jobs.modal_worker.run_job`) takes them in order.

A clip job:

    job's CPU container: run_job -> run_sequence      clip's GPU call: predict_clip(job, first=0)
      spawn predict_clip; for frame k, in order:        spawn chunks 1..P on SharpFrameWorker ─> predict_frames
        reload until work/<k>.npz is there, take it     predict chunk 0, then the next chunk no one has, ...
        -> align, budget, encode, preview (here)        each frame -> work/<frame>.npz; commit (frame containers
      end: sequence.sogv, manifest, zip (here)            likewise); a collected chunk lets the next one out
                                                        return once every frame is stashed

Chunks are `SHARP_VIDEO_CHUNK_FRAMES` frames long; at most `SHARP_VIDEO_PARALLEL_CHUNKS` are out at once per
job (each a GPU container of `modal_api.SharpFrameWorker`, the model loaded once per container; 0: the clip's
own call predicts every frame). The clip's own call (`SharpJobWorker.predict_clip`, `ClipChunks`) is where a
frame no other container made is predicted: a chunk whose call fails (its container died, timed out, raised,
could not be spawned) is predicted there next, and so is a chunk still unfinished `SHARP_VIDEO_CHUNK_WAIT_S`
after its spawn (waiting in Modal's queue under load, or on a slow container): its call is cancelled and no
more chunks go out. So once the clip's own call runs, it covers at most that wait plus the clip's frames
predicted there, within its timeout. The last chunk runs to the clip's end whatever the header said.

The CPU container takes each frame's stash as soon as it is committed, so its encodes overlap the GPU
containers' predictions, and a GPU container is held for forward passes, postprocesses and stashes only (and,
in the clip's own call, for the wait on its last chunks). A clip call Modal lost (`RemoteError`,
`InternalFailure`) is queued again from the frame the CPU container waits for, `MAX_REQUEUES` times at most
(`StashedFrames`); an error it raised (a clip the GPU side refuses) fails the job with its own code.
Cancelling the job cancels the clip's call, which cancels its chunks. Since every frame's scene is made by
`app.pipeline.run` from the same prediction, in the same order, the files are those of a serial run
(`app.sequence.fanout`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from app.cancel import run_cancellable
from app.errors import SharpError
from app.jobs import runner
from app.jobs.errors import JobNotFoundError
from app.jobs.job import Job, check_job_id
from app.jobs.modal import MAX_REQUEUES, function_call, lost_call_errors, lost_too_often
from app.jobs.modal_volume import POLL_S, VolumeBusyError, commit, reload
from app.jobs.store import JobStore
from app.prediction import ModelInfo, Prediction
from app.sequence.fanout import Timings, load_prediction, predict_chunk, save_prediction
from app.sequence.run import expected_frames
from app.service import InferenceService
from app.settings import Settings
from app.video import VideoLimits, probe_video
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)

SpawnFrames = Callable[[str, int, int], Awaitable[str]]
"""`spawn_frames(job_id, first, count) -> call id`: queue `predict_frames` on the frame class
(`modal_api.spawn_frames`)."""
SpawnClip = Callable[[str, int], Awaitable[str]]
"""`predict_clip(job_id, first) -> call id`: queue `predict_clip` on the GPU class (`modal_api.spawn_clip`)."""



async def predict_frames(service: InferenceService, settings: Settings, store: JobStore, volume: Any,
                         job_id: str, first: int, count: int) -> list[int]:
    """A frame container's part of a clip job (`SharpFrameWorker.predict_frames`): predict its sampled frames
    `first` .. `first + count - 1`, stash each on the Volume and commit it; returns the frames stashed.
    Nothing for a job that is gone or over. Cancelling the call stops it at the network's next block."""
    await reload(volume)
    job = await anyio.to_thread.run_sync(store.load, check_job_id(job_id))
    if job is None or job.final or job.sequence is None:
        return []
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    return await _stash_frames(service, settings, store, volume, job, data, range(first, first + count), [])


async def predict_clip(service: InferenceService, settings: Settings, store: JobStore, volume: Any, job_id: str,
                       first: int = 0, spawn_frames: SpawnFrames | None = None) -> dict[str, Any]:
    """The clip's own GPU call (`SharpJobWorker.predict_clip`): every sampled frame from `first` to the clip's
    end stashed on the Volume (`work/<frame>.npz`, each committed as made), predicted here or in the frame
    containers `spawn_frames` queues (`ClipChunks`; None: all here); nothing is encoded here. Returns once
    every frame is stashed: `stashed` (frames predicted here), `forward_s` (their forward passes) and
    `held_s` (this call's whole time, seconds). Cancelling it cancels the chunks it has out.

    Raises: `VideoError` (the clip is not usable), `JobNotFoundError`."""
    began = time.perf_counter()
    await reload(volume)
    job = await anyio.to_thread.run_sync(store.load, check_job_id(job_id))
    if job is None:
        raise JobNotFoundError(f"No job {job_id!r} on the jobs volume.")
    if job.final or job.sequence is None:  # cancelled meanwhile
        return {}
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    sampling, _ = runner.sequence_options(job)
    limits = VideoLimits.from_settings(settings)
    info = await anyio.to_thread.run_sync(probe_video, data, sampling, limits)
    expected = expected_frames(info.duration_s, info.frame_rate, sampling, limits)
    cap = min(sampling.max_frames or limits.max_frames, limits.max_frames)
    plan = clip_plan(first, expected, cap, settings.video_chunk_frames)
    chunks = ClipChunks(job.id, plan, spawn_frames, parallel=settings.video_parallel_chunks if spawn_frames else 0,
                        wait_s=settings.video_chunk_wait_s)
    forward_ms: list[float] = []
    try:
        while (chunk := await chunks.next_here()) is not None:
            done = await _stash_frames(service, settings, store, volume, job, data, chunk, forward_ms)
            if len(done) < len(chunk):  # the clip ends in this chunk: the chunks after it have no frames
                chunks.clip_ends(chunk.start + len(done))
    finally:
        await chunks.close()
    return {"stashed": len(forward_ms), "forward_s": sum(forward_ms) / 1000, "held_s": time.perf_counter() - began}


def clip_plan(first: int, expected: int, cap: int, chunk_frames: int) -> list[range]:
    """The chunks of frames `first` .. of a clip whose header promises `expected` frames (at most `cap`): runs
    of `chunk_frames`, the last running to `cap` (a header that undercounts loses no frame)."""
    starts = range(first, max(expected, first + 1), chunk_frames)
    plan = [range(start, start + chunk_frames) for start in starts]
    plan[-1] = range(plan[-1].start, max(cap, plan[-1].stop))
    return plan


async def _stash_frames(service: InferenceService, settings: Settings, store: JobStore, volume: Any, job: Job,
                        data: bytes, frames: range, forward_ms: list[float]) -> list[int]:
    """Predict the clip job's sampled `frames` with `service`'s model, each stashed and committed as it is made
    (so the job's CPU container can encode it while the next is predicted); the forward passes' times are
    appended to `forward_ms`. Returns the frames stashed."""
    sampling, _ = runner.sequence_options(job)
    predictor = service.require_predictor()

    def stash(index: int, prediction: Prediction, timings: Timings) -> None:  # on the chunk's thread
        store.write_stash(job.id, index, save_prediction(prediction, timings))
        forward_ms.append(timings.get("forward", 0.0))
        anyio.from_thread.run(commit, volume)

    def work(check: ProgressCallback) -> list[int]:
        return predict_chunk(predictor, data, frames, sampling=sampling, limits=VideoLimits.from_settings(settings),
                             f_px=job.f_px, stash=stash, progress=check)

    return await run_cancellable(work, limiter=anyio.CapacityLimiter(1))


class ClipChunks:
    """Which chunks of a clip the clip's own GPU call predicts, and which it sends to frame containers
    (module docstring); used on that call's event loop.

    Args:
        job_id: the job.
        plan: the chunks, in order (`clip_plan`); the first is predicted here.
        spawn_frames: queues a chunk on the frame class (None: every chunk is predicted here).
        parallel: the most chunks out at once.
        wait_s: the longest a chunk may take from its spawn (Modal's queue included): past it, it is taken
            back (its call cancelled, its frames predicted here) and no more chunks are sent out (Modal's
            queue is full).
    """

    def __init__(self, job_id: str, plan: list[range], spawn_frames: SpawnFrames | None, *, parallel: int,
                 wait_s: float) -> None:
        self.job_id, self.spawn_frames, self.parallel, self.wait_s = job_id, spawn_frames, parallel, wait_s
        self._todo = list(plan)
        """Chunks no container has yet, in order."""
        self._mine: list[range] = []
        """Chunks whose call failed or was taken back: predicted here next, in order."""
        self._out: dict[range, tuple[str, float]] = {}
        """Chunk -> its call's id and its spawn's time (`time.monotonic()`), until collected."""
        self._taken_back = False

    async def next_here(self) -> range | None:
        """The next chunk to predict here, once the chunks due are out; None once every chunk is stashed
        (waiting here, up to `wait_s` past a spawn, for the last ones out)."""
        while True:
            await self._collect(wait=False)
            if self._mine:
                return self._mine.pop(0)
            here = self._todo.pop(0) if self._todo else None
            await self._spawn_due()
            if here is not None:
                return here
            if not self._out:
                return None
            await self._collect(wait=True)

    def clip_ends(self, at: int) -> None:
        """The clip has no frame `at`: the chunks not out yet from there on are dropped."""
        self._todo = [chunk for chunk in self._todo if chunk.start < at]

    async def close(self) -> None:
        """Cancel the chunks still out (this call ended, failed or was cancelled before they were done)."""
        for chunk, (call_id, _) in list(self._out.items()):
            try:
                await function_call(call_id).cancel.aio()
            except Exception as error:  # the call ends at its timeout; its stashes go with the job's tidy
                LOGGER.warning("Job %s: cancelling chunk %d (%s) failed: %s", self.job_id, chunk.start, call_id, error)
        self._out.clear()

    async def _spawn_due(self) -> None:
        while self._todo and len(self._out) < self.parallel and not self._taken_back:
            chunk = self._todo.pop(0)
            try:
                assert self.spawn_frames is not None  # parallel is 0 without it
                call_id = await self.spawn_frames(self.job_id, chunk.start, len(chunk))
            except Exception as error:
                LOGGER.warning("Job %s: the chunk from frame %d could not be spawned (%s: %s); predicting it here",
                               self.job_id, chunk.start, type(error).__name__, error)
                self._redo(chunk)
            else:
                self._out[chunk] = (call_id, time.monotonic())

    async def _collect(self, *, wait: bool) -> None:
        """Forget the chunks whose call has finished with their frames stashed; take over those that failed or
        waited past `wait_s`. `wait`: wait up to `POLL_S` for the oldest one out."""
        for chunk, (call_id, spawned_at) in list(self._out.items()):
            try:
                await function_call(call_id).get.aio(timeout=POLL_S if wait else 0)
            except TimeoutError:  # Python's own: the call waits in Modal's queue, or runs
                wait = False
                if time.monotonic() - spawned_at <= self.wait_s:
                    continue
                LOGGER.warning("Job %s: the chunk from frame %d (%s) did not finish within %g s of its spawn; "
                               "taking it back, and predicting the rest of the clip here", self.job_id, chunk.start,
                               call_id, self.wait_s)
                try:
                    await function_call(call_id).cancel.aio()
                except Exception as error:  # it ends at its timeout; its stashes go with the job's tidy
                    LOGGER.warning("Job %s: cancelling chunk %d failed: %s", self.job_id, chunk.start, error)
                self._taken_back = True
                self._redo(chunk)
            except Exception as error:  # its container died, timed out, was lost, or the chunk raised
                LOGGER.warning("Job %s: the chunk from frame %d failed in its GPU container (%s: %s); predicting "
                               "it here", self.job_id, chunk.start, type(error).__name__, error)
                self._redo(chunk)
            del self._out[chunk]
            wait = False

    def _redo(self, chunk: range) -> None:
        self._mine.append(chunk)
        self._mine.sort(key=lambda run: run.start)


class StashedFrames:
    """The `FramePredictions` of a clip job's CPU container (module docstring): frame k is the stash
    `work/<k>.npz` the clip's GPU call (or a frame container) committed, taken as soon as this container
    sees it; called on the run's thread.

    Args:
        job_id, store, volume: the job and the jobs Volume as this container sees it.
        predict_clip: queues the clip's GPU call (`predict_clip(job_id, first)`).
    """

    def __init__(self, job_id: str, store: JobStore, volume: Any, predict_clip: SpawnClip) -> None:
        self.job_id, self.store, self.volume, self.predict_clip = job_id, store, volume, predict_clip
        self._call: str | None = None
        self._ended = False
        """Whether the clip's GPU call has returned (every frame it will stash is committed)."""
        self._lost = 0
        self._first: tuple[Prediction, Timings] | None = None

    async def start(self) -> ModelInfo:
        """Queue the clip's GPU call and wait for frame 0; the model that predicted it (for the budget's check
        and the manifest, before any frame is encoded here)."""
        self._call = await self.predict_clip(self.job_id, 0)
        while (made := await self._take(0)) is None:
            pass
        self._first = made
        return made[0].model

    def __call__(self, index: int, expected: int, waiting: Callable[[], None]) -> tuple[Prediction, Timings]:
        if index == 0 and self._first is not None:
            made, self._first = self._first, None
            return made
        while (made := anyio.from_thread.run(self._take, index)) is None:
            waiting()
        return made

    async def close(self) -> None:
        """Cancel the clip's GPU call unless it has returned (the job ended, failed or was cancelled first)."""
        if self._call is not None and not self._ended:
            try:
                await function_call(self._call).cancel.aio()
            except Exception as error:  # the job is over either way; the call ends at its timeout
                LOGGER.warning("Job %s: cancelling its clip call %s failed: %s", self.job_id, self._call, error)

    async def _take(self, index: int) -> tuple[Prediction, Timings] | None:
        """Frame `index`'s prediction, once stashed and committed; None after waiting up to `POLL_S` for it.
        A clip call Modal lost is queued again from frame `index` (`MAX_REQUEUES` times at most, then
        `worker_failed`); its own error is raised."""
        made = await anyio.to_thread.run_sync(self._load, index)
        if made is not None:
            return made
        if not self._ended:
            assert self._call is not None
            try:
                await function_call(self._call).get.aio(timeout=POLL_S)
                self._ended = True
            except TimeoutError:  # Python's own: it runs, or waits in Modal's queue
                pass
            except lost_call_errors() as error:
                self._lost += 1
                if self._lost > MAX_REQUEUES:
                    last = f"{type(error).__name__}: {error}"
                    raise SharpError(lost_too_often("The clip's GPU call", self._lost, last), code="worker_failed",
                                     status=503) from error
                LOGGER.warning("Job %s: its clip call %s was lost (%s: %s); queueing it again from frame %d",
                               self.job_id, self._call, type(error).__name__, error, index)
                self._call = await self.predict_clip(self.job_id, index)
                return None
        try:
            await reload(self.volume)
        except VolumeBusyError:
            return None
        made = await anyio.to_thread.run_sync(self._load, index)
        if made is None and self._ended:
            raise RuntimeError(f"the clip's GPU call ended without stashing frame {index} of job {self.job_id}")
        return made

    def _load(self, index: int) -> tuple[Prediction, Timings] | None:
        body = self.store.take_stash(self.job_id, index)
        return None if body is None else load_prediction(body)


class StashedModel:
    """The model of a clip job's CPU container (`run_job` with `predict_clip`): it describes the model of the
    GPU call that predicted the frames (`info`: the budget's check, the manifest) and renders previews on
    this container's CPU (`device`); it predicts nothing (every frame is a stash, `StashedFrames`)."""

    device = "cpu"

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def predict(self, *args: Any, **kwargs: Any) -> Prediction:
        raise RuntimeError("a clip job's CPU container predicts no frame: each is stashed by the GPU class")

"""Jobs on Modal, the containers' side: every job runs in a CPU container (`run_job`, `SharpJobRunner`), whose
predictions GPU containers make and stash on the jobs Volume: a photo's in one call (`predict_job`), a clip's
in the clip's own GPU call (`app.jobs.modal_clip.predict_clip`) and the frame containers it spreads chunks over
(`predict_frames`). A GPU container predicts (decode, forward, postprocess) and stashes; the alignment, the
budget, every encode, the previews and a clip's sequence and zip are made in the job's CPU container. A photo
job:

    job's CPU container (SharpJobRunner)             GPU container (SharpJobWorker.predict_job)
      run_job: `running`; spawn predict_job, wait ─>   reload; decode, forward, postprocess;
                                                       the prediction -> work/000000.npz (lossless); commit
      reload; load the stash <──────────────────────   return (a few numbers, no scene)
      budget, every encode and preview, here; results, `succeeded`, commit

So a GPU container is held for a photo's forward pass and the stash's write and commit, not for its encodes
and previews (`bench/gpu_hold.py`). Cancelling the job's call cancels the GPU call it waits for.

A clip job's GPU side, and the frames its CPU container takes from the Volume, are in `app.jobs.modal_clip`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread

from app.errors import SharpError
from app.imaging import LoadedImage
from app.jobs import lifecycle, runner
from app.jobs.errors import JobCancelledError, JobNotFoundError
from app.jobs.job import Job, check_job_id
from app.jobs.modal import MAX_REQUEUES, Spawn, function_call, lost_call_errors, lost_too_often
from app.jobs.modal_clip import SpawnClip, StashedFrames, StashedModel
from app.jobs.modal_volume import VolumeBusyError, commit, reload
from app.jobs.store import JobStore
from app.prediction import Prediction
from app.sequence.fanout import Timings, load_prediction, save_prediction
from app.service import InferenceService
from app.settings import Settings
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)

CANCELLED_BY_USER = "Input was cancelled by user"
"""What Modal's container passes to `Task.cancel` when the input's `FunctionCall` is cancelled."""

PHOTO_STASH = 0
"""A photo job's prediction is its stash 0 (`JobStore.stash_path`), as a clip's frame 0 would be."""

async def run_job(service: InferenceService, settings: Settings, store: JobStore, volume: Any, job_id: str, *,
                  predict: Spawn | None = None, predict_clip: SpawnClip | None = None) -> dict[str, Any]:
    """A job's run (`SharpJobRunner.run_job`): through `app.jobs.lifecycle`, commit its results and state, and
    return that state (the web container uses it if its view of the Volume lags). An interruption is
    re-raised once the job is back in the queue (Modal then runs the input again). `predict`: queues
    `predict_job` on the GPU class (a photo job's prediction is made there, the rest here; `service` then
    holds no model); `predict_clip`: queues `predict_clip` there (a clip's frames, `StashedFrames`); None:
    `service`'s model predicts (the whole job in this container)."""
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
    if job.sequence is not None and predict_clip is not None:
        frames = StashedFrames(job.id, store, volume, predict_clip)
    work = lifecycle.Runner(store=store, ttl_s=settings.job_ttl_s, record=record, cancelled=cancelled,
                            rerun_interrupted=True)

    async def execute() -> None:
        if frames is not None:  # a clip: every frame predicted on the GPU class, the rest here
            model = await frames.start()
            here = InferenceService(settings, StashedModel(model))  # type: ignore[arg-type]
            await runner.execute(here, store, job, _no_progress, elsewhere=frames)
            return
        if predict is None or job.sequence is not None:
            await runner.execute(service, store, job, _no_progress)
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
    for attempt in range(1, MAX_REQUEUES + 2):
        call_id = await predict(job_id)
        try:
            stashed = await function_call(call_id).get.aio()
            break
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # it stops at its timeout otherwise
                await function_call(call_id).cancel.aio()
            raise
        except lost_call_errors() as error:
            if attempt > MAX_REQUEUES:
                raise SharpError(lost_too_often("The GPU call", attempt, f"{type(error).__name__}: {error}"),
                                 code="worker_failed", status=503) from error
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


def _no_progress(stage: str, fraction: float) -> None:
    """Progress on Modal is coarse (the Volume is committed at queued, running and done only)."""


def _sweep(store: JobStore) -> bool:
    expired, removed = store.sweep(store.load_all(), time.time())
    return bool(expired or removed)

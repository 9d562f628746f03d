"""A photo's job with several outputs: its prediction is kept once, and each output made from it when needed.

    queued -> running: decode -> predict -> keep the prediction -> encode the first output -> succeeded
    succeeded, `pending` outputs: each encoded from the kept prediction, one at a time (`Encoder`), in order;
                                  an output a download asks for goes first; the kept prediction is deleted
                                  once the last is made

The first output is the one the client needs first (`Job.first`: the `first` form field, else the first output
listed), so it is downloadable as soon as the prediction is made and that one file is encoded, whatever else
the job asks for. The prediction is kept losslessly on disk (`app.sequence.fanout.save_prediction`: the
scene's float32 arrays after the budget, the focal length's source, the model, the timings) before the job
succeeds, so that outputs whose encodes a restart cut short are made from it after the restart. A download of
an output still pending waits for it (`Encoder.wait`, at most `SHARP_JOB_FILE_WAIT_S`); an encode that fails
records its error for that output alone (`Job.file_errors`: the download answers 409 `result_failed`).

Every encode goes through `InferenceService.run` with the kept prediction as its source (`app.pipeline.run`
then only encodes it), so a lazily made file has the bytes an eager run gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import anyio.to_thread
import orjson

from app.errors import SharpError
from app.jobs.errors import ResultNotReadyError
from app.jobs.job import SEQUENCE_ZIP, Job
from app.jobs.options import json_options_of
from app.jobs.runner import record_prediction
from app.jobs.store import JobStore
from app.pipeline import EncodedOutput
from app.prediction import Prediction
from app.sequence.fanout import load_prediction, save_prediction
from app.sequence.run import MANIFEST_FILE, PREVIEW_FILE, preview_source
from app.service import InferenceService, ModelFailedError, ModelLoadingError
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)

PREDICTIONS_IN_MEMORY = 2
"""Kept predictions held in memory at once (a full-size one is 66 MB); older ones are read back from disk."""
PREDICTION_STAGES = ("decode", "preprocess", "forward", "postprocess", "budget")
"""The timings of making the prediction (kept with it: the JSON output records them), not of its encodes."""


async def predict_and_keep(service: InferenceService, store: JobStore, job: Job,
                           progress: ProgressCallback) -> Prediction:
    """Run `job` up to its first output: decode -> predict (the budget applied) -> keep the prediction in
    `store` while `job.first` is encoded (on two threads). Fills in the job's fields, `pending` (its other
    outputs, in order) and `kept_bytes`; returns the prediction, for the encodes that follow. Raises what
    `InferenceService.run` and `progress` raise (a cancel)."""
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    result = await service.run(data, filename=job.filename, f_px=job.f_px, outputs={},
                               max_gaussians=job.options.get("max_gaussians"), progress=progress, admit=False)
    prediction = result.prediction
    record_prediction(job, prediction)
    job.timings_ms = {stage: ms for stage, ms in result.timings_ms.items() if stage in PREDICTION_STAGES}
    first = job.first or job.outputs[0]
    job.pending = [name for name in job.outputs if name != first]
    stages = dict(job.timings_ms)

    def keep() -> int:  # on a worker thread, beside the first output's encode (0.25 s at full size)
        return store.write_prediction(job.id, save_prediction(prediction, stages))

    keeping = asyncio.ensure_future(anyio.to_thread.run_sync(keep))
    job.encoding = first
    try:
        await encode_output(service, store, job, first, prediction, progress)
    finally:
        job.encoding = None
        await asyncio.wait([keeping])  # kept before the job succeeds; never left writing after it failed
        failed = keeping.exception()  # read here: an error of the encode is the one raised
    if failed is not None:
        raise failed
    job.kept_bytes = keeping.result()
    return prediction


async def encode_output(service: InferenceService, store: JobStore, job: Job, name: str, prediction: Prediction,
                        progress: ProgressCallback | None = None) -> None:
    """Output `name` of `job` encoded from its kept `prediction` and written atomically into `store`;
    `job.results[name]` and the `encode` timing (all its encodes so far, ms) are updated."""
    written: dict[str, int] = {}

    def write(output: EncodedOutput) -> None:  # on the run's worker thread
        written[output.format] = store.write_result(job.id, output.format, output.body)

    options = json_options_of(job.options) if name == "json" else {}
    stages = {stage: ms for stage, ms in job.timings_ms.items() if stage in PREDICTION_STAGES}
    result = await service.run(prediction, filename=None, f_px=None, outputs={name: options}, progress=progress,
                               admit=False, sink=write, timings_ms=stages)
    job.results[name] = written[name]
    job.timings_ms["encode"] = job.timings_ms.get("encode", 0.0) + result.timings_ms["encode"]


async def make_preview(service: InferenceService, store: JobStore, job: Job) -> int:
    """A clip job's `preview.mp4`, made after it succeeded (`app.sequence.preview.render_preview`: its upload
    decoded again, beside each frame's scene read back from its `preview_source` file) and written atomically
    into `store`; its size. Raises `SharpError` (`preview_failed`) naming what is missing or unreadable."""
    clip = store.input_path(job.id)
    manifest_body = await anyio.to_thread.run_sync(store.read_file, job.id, MANIFEST_FILE)
    source = preview_source(job.outputs)
    if not clip.is_file() or manifest_body is None or source is None:
        missing = "its upload" if not clip.is_file() else "its manifest" if manifest_body is None else "a scene file"
        raise SharpError(f"{missing} is gone from the job store", code="preview_failed", status=500)
    try:
        manifest = orjson.loads(manifest_body)
        if not all(key in manifest for key in ("frames", "sampling", "source", "image_width", "image_height")):
            raise KeyError("a field is missing")
    except (orjson.JSONDecodeError, KeyError, TypeError) as damaged:
        raise SharpError(f"its manifest is damaged ({damaged})", code="preview_failed", status=500) from None
    body = await service.render_preview(clip, manifest, lambda path: store.read_file(job.id, path), source=source)
    return await anyio.to_thread.run_sync(store.write_file, job.id, PREVIEW_FILE, body)


class Encoder:
    """The pending outputs of this server's succeeded jobs, encoded one at a time on a task of the event loop
    (and a clip job's `preview.mp4` and `sequence.zip`, made from its files once it has succeeded: the
    preview from the frames' scene files and the kept upload, `make_preview`; the zip after the preview).

    Order: an output a download waits for first (`wait`), in the order asked; then, when `ahead`
    (`SHARP_JOBS_ENCODE_AHEAD`), every job's pending outputs, oldest job first, each in its `pending` order.
    After each encode the job is recorded (`record`: saved and published), so its watchers see the file ready.
    """

    def __init__(self, service: InferenceService, store: JobStore, *, ahead: bool,
                 record: Callable[[Job], Awaitable[None]]) -> None:
        self.service = service
        self.store = store
        self.ahead = ahead
        self._record = record
        self._jobs: dict[str, Job] = {}
        self._predictions: dict[str, Prediction] = {}
        self._wanted: list[tuple[str, str]] = []
        self._made: dict[tuple[str, str], asyncio.Event] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="sharp-jobs-encoder")

    async def close(self) -> None:
        """Stop; an encode under way is abandoned (its output stays pending in the job's state, and is made
        after the next start from the kept prediction)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def add(self, job: Job, prediction: Prediction | None = None) -> None:
        """Take `job`'s pending outputs (a job just succeeded, with its `prediction` in memory; or one loaded
        at start-up, whose prediction is read back from the store)."""
        if not job.pending:
            return
        self._jobs[job.id] = job
        if prediction is not None:
            self._remember(job.id, prediction)
        self._wakeup.set()

    def forget(self, job_id: str) -> None:
        """A job deleted: nothing more of it is encoded, and downloads waiting for it wake (and find it gone)."""
        self._jobs.pop(job_id, None)
        self._predictions.pop(job_id, None)
        self._wanted = [want for want in self._wanted if want[0] != job_id]
        for key in [key for key in self._made if key[0] == job_id]:
            self._made.pop(key).set()

    async def wait(self, job: Job, name: str, timeout_s: float) -> None:
        """Until `job`'s output `name` is made or has failed (then `job.results` or `job.file_errors` says
        which), encoding it next if it waits its turn.

        Raises:
            ResultNotReadyError: still being made after `timeout_s` (503, retryable: the encode goes on).
        """
        if name not in job.pending:
            return
        # A client may see the job succeed (and ask for this output) before its run hands it over (`add`).
        self._jobs.setdefault(job.id, job)
        key = (job.id, name)
        made = self._made.setdefault(key, asyncio.Event())
        if key not in self._wanted:
            self._wanted.append(key)
            self._wakeup.set()
        try:
            await asyncio.wait_for(made.wait(), timeout_s)
        except TimeoutError:
            raise ResultNotReadyError(f"Job {job.id}'s {name} is still being made (after {timeout_s:g} s, "
                                      "SHARP_JOB_FILE_WAIT_S); retry shortly.", retry_after_s=2) from None

    # ------------------------------------------------------------------------------------------ worker

    def _next(self) -> tuple[Job, str] | None:
        while self._wanted:
            job_id, name = self._wanted[0]
            job = self._jobs.get(job_id)
            if job is not None and name in job.pending:
                return (job, PREVIEW_FILE) if name == SEQUENCE_ZIP and PREVIEW_FILE in job.pending else (job, name)
            self._wanted.pop(0)
        job = next(iter(self._jobs.values()), None) if self.ahead else None
        return None if job is None else (job, job.pending[0])

    async def _work(self) -> None:
        while True:
            step = self._next()
            if step is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job, name = step
            try:
                await self._encode(job, name)
            except asyncio.CancelledError:
                raise
            except Exception:  # the encoder must survive anything one output does (its state could not be saved)
                LOGGER.exception("Encoding %s of job %s crashed the encoder step; its outputs still pending are "
                                 "left to the next start", name, job.id)
                self.forget(job.id)  # not tried again at once, in a loop

    async def _encode(self, job: Job, name: str) -> None:
        job.encoding = name
        await self._record(job)
        error: SharpError | None = None
        try:
            if job.sequence is not None and name == PREVIEW_FILE:
                await self._model_ready()
                job.results[name] = await make_preview(self.service, self.store, job)
            elif job.sequence is not None:  # a clip's zip, of the files on disk
                paths = [path for path in job.results if path != SEQUENCE_ZIP]
                job.results[name] = await anyio.to_thread.run_sync(self.store.zip_files, job.id, paths)
            else:
                prediction = await self._prediction(job)
                await self._model_ready()
                await encode_output(self.service, self.store, job, name, prediction)
        except asyncio.CancelledError:
            job.encoding = None
            raise
        except SharpError as failure:
            error = failure
        except Exception as failure:
            LOGGER.exception("Encoding %s of job %s failed", name, job.id)
            error = SharpError(f"Internal error ({type(failure).__name__}); see the server log.",
                               code="internal_error", status=500)
        job.encoding = None
        if self._jobs.get(job.id) is not job:  # deleted meanwhile
            return
        if error is not None:
            job.file_errors[name] = {"code": error.code, "message": error.message}
        job.pending.remove(name)
        if name == PREVIEW_FILE:  # made or failed for good: the upload kept for it goes
            await anyio.to_thread.run_sync(self.store.drop_input, job)
        if not job.pending:
            self._jobs.pop(job.id, None)
            self._predictions.pop(job.id, None)
            await anyio.to_thread.run_sync(self.store.drop_prediction, job)
        await self._record(job)
        made = self._made.pop((job.id, name), None)
        if made is not None:
            made.set()

    async def _prediction(self, job: Job) -> Prediction:
        """The job's prediction: in memory since it ran, else read back from the store (after a restart)."""
        prediction = self._predictions.get(job.id)
        if prediction is not None:
            return prediction
        body = await anyio.to_thread.run_sync(self.store.read_prediction, job.id)
        if body is None:
            raise SharpError("its kept prediction is gone from the job store", code="prediction_missing",
                             status=500)
        try:
            prediction, _ = await anyio.to_thread.run_sync(load_prediction, body)
        except (ValueError, KeyError, OSError, TypeError) as damaged:
            raise SharpError(f"its kept prediction is damaged ({type(damaged).__name__}: {str(damaged)[:200]})",
                             code="prediction_damaged", status=500) from None
        self._remember(job.id, prediction)
        return prediction

    def _remember(self, job_id: str, prediction: Prediction) -> None:
        """Keep `prediction` in memory for the next encodes, and at most `PREDICTIONS_IN_MEMORY` of them (the
        others are read back from the store when their turn comes)."""
        self._predictions[job_id] = prediction
        while len(self._predictions) > PREDICTIONS_IN_MEMORY:
            self._predictions.pop(next(iter(self._predictions)))

    async def _model_ready(self) -> None:
        """Wait while the model loads (an encode runs in the service's slots); its failure for good raises."""
        while True:
            try:
                self.service.require_predictor()
                return
            except ModelLoadingError:
                await asyncio.sleep(0.1)
            except ModelFailedError as error:
                if error.retry_after_s is None:
                    raise
                await asyncio.sleep(0.5)

"""One job's work, wherever it runs (this process's worker, a Modal GPU container): read the stored
upload, run it once through `InferenceService.run` (decode -> predict -> encode every output), and
write each file atomically into the `JobStore` as soon as it is encoded (one output's bytes in memory at a
time). The job's fields (name, model, metadata, timings,
results) are filled in; its status is the caller's business."""

from __future__ import annotations

import time

import anyio.to_thread

from app.errors import SharpError
from app.jobs.job import SEQUENCE_ZIP, Job
from app.jobs.options import json_options_of
from app.jobs.store import JobStore
from app.pipeline import EncodedOutput
from app.prediction import Prediction
from app.sequence.fanout import FramePredictions
from app.sequence.run import PREVIEW_FILE, preview_source
from app.service import InferenceService
from app.video import Sampling
from app.vocabulary import AlignMode, ProgressCallback


async def execute(service: InferenceService, store: JobStore, job: Job, progress: ProgressCallback, *,
                  elsewhere: FramePredictions | None = None, later: bool = False) -> None:
    """Make every output of `job`. `progress(stage, fraction)` is called on the run's worker thread; an
    exception it raises (a cancellation) stops the job there. `elsewhere`: a clip's frames predicted in
    other containers (`app.sequence.fanout`). Errors: `ImageError`, `SharpError`, whatever `progress` raises;
    `JobTooLongError` at the first step past `SHARP_JOB_MAX_RUN_S`. `later`: see `execute_sequence`."""
    progress = _bounded(progress, job, service.settings.job_max_run_s)
    if job.sequence is not None:
        await execute_sequence(service, store, job, progress, elsewhere=elsewhere, later=later)
        return
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    outputs = {name: json_options_of(job.options) if name == "json" else {} for name in job.outputs}
    written: dict[str, int] = {}  # name -> bytes written

    def write(output: EncodedOutput) -> None:  # on the run's worker thread
        written[output.format] = store.write_result(job.id, output.format, output.body)

    result = await service.run(data, filename=job.filename, f_px=job.f_px, outputs=outputs,
                               max_gaussians=job.options.get("max_gaussians"), progress=progress, admit=False,
                               sink=write)
    record_prediction(job, result.prediction)
    job.results.update(written)
    job.timings_ms = result.timings_ms


def record_prediction(job: Job, prediction: Prediction) -> None:
    """What the job's record says of its prediction: the name, the model, the image and the Gaussians."""
    scene = prediction.scene
    job.name = prediction.name
    job.model = prediction.model.summary()
    job.metadata = {"image_width": scene.image_width, "image_height": scene.image_height, "f_px": scene.f_px,
                    "f_px_source": prediction.f_px_source, "num_gaussians": scene.num_gaussians,
                    "total_gaussians": prediction.num_predicted}


async def execute_sequence(service: InferenceService, store: JobStore, job: Job, progress: ProgressCallback, *,
                           elsewhere: FramePredictions | None = None, later: bool = False) -> None:
    """A clip's job (`job.sequence`): every sampled frame through `InferenceService.run_sequence`, each file
    written into the store as it is made, the preview as the frames go, then the zip of them all (`later`:
    the preview and the zip are left `pending`, for the local queue's `app.jobs.lazy.Encoder` to make after
    the job succeeds, or when first downloaded: the preview from the frames' files and the kept upload, when
    the frames have a file it reads back, `preview_source`; else it is rendered here as the frames go).
    `job.frame` and `job.frames` are set before each `progress` call (frame k of n); a cancel stops it at the
    next step, and the lifecycle's tidy then deletes every file it wrote."""
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    sampling, align = sequence_options(job)
    outputs = {name: json_options_of(job.options) if name == "json" else {} for name in job.outputs}
    written: dict[str, int] = {}  # path -> bytes written

    def write(path: str, body: bytes) -> None:  # on the run's worker thread
        written[path] = store.write_file(job.id, path, body)

    def frame_progress(frame: int, frames: int, stage: str, fraction: float) -> None:
        job.frame, job.frames = frame + 1, frames
        progress(stage, fraction)

    preview_later = later and preview_source(job.outputs) is not None
    manifest = await service.run_sequence(data, f_px=job.f_px, outputs=outputs, sampling=sampling, align=align,
                                          max_gaussians=job.options.get("max_gaussians"), sink=write,
                                          progress=frame_progress, elsewhere=elsewhere, preview_later=preview_later)
    progress("encode", 1.0)  # a cancel that came during the last frame stops the job before the zip
    if later:  # the preview first: the zip holds it
        job.pending = [PREVIEW_FILE, SEQUENCE_ZIP] if preview_later else [SEQUENCE_ZIP]
    else:
        written[SEQUENCE_ZIP] = await anyio.to_thread.run_sync(store.zip_files, job.id, list(written))
    first = manifest["frames"][0]
    job.name = _stem(job.filename)
    job.frame = job.frames = manifest["num_frames"]
    job.model = manifest["model"]
    job.metadata = {"image_width": manifest["image_width"], "image_height": manifest["image_height"],
                    "f_px": manifest["f_px"], "f_px_source": manifest["f_px_source"],
                    "num_gaussians": first["num_gaussians"], "total_gaussians": first["num_predicted"]}
    job.results.update(written)
    job.timings_ms = {stage: sum(frame["timings_ms"].get(stage, 0.0) for frame in manifest["frames"])
                      for stage in first["timings_ms"]}


class JobTooLongError(SharpError):
    """A job ran longer than `SHARP_JOB_MAX_RUN_S` allows."""

    code = "job_too_long"
    status = 413


def _bounded(progress: ProgressCallback, job: Job, limit_s: float) -> ProgressCallback:
    """`progress`, then `JobTooLongError` once `job` has run (since `job.started_at`) more than `limit_s`."""
    started = job.started_at if job.started_at is not None else time.time()

    def check(stage: str, fraction: float) -> None:
        progress(stage, fraction)
        if time.time() - started > limit_s:
            raise JobTooLongError(f"The job ran longer than {limit_s:g} s (SHARP_JOB_MAX_RUN_S) and was stopped "
                                  f"during {stage}; ask for fewer frames or outputs, or a smaller clip.")

    return check


def sequence_options(job: Job) -> tuple[Sampling, AlignMode]:
    """A clip job's sampling and alignment, as submitted."""
    options = dict(job.sequence or {})
    align = options.pop("align", "none")
    return Sampling(**options), align


def _stem(filename: str | None) -> str:
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    return base.rpartition(".")[0] or base or "clip"

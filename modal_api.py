"""SHARP as an HTTP API on Modal: the local server's FastAPI app, predictions on a GPU, scaled to zero.

    make web && modal deploy modal_api.py           # https://<workspace>--sharp-api-fastapi-app.modal.run
    SHARP_GPU=H100 modal deploy modal_api.py        # another GPU type (switches: `deploy/config.py`)
    modal serve modal_api.py                        # a temporary dev URL that live-reloads on edits

The URL is served by a CPU container (`fastapi_app`, `deploy/front.py`): the page, `/health`, `/`, and the
jobs with their polls and event streams. `/predict*` and `/render` are checked there (key, size, form) and
forwarded, one Modal call each, to the GPU class `SharpAPI`, which answers them with the same FastAPI app
in-process: watching jobs never holds a GPU, and nothing starts one but a prediction or a job. Requests
longer than 150 s get Modal's 303 redirect: use `/jobs` for long work (docs/modal.md).

Jobs (`POST /jobs`, `app.jobs.modal`): the CPU container stores the upload on the Volume `sharp-jobs` and
`.spawn()`s the job, which runs on a CPU container (`SharpJobRunner`). Its predictions are GPU calls that
stash them on the Volume: a photo's `SharpJobWorker.predict_job`, a clip's `SharpJobWorker.predict_clip`, which
spreads chunks of frames over `SharpFrameWorker` containers too (`app.jobs.modal_clip`); the CPU container
makes every output, preview and zip: a GPU is held for forward passes, not encodes. Results go to the
Volume, from which the front serves them. Up to `SHARP_MAX_CONTAINERS` containers per class. Every GPU class
shares one lifecycle (`deploy.container.ModelContainer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import modal

from deploy import config
from deploy.container import ModelContainer, container_settings, gpu_cls_options, job_store, secrets
from deploy.images import gpu_image, jobs_volume, light_image

if TYPE_CHECKING:
    from fastapi import FastAPI

    from deploy.front import ForwardedRequest, ForwardedResponse

if modal.is_local():
    config.require_vendor_files()

APP_NAME = "sharp-api"
WEB_LABEL = f"{APP_NAME}-fastapi-app"
"""The URL label: https://<workspace>--sharp-api-fastapi-app.modal.run."""
FRONT_MAX_INPUTS = 100
"""Requests one CPU container takes at once (polls and event streams mostly wait)."""
RUNNER_CPU = 2.0
"""Cores of a photo job's CPU container (`SharpJobRunner`): the encoders and the renderer use them."""
RUNNER_MEMORY_MB = (4096, 16384)
"""Request, limit: a full-size prediction (66 MB as arrays), its outputs one at a time, a preview's render."""
FRONT_MEMORY_MB = (2048, 8192)
"""Request, limit: forwarded uploads (<= SHARP_MAX_UPLOAD_MB) pass through memory; results stream through in
pieces of 1 MiB (`deploy.front.FORWARD_CHUNK_BYTES`; `bench/front_memory.py`)."""

app = modal.App(APP_NAME)


@app.cls(**gpu_cls_options())
@modal.concurrent(max_inputs=config.MAX_CONCURRENT_INPUTS)
class SharpAPI(ModelContainer):
    """A GPU container: one model answering the requests the CPU container forwards, up to 10 at once."""

    @modal.method()
    async def respond(self, request: ForwardedRequest) -> AsyncIterator[ForwardedResponse | bytes]:
        """Answer one forwarded `/predict*` or `/render` request with the local server's app: a generator of
        its head, then its body in pieces (`deploy.front.answer`), so no result is pickled whole."""
        from app.http import create_app
        from deploy.front import answer

        if not hasattr(self, "web_app"):  # no lifespan: the service runs already, and no signal handler
            self.web_app = create_app(self.settings, service=self.service)
        async for piece in answer(self.web_app, request):
            yield piece


@app.cls(**gpu_cls_options(jobs=True), max_containers=config.max_containers())
class SharpJobWorker(ModelContainer):
    """A GPU container predicting for jobs, one call at a time (no `@modal.concurrent`): a photo job's
    prediction, or a clip job's frames; N queued calls start up to `SHARP_MAX_CONTAINERS` containers, the rest
    wait in Modal's queue. The jobs themselves run on `SharpJobRunner`."""

    @modal.method()
    async def predict_clip(self, job_id: str, first: int) -> dict[str, Any]:
        """Stash every frame of the clip job `job_id` from `first` on on the jobs Volume for its CPU container,
        predicted here or by `SharpFrameWorker` containers (`app.jobs.modal_clip.predict_clip`); returns a
        few numbers, never a scene."""
        from app.jobs.modal_clip import predict_clip

        return await predict_clip(self.service, self.settings, job_store(self.settings), jobs_volume, job_id, first,
                                  spawn_frames)

    @modal.method()
    async def predict_job(self, job_id: str) -> dict[str, Any]:
        """Predict the stored photo job `job_id` and stash its prediction on the jobs Volume for its CPU
        container (`app.jobs.modal_worker.predict_job`); returns a few numbers, never the scene."""
        from app.jobs.modal_worker import predict_job

        return await predict_job(self.service, job_store(self.settings), jobs_volume, job_id)


@app.cls(image=gpu_image, cpu=RUNNER_CPU, memory=RUNNER_MEMORY_MB, volumes={str(config.JOBS_MOUNT): jobs_volume},
         secrets=secrets(), timeout=config.TIMEOUT_S, scaledown_window=config.scaledown_window(),
         max_containers=config.max_containers())
class SharpJobRunner:
    """A CPU container (no GPU) running jobs, one at a time: the predictions are `SharpJobWorker`'s (GPU calls:
    `predict_job` for a photo, `predict_clip` for a clip's frames); the alignment, budget, encodes, previews and
    zips are made here. The GPU image for torch (the preview renderer runs on the CPU), and no model."""

    @modal.enter()
    def prepare(self) -> None:
        from app.service import InferenceService

        self.settings = container_settings()
        self.service = InferenceService(self.settings)  # no model: predictions are the GPU class's

    @modal.method()
    async def run_job(self, job_id: str) -> dict[str, Any]:
        """Run the stored job `job_id` (`app.jobs.modal_worker.run_job` with `predict` and `predict_clip`); its
        final state."""
        from app.jobs.modal_worker import run_job

        return await run_job(self.service, self.settings, job_store(self.settings), jobs_volume, job_id,
                             predict=spawn_prediction, predict_clip=spawn_clip)


@app.cls(**gpu_cls_options(jobs=True), max_containers=config.max_containers())
class SharpFrameWorker(ModelContainer):
    """A GPU container predicting runs of a clip job's frames, one run at a time, for the clip's own GPU call
    (`SharpJobWorker.predict_clip`, `app.jobs.modal_clip`); `SHARP_VIDEO_PARALLEL_CHUNKS` bounds how many one
    job uses."""

    @modal.method()
    async def predict_frames(self, job_id: str, first: int, count: int) -> list[int]:
        """Stash the predictions of frames `first` .. `first + count - 1` of the clip job `job_id` on the jobs
        Volume (`app.jobs.modal_clip.predict_frames`); returns the frames stashed."""
        from app.jobs.modal_clip import predict_frames

        return await predict_frames(self.service, self.settings, job_store(self.settings), jobs_volume, job_id,
                                    first, count)


@app.function(image=light_image, volumes={str(config.JOBS_MOUNT): jobs_volume}, secrets=secrets(),
              timeout=config.TIMEOUT_S, memory=FRONT_MEMORY_MB, scaledown_window=config.scaledown_window())
@modal.concurrent(max_inputs=FRONT_MAX_INPUTS)
@modal.asgi_app(label=WEB_LABEL, requires_proxy_auth=config.proxy_auth())
def fastapi_app() -> Any:
    """The CPU container's app (`deploy.front.Front`): `create_app` with the Modal job queue and the deploy's
    model description (no GPU call at start-up, nor for `/health`, `/`, `/jobs*`); predictions it admits are
    forwarded to `SharpAPI`."""
    from app.http import create_app
    from app.jobs.modal import ModalJobQueue
    from deploy.front import Front, FrontService

    settings = container_settings()
    service = FrontService(settings)
    jobs = ModalJobQueue(settings, job_store(settings), jobs_volume, spawn_job)
    local: FastAPI = create_app(settings, service=service, job_queue=jobs)
    return Front(local, forward=SharpAPI().respond.remote_gen.aio, service=service)


async def spawn_job(job_id: str) -> str:
    """Queue `SharpJobRunner.run_job(job_id)` (a job, photo or clip, on a CPU container; Modal's queue); the
    call's id, for `FunctionCall.from_id`."""
    call = await SharpJobRunner().run_job.spawn.aio(job_id)
    return call.object_id


async def spawn_prediction(job_id: str) -> str:
    """Queue `SharpJobWorker.predict_job(job_id)` (a photo job's prediction, on a GPU container); the call's id."""
    call = await SharpJobWorker().predict_job.spawn.aio(job_id)
    return call.object_id


async def spawn_clip(job_id: str, first: int) -> str:
    """Queue `SharpJobWorker.predict_clip(job_id, first)` (a clip job's frames, on a GPU container); the call's id."""
    call = await SharpJobWorker().predict_clip.spawn.aio(job_id, first)
    return call.object_id


async def spawn_frames(job_id: str, first: int, count: int) -> str:
    """Queue `SharpFrameWorker.predict_frames(job_id, first, count)`; the call's id."""
    call = await SharpFrameWorker().predict_frames.spawn.aio(job_id, first, count)
    return call.object_id

"""SHARP as an HTTP API on Modal: the local server's FastAPI app, on a GPU, scaled to zero when idle.

    modal deploy modal_api.py                     # https://<workspace>--sharp-api-fastapi-app.modal.run
    SHARP_GPU=H100 modal deploy modal_api.py      # another GPU type
    modal serve modal_api.py                      # a temporary dev URL that live-reloads on edits

Each container loads the model once. The checkpoint lives on the Modal Volume `sharp-model-cache`
(mounted at /cache): the first container downloads it and commits it, later ones read it. With memory
snapshots, the CPU-side start (imports, weights in RAM) is restored from a snapshot instead of redone;
only the move to the GPU runs on every cold start. Options and environment: see `app/deploy.py`.

Jobs (`POST /jobs`, `app.jobs.modal`): the web app stores the upload on the Volume `sharp-jobs` and
`.spawn()`s `SharpJobWorker.run_job`, one job per GPU container at a time, up to `SHARP_MAX_CONTAINERS`
containers; the worker writes the results to the same Volume, from which any web container serves them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import modal

from app import deploy

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_NAME = "sharp-api"
WEB_LABEL = f"{APP_NAME}-fastapi-app"
"""The URL label. A web method on a class is otherwise labelled `<app>-<class>-<method>`
(`sharp-api-sharpapi-fastapi-app`); pinning it gives https://<workspace>--sharp-api-fastapi-app.modal.run."""

app = modal.App(APP_NAME)


@app.cls(**deploy.model_cls_options(jobs=True))
@modal.concurrent(max_inputs=deploy.MAX_CONCURRENT_INPUTS)
class SharpAPI:
    """A GPU container: one model and one FastAPI app, serving up to 10 requests at once."""

    @modal.enter(snap=deploy.memory_snapshot())
    def load_weights(self) -> None:
        """Imports and weights into CPU memory (captured by the memory snapshot)."""
        self.settings = deploy.container_settings()
        self.predictor = deploy.load_on_cpu(self.settings, deploy.cache_volume)

    @modal.enter(snap=False)
    def move_to_gpu(self) -> None:
        """After every (re)start: the network onto the GPU."""
        self.settings = deploy.container_settings()  # re-read: a Secret may have changed since the snapshot
        self.predictor = deploy.move_to_device(self.predictor, self.settings)

    @modal.asgi_app(label=WEB_LABEL, requires_proxy_auth=deploy.proxy_auth())
    def fastapi_app(self) -> FastAPI:
        """The same app as `sharp-serve serve`, ready at once with this container's predictor; its jobs go
        to `SharpJobWorker` containers through Modal's queue."""
        from app.http import create_app
        from app.jobs.modal import ModalJobQueue

        jobs = ModalJobQueue(self.settings, deploy.job_store(self.settings), deploy.jobs_volume, spawn_job)
        return create_app(self.settings, predictor=self.predictor, job_queue=jobs)


@app.cls(**deploy.model_cls_options(jobs=True), max_containers=deploy.max_containers())
class SharpJobWorker:
    """A GPU container running jobs, one at a time (no `@modal.concurrent`): N queued jobs start up to
    `SHARP_MAX_CONTAINERS` containers, the rest wait in Modal's queue."""

    @modal.enter(snap=deploy.memory_snapshot())
    def load_weights(self) -> None:
        """Imports and weights into CPU memory (captured by the memory snapshot)."""
        self.settings = deploy.container_settings()
        self.predictor = deploy.load_on_cpu(self.settings, deploy.cache_volume)

    @modal.enter(snap=False)
    def move_to_gpu(self) -> None:
        """After every (re)start: the network onto the GPU, and the service that feeds it."""
        from app.service import InferenceService

        self.settings = deploy.container_settings()
        self.predictor = deploy.move_to_device(self.predictor, self.settings)
        self.service = InferenceService(self.settings, self.predictor)

    @modal.exit()
    def shutdown(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()

    @modal.method()
    async def run_job(self, job_id: str) -> dict[str, Any]:
        """Run the stored job `job_id` (`app.jobs.modal.run_job`); returns its final state."""
        from app.jobs.modal import run_job

        return await run_job(self.service, self.settings, deploy.job_store(self.settings), deploy.jobs_volume, job_id)


async def spawn_job(job_id: str) -> str:
    """Queue `SharpJobWorker.run_job(job_id)` (Modal's queue); the call's id, for `FunctionCall.from_id`."""
    call = await SharpJobWorker().run_job.spawn.aio(job_id)
    return call.object_id

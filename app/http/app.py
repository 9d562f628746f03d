"""`create_app()`: the FastAPI app that serves SHARP predictions, the same locally, in Docker and on Modal.

A request goes, top-down:

1. `RequestContextMiddleware`: X-Request-ID, one access-log line, a JSON 500 for any crash;
2. CORS (when `SHARP_CORS_ORIGINS` is set; a refused preflight is a JSON 400 too);
3. `UploadGuard`: the API key and the upload size, before the body is read;
4. a route (`app.http.routes`): reads the upload, calls `InferenceService` (`app.service`), which runs
   `app.pipeline` (decode -> predict -> encode) on its threads; `/jobs` routes call the `JobQueue`
   (`app.jobs`), whose worker feeds the same service;
5. errors from any layer become `{"error": {...}}` (`app.http.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI

from app import __version__
from app.http.deps import SingleValued, bearer_scheme
from app.http.docs import mount_docs
from app.http.errors import install_error_handlers
from app.http.idempotency import IdempotencyKeys
from app.http.middleware import JSONCORSMiddleware, RequestContextMiddleware, UploadGuard
from app.http.openapi import install_openapi, operation_id
from app.http.responses import PREDICTION_HEADERS
from app.http.routes import info, jobs, predict, render, sequences
from app.jobs import JobQueue
from app.jobs.local import LocalJobQueue
from app.service import InferenceService, Loader, default_loader
from app.settings import Settings, get_settings
from app.web import mount_page

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports this module without it
    from app.predictor import SharpPredictor

DESCRIPTION = """\
One photo in, ~1.2 million metric 3D Gaussians out, with Apple's SHARP model.

* `POST /predict/ply` (also `/predict/ply_vertex`, `/predict/splat`, `/predict/spz`, `/predict/sog`): a file
  to download. These take one photo; a video clip is a 415 that points to `POST /jobs`.
* `POST /jobs`: the same, asynchronously: follow `GET /jobs/{id}` or its server-sent `/events` (with
  progress), then download `GET /jobs/{id}/result.<ext>`. A video clip in the same `file` field makes a
  sequence job: a scene per frame, a manifest and a preview video (`fps`, `start`, `end`, `max_frames`, `align`).
* `POST /render`: a picture of the predicted scene: the photo's view (PNG/JPEG, or its depth map) or an MP4
  orbit, drawn by our PyTorch splat renderer.
* `GET /viewer` (or `/` from a browser): a web page to drop a photo into and orbit its scene.
* `POST /predict`: JSON arrays. A full scene is large as JSON (hundreds of MB for SHARP's 1.18M
  Gaussians as number lists): use `max_gaussians` and/or `encoding=base64` (packed float32, about half
  the size and much faster to parse).
* `max_gaussians` (every predict route, `/render`, `/jobs`): a count or a fraction (`0.25`) of the
  Gaussians to keep, neighbours merged on the photo's grid; `X-Sharp-Num-Gaussians` says how many are in
  the response, `X-Sharp-Num-Gaussians-Predicted` how many were predicted.

Every prediction names its model in `X-Sharp-Preset` / `X-Sharp-Weights` (`synthetic` means a test
model, not SHARP). The code is Apache-2.0; SHARP's weights are Apple's, for research use only (`licence` in
`GET /` and `/health`). Every error is `{"error": {"code": ..., "message": ..., "request_id": ...}}`.
When the server has an API key, the prediction endpoints need `Authorization: Bearer <key>`.
"""


def create_app(settings: Settings | None = None, predictor: SharpPredictor | None = None, *,
               loader: Loader = default_loader, service: InferenceService | None = None,
               job_queue: JobQueue | None = None) -> FastAPI:
    """The ASGI app. It installs no signal handler (on Modal, SIGTERM must reach Modal's own, which runs
    `@modal.exit`): open event streams end on shutdown through sse-starlette's hook on uvicorn.

    Args:
        settings: defaults to `get_settings()` (the SHARP_* environment).
        predictor: a loaded model (Modal loads it in @modal.enter); the app is then ready at once.
            Without one the app answers at once (503 `loading`) and loads the model from `settings`
            on a background thread at startup, once (retrying transient failures).
        loader: how that background load builds the predictor (tests use it to hold or fail loading).
        service: a ready-made service (tests use it to shorten the load backoff); overrides the above.
        job_queue: where `/jobs` go (Modal passes `app.jobs.modal.ModalJobQueue`); default: a
            `LocalJobQueue` feeding `service`, storing under `settings.jobs_path`.
    """
    settings = settings or get_settings()
    service = service or InferenceService(settings, predictor, loader=loader)
    job_queue = job_queue or LocalJobQueue(service, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        await job_queue.start()
        try:
            yield
        finally:
            await job_queue.close()
            service.close()

    # No trailing-slash redirects: Starlette builds them from the Host header, so a forged Host made `/static`
    # redirect to any site. A path with a stray slash is a 404 like any unknown path.
    app = FastAPI(title="sharp-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  redirect_slashes=False, docs_url=None, redoc_url=None,  # /docs: ours, without a CDN
                  generate_unique_id_function=operation_id)
    install_openapi(app)  # names for every operation, form, enum and error (client generators need them)
    app.state.service = service
    app.state.settings = settings
    app.state.jobs = job_queue
    app.state.idempotency = IdempotencyKeys(settings.jobs_path / ".idempotency", jobs_root=settings.jobs_path,
                                            ttl_s=settings.job_ttl_s)
    install_error_handlers(app)
    app.include_router(info.router)
    # The key is checked by UploadGuard; the dependency only documents it, so only when there is one.
    auth = [Depends(bearer_scheme)] if settings.api_key else []
    # sequences before jobs: the jobs router's /jobs/{id}/{name} catches every other name
    for router in (predict.router, render.router, sequences.router, jobs.router):
        app.include_router(router, dependencies=[*auth, SingleValued])  # a form field sent twice is a 422
    mount_page(app)
    mount_docs(app)
    app.add_middleware(UploadGuard, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "Idempotency-Key"],
            expose_headers=["Server-Timing", "Content-Disposition", "X-Request-ID", "Retry-After", "Location",
                            "Idempotent-Replayed", *PREDICTION_HEADERS],
        )
    app.add_middleware(RequestContextMiddleware)
    return app

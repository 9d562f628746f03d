"""Response models of the HTTP API: what `/`, `/health`, `/predict` and every error return.

They document the API in OpenAPI (/docs). `/predict` bodies are serialised by
`app.formats.json.encode_json` (orjson, no pydantic pass over a million rows) and `PredictResponse`
describes that document; the tests validate real responses against these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app import CODE_LICENCE
from app.formats.json import Encoding
from app.model.presets import WEIGHTS_LICENCE
from app.vocabulary import FINAL_JOB_STATUSES, FocalSource, JobStatus, ModelState, WeightsSource


class FieldProblem(BaseModel):
    """One problem of a `validation_error` (FastAPI's format, trimmed)."""

    loc: list[str | int] = Field(description="Where the problem is, e.g. `body`, `f_px`.")
    msg: str = Field(description="What is wrong with it.")
    type: str = Field(description="FastAPI's error type, e.g. `missing`, `float_parsing`, `duplicate_field`.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. `unsupported_image`.",
                      examples=["unsupported_image"])
    message: str = Field(description="Human-readable explanation.")
    request_id: str | None = Field(default=None, description="The request's X-Request-ID, for support.")
    details: list[FieldProblem] | None = Field(
        default=None, description="Per-field problems, for `validation_error` only (FastAPI's format)."
    )


class ErrorResponse(BaseModel):
    """Every non-2xx response has this shape."""

    error: ErrorDetail


class LicenceInfo(BaseModel):
    """The licences that apply to what this server runs (README, Licence; LICENSE and NOTICE)."""

    code: str = Field(default=CODE_LICENCE, description="SPDX identifier of this server's code licence.")
    weights_name: str = Field(default=WEIGHTS_LICENCE.name, description="The licence of Apple's SHARP weights "
                              "(preset `sharp`): research use only. Read it before using the predictions.")
    weights_url: str = Field(default=WEIGHTS_LICENCE.url, description="Where that licence is published.")
    weights_note: str = Field(default="Applies to the official SHARP weights (preset sharp); the tiny presets' "
                              "synthetic weights are generated locally and are not Apple's.")


class ModelSummary(BaseModel):
    preset: str = Field(description="Network configuration: `sharp` (the real model) or `tiny` (tests).")
    weights: WeightsSource = Field(
        description="Where the weights came from; `synthetic` means a test model, not SHARP."
    )
    device: str
    dtype: str


class ModelInfoResponse(ModelSummary):
    checkpoint: str | None = Field(default=None, description="File name of the loaded checkpoint (no directory).")
    num_gaussians: int = Field(description="Gaussians predicted per image.")
    internal_resolution: int = Field(description="Side of the square the network sees, in pixels.")


class EndpointInfo(BaseModel):
    method: str
    path: str
    summary: str


class ApiInfo(BaseModel):
    name: str = "sharp-serve"
    version: str
    description: str
    status: ModelState = Field(description="The model's state, as in /health.")
    model: ModelInfoResponse | None = Field(description="The loaded model; null while loading.")
    formats: list[str] = Field(description="Names accepted by `POST /predict/{format}`.")
    endpoints: list[EndpointInfo]
    docs_url: str
    openapi_url: str
    page_url: str = Field(default="/viewer", description="The web page: drop a photo, orbit the 3D scene.")
    job_final_statuses: list[JobStatus] = Field(default_factory=lambda: sorted(FINAL_JOB_STATUSES),
                                                description="Job statuses after which a job no longer changes.")
    licence: LicenceInfo = Field(default_factory=LicenceInfo)


BackendState = Literal["waiting", "answered"]


class HealthResponse(BaseModel):
    """200 once the model is loaded; 503 with `loading` or `error` (and `detail`) before that."""

    status: ModelState
    detail: str | None = Field(default=None, description="Why loading failed (status `error`): an error code and "
                               "whether the server retries; the full story is in the server log.")
    message: str | None = Field(default=None, description="Status `error`: what clients are told (the 503 "
                                "`model_unavailable` message), with how an operator fixes it when that is known.")
    version: str
    uptime_s: float
    preset: str | None = None
    weights: WeightsSource | None = None
    device: str | None = None
    dtype: str | None = None
    num_gaussians: int | None = None
    internal_resolution: int | None = None
    queue_depth: int = Field(description="Requests (predictions and renders) admitted and waiting.")
    in_progress: int = Field(description="Runs in the model or the renderer now (0 to 2; jobs included).")
    max_queue: int = Field(description="Waiting requests allowed before 503 `queue_full`.")
    backend: BackendState | None = Field(
        default=None, description="Only on a front that forwards predictions to GPU containers (Modal): `waiting` "
        "until one has answered a prediction, then `answered`. The model fields then describe the deploy's model.")
    licence: LicenceInfo = Field(default_factory=LicenceInfo)


class Base64Array(BaseModel):
    """An array packed as base64 of its little-endian float32 bytes, C order (`encoding=base64`)."""

    dtype: Literal["float32"]
    shape: list[int]
    byteorder: Literal["little"]
    data: str


class Timings(BaseModel):
    """Stage durations in milliseconds. In the JSON body, `encode` is the time spent serialising the arrays
    (the metadata object is written after it); the Server-Timing header's `encode` is the whole body."""

    decode: float
    preprocess: float
    forward: float
    postprocess: float
    budget: float | None = Field(default=None, description="Choosing the Gaussians to keep (with `max_gaussians`).")
    encode: float


class PredictMetadata(BaseModel):
    image_width: int = Field(description="Width of the (EXIF-rotated) input image, pixels.")
    image_height: int
    f_px: float = Field(description="Focal length used, pixels of the input image.")
    f_px_source: FocalSource
    intrinsics: list[list[float]] = Field(description="3x3 pinhole matrix, principal point at (W/2, H/2).")
    num_gaussians: int = Field(description="Gaussians in this response.")
    total_gaussians: int = Field(description="Gaussians predicted (before `max_gaussians`).")
    color_space: Literal["srgb"]
    coordinate_convention: Literal["opencv"] = Field(
        description="Camera at the origin, x right, y down, z forward; metres."
    )
    encoding: Encoding
    model: ModelSummary
    timings_ms: Timings


Rows = list[list[float | None]]


class PredictResponse(BaseModel):
    """N Gaussians; with `encoding=base64` each array is a `Base64Array` of the same shape instead."""

    positions: Rows | Base64Array = Field(description="[N, 3] metres, OpenCV camera axes.")
    scales: Rows | Base64Array = Field(description="[N, 3] standard deviations in metres.")
    rotations: Rows | Base64Array = Field(description="[N, 4] unit quaternions (w, x, y, z).")
    opacities: Rows | Base64Array = Field(description="[N, 1] in [0, 1].")
    colors: Rows | Base64Array = Field(description="[N, 3] sRGB in [0, 1].")
    metadata: PredictMetadata


class JobMetadata(BaseModel):
    image_width: int
    image_height: int
    f_px: float
    f_px_source: FocalSource
    num_gaussians: int = Field(description="Gaussians in every output (kept by `max_gaussians`).")
    total_gaussians: int | None = Field(default=None, description="Gaussians predicted (before `max_gaussians`).")


class JobError(BaseModel):
    code: str = Field(description="e.g. `interrupted` (the server restarted), `internal_error`, an image error.")
    message: str


FileState = Literal["waiting", "encoding", "ready", "failed"]
"""Where an output of a photo's job is (`app.jobs.job.Job.file_states`)."""


WebhookEvent = Literal["started", "progress", "succeeded", "failed", "cancelled"]


class JobWebhook(BaseModel):
    """Where a job's webhook events go and how their delivery went (`app.jobs.webhooks`)."""

    url: str
    events: list[WebhookEvent] = Field(description="The events asked for (`webhook_events`).")
    attempts: int = Field(description="POSTs made so far, retries included.")
    delivered: int = Field(description="Events the target accepted (answered 2xx).")
    last_event: str | None = Field(description="The type of the event last attempted, e.g. `job.succeeded`.")
    last_status: int | None = Field(description="The HTTP status of the last attempt; null if it got no answer.")
    last_error: str | None = Field(description="Why the last attempt failed; null if it succeeded.")
    last_attempt_at: str | None = Field(description="ISO 8601, UTC.")


class JobResponse(BaseModel):
    """A job (`POST /jobs`, `GET /jobs/{id}`, each event of `GET /jobs/{id}/events`)."""

    id: str
    status: JobStatus
    stage: str = Field(description="`queued`, `decode`, `preprocess`, `forward`, `postprocess`, `encode`, `done`; a "
                                   "clip's job: the stage of its `frame`, `preview` included.")
    progress: float = Field(ge=0, le=1, description="Share of the work done; the forward pass is 88 % of it.")
    queue_position: int | None = Field(description="Jobs ahead of this one (0: next); null unless queued.")
    created_at: str = Field(description="ISO 8601, UTC.")
    started_at: str | None
    finished_at: str | None
    expires_at: str | None = Field(description="When the results are deleted (set once finished).")
    outputs: list[str] = Field(description="The formats asked for.")
    model: ModelSummary | None
    metadata: JobMetadata | None
    timings_ms: dict[str, float]
    error: JobError | None
    results: dict[str, str] = Field(description="Format -> URL of its file, once succeeded (a file not made yet "
                                                "included: its download waits for it; see `files`); a clip's job: "
                                                "path -> URL (`frames/000000.ply`, `manifest.json`, "
                                                "`preview.mp4`, `sequence.zip`).")
    frame: int | None = Field(default=None, description="A clip's job: the frame being made (1-based); null for "
                                                        "a photo's.")
    frames: int | None = Field(default=None, description="A clip's job: how many frames (the header's estimate "
                                                         "while running, the count once done); null for a photo's.")
    webhook: JobWebhook | None = Field(default=None, description="The job's webhook (`webhook_url`); null "
                                                                 "without one.")
    first: str | None = Field(default=None, description="A photo's job: the output made first, before it succeeds "
                                                       "(the form's `first`, else the first output listed).")
    files: dict[str, FileState] = Field(
        default_factory=dict,
        description="A photo's job: output -> `waiting` (not made yet), `encoding`, `ready` or `failed` (its "
                    "download answers 409 `result_failed`). A job with several outputs succeeds once its first is "
                    "ready; the others follow, and a download of one not ready yet waits for it. A clip's job: "
                    "each of its files by path (none before it succeeds; then all ready but `sequence.zip`, made "
                    "after).")

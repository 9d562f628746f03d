"""The HTTP API: `create_app()` builds the FastAPI app that serves SHARP predictions.

A predict request goes, top-down:

1. `RequestContextMiddleware`: X-Request-ID, one access-log line, and a JSON 500 for any crash;
2. CORS (when `SHARP_CORS_ORIGINS` is set);
3. `UploadGuard`: the API key and the upload size, checked before the body is read;
4. the route (`predict_json`, `predict_ply`, ...): reads the upload, calls `InferenceService.infer`
   (decode, then `SharpPredictor.predict`, both off the event loop), encodes with `app.formats`.

Errors raised anywhere on the way are turned into `{"error": {"code", "message", "request_id"}}` by
the handlers at the end of this module.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.formats import FORMATS, OutputFormat
from app.formats.json import encode_json, select_gaussians
from app.imaging import ImageError
from app.predictor import ModelInfo, SharpPredictor
from app.schemas import (
    ApiInfo,
    EndpointInfo,
    ErrorResponse,
    HealthResponse,
    ModelInfoResponse,
    PredictResponse,
)
from app.service import (
    LOADING_RETRY_AFTER_S,
    Inference,
    InferenceService,
    Loader,
    ModelState,
    ServiceUnavailableError,
    default_loader,
)
from app.settings import Settings, get_settings
from app.web import mount_page, page_response, wants_html

LOGGER = logging.getLogger(__name__)
ACCESS_LOGGER = logging.getLogger("app.access")

DESCRIPTION = """\
One photo in, ~1.2 million metric 3D Gaussians out, with Apple's SHARP model.

* `POST /predict/ply` (also `/predict/splat`, `/predict/spz`): a file to download.
* `POST /predict`: JSON arrays. A full scene is large as JSON (hundreds of MB for SHARP's 1.18M
  Gaussians as number lists): use `max_gaussians` to keep the most opaque ones and/or
  `encoding=base64` (packed float32, about half the size and much faster to parse).

Every error is `{"error": {"code": ..., "message": ..., "request_id": ...}}`. When the server has an
API key, the predict endpoints need `Authorization: Bearer <key>`.
"""

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Allowance on top of SHARP_MAX_UPLOAD_MB for the form fields and multipart headers of a request."""

PLY_MEDIA_TYPE = "application/octet-stream"
"""The PLY is sent as a plain download, as the API contract says (the registry names application/x-ply)."""

PREDICTION_HEADERS = ("X-Sharp-Preset", "X-Sharp-Weights", "X-Sharp-F-Px", "X-Sharp-F-Px-Source",
                      "X-Sharp-Image-Size", "X-Sharp-Num-Gaussians")
"""Response headers of every prediction: the model (preset, weights) and the camera of the scene."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_IMAGE_ERROR_STATUS = {"unsupported_image": 415, "corrupt_image": 400, "image_too_large": 413}
_HTTP_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                     413: "upload_too_large", 415: "unsupported_media_type", 503: "unavailable"}
_ERROR_STATUS_TEXT = {
    400: "Corrupt or truncated image, empty upload or malformed request",
    401: "Missing or wrong API key",
    404: "Unknown output format",
    413: "Upload or image too large",
    415: "Not an image, or an unsupported image format",
    422: "Invalid form field (missing file, bad f_px, max_gaussians, encoding or vertex_only)",
    503: "Model loading or failed to load, or queue full; see Retry-After",
}


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": _ERROR_STATUS_TEXT[status]}
            for status in statuses}


def _file_responses(media_type: str, what: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": what,
              "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}},
        **_error_responses(400, 401, 413, 415, 422, 503),
    }


# ------------------------------------------------------------------------------------------- errors


class ApiError(HTTPException):
    """A client-facing error with a stable `code`; rendered as `{"error": {...}}`."""

    def __init__(self, status_code: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message


def error_response(status_code: int, code: str, message: str, request_id: str | None,
                   headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None,
                   ) -> JSONResponse:
    """The one shape of every error body."""
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status_code, headers=headers)


def _request_id(scope_or_request: Scope | Request) -> str | None:
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return scope.get("state", {}).get("request_id")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        code, message = exc.code, exc.message
    else:
        code = _HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = str(exc.detail)
    return error_response(exc.status_code, code, message, _request_id(request), exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    message = "; ".join(f"{'.'.join(str(p) for p in d['loc'] if p != 'body')}: {d['msg']}" for d in details)
    missing_file = any(d["loc"][-1:] == ["file"] for d in details)
    code = "missing_file" if missing_file else "validation_error"
    if missing_file:
        message = "Send the image as a multipart form field named 'file'. " + message
    return error_response(422, code, message or "Invalid request.", _request_id(request), details=details)


async def _image_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImageError)
    return error_response(_IMAGE_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message, _request_id(request))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceUnavailableError)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return error_response(503, exc.code, exc.message, _request_id(request), headers)


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(ServiceUnavailableError, _unavailable)


# ---------------------------------------------------------------------------------------- middleware


class RequestContextMiddleware:
    """Gives every request an id (an incoming sane X-Request-ID, else a new one), echoes it in the
    response, logs one access line per request, and turns an unexpected exception into a JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            LOGGER.exception("Unhandled error in %s %s (request %s)", scope["method"], scope["path"],
                             request_id)
            if response_started:
                raise
            response = error_response(500, "internal_error", "Internal server error; quote the request_id "
                                      "when reporting it.", request_id)
            await response(scope, receive, send_with_id)
        finally:
            duration_ms = (time.perf_counter() - start) * 1000.0
            ACCESS_LOGGER.info(
                "%s %s %d %.1fms request_id=%s",
                scope["method"], scope["path"], status, duration_ms, request_id,
                extra={"method": scope["method"], "path": scope["path"], "status": status,
                       "duration_ms": round(duration_ms, 1), "request_id": request_id},
            )


class UploadGuard:
    """Checks on `/predict*` that must come before the body is read: the API key (401) and the upload
    size (413), from Content-Length when given and by counting the bytes as they arrive otherwise."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_body_bytes = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and scope["path"].startswith("/predict")
        if not guarded or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_key is not None and not _bearer_matches(headers.get("authorization"), self.api_key):
            response = error_response(401, "unauthorized", "Missing or wrong API key: send the header "
                                      "'Authorization: Bearer <key>'.", _request_id(scope),
                                      headers={"WWW-Authenticate": 'Bearer realm="sharp-serve"'})
            await response(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(413, "upload_too_large", self._too_large_message(), _request_id(scope))(
                scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise ApiError(413, "upload_too_large", self._too_large_message())
            return message

        await self.app(scope, counting_receive, send)

    def _too_large_message(self) -> str:
        return _too_large_message(self.max_upload_bytes)


def _too_large_message(limit_bytes: int) -> str:
    return f"The upload is larger than the limit of {limit_bytes / 2**20:.3g} MB (SHARP_MAX_UPLOAD_MB)."


def _bearer_matches(authorization: str | None, key: bytes) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)


# -------------------------------------------------------------------------------------------- routes

ImageUpload = Annotated[UploadFile, File(description="The photo (JPEG, PNG, HEIC, WebP, TIFF, ...).")]
FocalPx = Annotated[float | None, Form(
    gt=0, allow_inf_nan=False,
    description="Focal length in pixels of the uploaded image; default: from EXIF, else a 30 mm equivalent.",
)]
VertexOnly = Annotated[bool, Form(description="Write only the vertex element (for viewers that refuse the "
                                              "camera metadata elements).")]
MaxGaussians = Annotated[int | None, Form(ge=1, description="Return at most this many Gaussians, the most "
                                                            "opaque ones (in their original order).")]
JsonEncoding = Annotated[Literal["list", "base64"], Form(
    description="`list`: nested number arrays. `base64`: each array as base64 of little-endian float32.",
)]

router = APIRouter()
# Documents the scheme in OpenAPI; the key itself is checked by `UploadGuard` before the upload is read.
_bearer_scheme = HTTPBearer(auto_error=False, description="Required on /predict* when SHARP_API_KEY is set.")


def get_service(request: Request) -> InferenceService:
    return request.app.state.service


Service = Annotated[InferenceService, Depends(get_service)]


@router.get("/", response_model=ApiInfo, summary="API information")
async def api_info(request: Request, response: Response, service: Service) -> ApiInfo | Response:
    """Name, version, model, formats and endpoints of this server (browsers that prefer HTML get the web page)."""
    if wants_html(request):
        return page_response()
    response.headers["Vary"] = "Accept"
    predictor = service.predictor
    endpoints = [
        EndpointInfo(method=method.upper(), path=path, summary=operation.get("summary", ""))
        for path, operations in request.app.openapi()["paths"].items()
        for method, operation in operations.items()
    ]
    return ApiInfo(
        version=__version__, description="One photo in, a 3D Gaussian splat out, with Apple's SHARP model.",
        status=_status(service), model=_model_info(predictor.info) if predictor else None,
        formats=list(FORMATS), endpoints=endpoints,
        docs_url=request.app.docs_url or "", openapi_url=request.app.openapi_url or "",
    )


@router.get("/health", response_model=HealthResponse, summary="Readiness",
            responses={503: {"model": HealthResponse, "description": "Model loading, or failed to load"}})
async def health(service: Service) -> JSONResponse:
    """200 once the model is loaded, 503 while it loads (`loading`) or if it failed (`error`, `detail`)."""
    predictor = service.predictor
    body = HealthResponse(
        status=_status(service), detail=service.error, version=__version__,
        uptime_s=round(time.monotonic() - service.started_at, 3),
        queue_depth=service.queue_depth, in_progress=service.in_progress,
        max_queue=service.settings.max_queue,
        **(_model_info(predictor.info).model_dump(exclude={"checkpoint"}) if predictor else {}),
    )
    headers = {"Retry-After": str(LOADING_RETRY_AFTER_S)} if body.status == "loading" else None
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if body.status == "ok" else 503,
                        headers=headers)


@router.post(
    "/predict", summary="Predict Gaussians as JSON", response_class=Response,
    dependencies=[Depends(_bearer_scheme)],
    responses={200: {"model": PredictResponse, "description": "The Gaussians and their metadata"},
               **_error_responses(400, 401, 413, 415, 422, 503)},
)
async def predict_json(service: Service, file: ImageUpload, f_px: FocalPx = None,
                       max_gaussians: MaxGaussians = None, encoding: JsonEncoding = "list") -> Response:
    """The Gaussians as JSON arrays (see the response schema for units and axes).

    No cap by default: the full SHARP scene is ~1.18M Gaussians (hundreds of MB as lists); use
    `max_gaussians` and/or `encoding=base64` for large scenes.
    """
    inference = await service.infer(await _read_upload(file, service), filename=file.filename, f_px=f_px)
    start = time.perf_counter()
    body = await run_in_threadpool(encode_prediction_json, inference, max_gaussians, encoding)
    inference.timings_ms["encode"] = (time.perf_counter() - start) * 1000.0
    return Response(body, media_type="application/json",
                    headers={"Server-Timing": _server_timing(inference.timings_ms), **prediction_headers(inference)})


@router.post(
    "/predict/ply", summary="Predict Gaussians as a PLY file", response_class=StreamingResponse,
    dependencies=[Depends(_bearer_scheme)],
    responses=_file_responses(PLY_MEDIA_TYPE, "The 3DGS PLY as apple/ml-sharp writes it (streamed)"),
)
async def predict_ply(service: Service, file: ImageUpload, f_px: FocalPx = None,
                      vertex_only: VertexOnly = False) -> Response:
    """The 3DGS PLY file (binary little-endian), streamed with an exact Content-Length."""
    inference = await service.infer(await _read_upload(file, service), filename=file.filename, f_px=f_px)
    return await _file_response(inference, FORMATS["ply"], PLY_MEDIA_TYPE, vertex_only=vertex_only)


def _format_route(fmt: OutputFormat) -> Callable[..., Any]:
    async def predict_format(service: Service, file: ImageUpload, f_px: FocalPx = None) -> Response:
        inference = await service.infer(await _read_upload(file, service), filename=file.filename, f_px=f_px)
        return await _file_response(inference, fmt, fmt.media_type)

    predict_format.__doc__ = f"{fmt.description[:1].upper()}{fmt.description[1:]}."
    predict_format.__name__ = f"predict_{fmt.name}"
    return predict_format


for _fmt in FORMATS.values():
    if _fmt.name != "ply":
        router.add_api_route(
            f"/predict/{_fmt.name}", _format_route(_fmt), methods=["POST"], response_class=Response,
            summary=f"Predict Gaussians as a {_fmt.extension} file", dependencies=[Depends(_bearer_scheme)],
            responses=_file_responses(_fmt.media_type, _fmt.description),
        )


@router.post("/predict/{format_name}", include_in_schema=False)
async def unknown_format(format_name: str) -> Response:
    raise ApiError(404, "unknown_format",
                   f"Unknown output format {format_name!r}; use one of: {', '.join(FORMATS)} "
                   "(POST /predict/<format>), or POST /predict for JSON.")


# ------------------------------------------------------------------------------------- route helpers


async def _read_upload(file: UploadFile, service: InferenceService) -> bytes:
    """The uploaded bytes, refusing empty and oversized files."""
    limit = service.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "upload_too_large", _too_large_message(limit))
    if not data:
        raise ApiError(400, "empty_file", "The uploaded file is empty (0 bytes); expected an image.")
    return data


async def _file_response(inference: Inference, fmt: OutputFormat, media_type: str,
                         **options: Any) -> Response:
    """The scene as a download: whole bytes, or streamed block by block when the encoder yields blocks."""
    scene = inference.prediction.scene
    headers = {"Content-Disposition": _content_disposition(f"{inference.name}{fmt.extension}"),
               **prediction_headers(inference)}
    start = time.perf_counter()
    encoded = await run_in_threadpool(fmt.encode, scene, **options)
    if isinstance(encoded, (bytes, bytearray, memoryview)):
        inference.timings_ms["encode"] = (time.perf_counter() - start) * 1000.0
        headers["Server-Timing"] = _server_timing(inference.timings_ms)
        return Response(bytes(encoded), media_type=media_type, headers=headers)
    # Streamed: each block is encoded on a worker thread as the client reads, so there is no encode time yet.
    headers["Server-Timing"] = _server_timing(inference.timings_ms)
    if fmt.num_bytes is not None:
        headers["Content-Length"] = str(fmt.num_bytes(scene, **options))
    return StreamingResponse(encoded, media_type=media_type, headers=headers)


def prediction_headers(inference: Inference) -> dict[str, str]:
    """What made this response and for which camera, so a file from a test model never passes for SHARP."""
    scene = inference.prediction.scene
    return {
        "X-Sharp-Preset": inference.model.preset,
        "X-Sharp-Weights": inference.model.weights,
        "X-Sharp-F-Px": f"{scene.f_px:.6g}",
        "X-Sharp-F-Px-Source": inference.prediction.f_px_source,
        "X-Sharp-Image-Size": f"{scene.image_width}x{scene.image_height}",
        "X-Sharp-Num-Gaussians": str(scene.num_gaussians),
    }


def encode_prediction_json(inference: Inference, max_gaussians: int | None,
                           encoding: Literal["list", "base64"]) -> bytes:
    """The body of `POST /predict` (also returned by the Modal function API): arrays plus metadata."""
    scene = inference.prediction.scene
    selected = select_gaussians(scene, max_gaussians)
    model = inference.model
    metadata = {
        "image_width": scene.image_width, "image_height": scene.image_height, "f_px": scene.f_px,
        "f_px_source": inference.prediction.f_px_source, "intrinsics": scene.intrinsics.tolist(),
        "total_gaussians": scene.num_gaussians, "coordinate_convention": "opencv",
        "model": {"preset": model.preset, "weights": model.weights, "device": model.device,
                  "dtype": model.dtype},
        "timings_ms": {**_rounded(inference.timings_ms), "encode": None},
    }
    return encode_json(selected, metadata, encoding=encoding)


def _server_timing(timings_ms: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms:.1f}" for stage, ms in timings_ms.items())


def _rounded(timings_ms: dict[str, float]) -> dict[str, float]:
    return {stage: round(ms, 3) for stage, ms in timings_ms.items()}


def _content_disposition(filename: str) -> str:
    """`attachment` with a plain ASCII filename, plus RFC 5987 `filename*` when the name needs escaping."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _status(service: InferenceService) -> Literal["ok", "loading", "error"]:
    return {ModelState.READY: "ok", ModelState.LOADING: "loading", ModelState.ERROR: "error"}[service.state]


def _model_info(info: ModelInfo) -> ModelInfoResponse:
    return ModelInfoResponse(
        preset=info.preset, weights=info.weights, checkpoint=info.checkpoint, device=info.device,
        dtype=info.dtype, num_gaussians=info.num_gaussians, internal_resolution=info.internal_resolution,
    )


# ----------------------------------------------------------------------------------------------- app


def create_app(settings: Settings | None = None, predictor: SharpPredictor | None = None, *,
               loader: Loader = default_loader) -> FastAPI:
    """The ASGI app.

    Args:
        settings: defaults to `get_settings()` (the SHARP_* environment).
        predictor: a loaded model (Modal loads it in @modal.enter); the app is then ready at once.
            Without one the app answers at once (503 `loading`) and loads the model from `settings`
            on a background thread at startup, once.
        loader: how that background load builds the predictor (tests use it to hold loading).
    """
    settings = settings or get_settings()
    service = InferenceService(settings, predictor, loader=loader)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.close()

    app = FastAPI(title="sharp-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(router)
    mount_page(app)
    app.add_middleware(UploadGuard, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["Server-Timing", "Content-Disposition", "X-Request-ID", "Retry-After", *PREDICTION_HEADERS],
        )
    app.add_middleware(RequestContextMiddleware)
    return app

"""How a prediction leaves over HTTP: the file's bytes plus headers naming the model, camera and timings."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from fastapi.responses import FileResponse, Response
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from app.http.errors import error_response, request_id_of
from app.http.schemas import ErrorResponse
from app.pipeline import RunResult
from app.prediction import Prediction

PREDICTION_HEADERS = ("X-Sharp-Preset", "X-Sharp-Weights", "X-Sharp-F-Px", "X-Sharp-F-Px-Source",
                      "X-Sharp-Image-Size", "X-Sharp-Num-Gaussians", "X-Sharp-Num-Gaussians-Predicted")
"""Response headers of every prediction: the model (preset, weights), the camera of the scene, the Gaussians
in it (kept by `max_gaussians`) and the number predicted."""

_ERROR_STATUS_TEXT = {
    400: "Corrupt or truncated image, empty upload or malformed request",
    401: "Missing or wrong API key",
    404: "Unknown output format, or unknown job",
    409: "The job has not finished, or a request with the same Idempotency-Key is still running",
    410: "The job's results have expired",
    413: "Upload or image too large",
    415: "Not an image, an unsupported image format, or a video clip (clips go to POST /jobs)",
    422: "Invalid form field (missing file, f_px out of range, bad max_gaussians, encoding or option), or an "
         "Idempotency-Key used before for another request",
    503: "Model loading or failed to load, or queue full; see Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses."""
    return {status: {"model": ErrorResponse, "description": _ERROR_STATUS_TEXT[status]} for status in statuses}


def file_responses(media_type: str, what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route that returns a file."""
    return {
        200: {"description": what, "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(400, 401, 409, 413, 415, 422, 503),
    }


def prediction_headers(prediction: Prediction) -> dict[str, str]:
    """What made this response and for which camera, so a file from a test model never passes for SHARP."""
    scene = prediction.scene
    return sharp_headers(prediction.model.preset, prediction.model.weights, scene.f_px, prediction.f_px_source,
                         scene.image_width, scene.image_height, scene.num_gaussians, prediction.num_predicted)


def sharp_headers(preset: str, weights: str, f_px: float, f_px_source: str, image_width: int, image_height: int,
                  num_gaussians: int, num_predicted: int) -> dict[str, str]:
    """The `PREDICTION_HEADERS` (a job's result files carry them too)."""
    return {
        "X-Sharp-Preset": preset,
        "X-Sharp-Weights": weights,
        "X-Sharp-F-Px": f"{f_px:.6g}",
        "X-Sharp-F-Px-Source": f_px_source,
        "X-Sharp-Image-Size": f"{image_width}x{image_height}",
        "X-Sharp-Num-Gaussians": str(num_gaussians),
        "X-Sharp-Num-Gaussians-Predicted": str(num_predicted),
    }


def server_timing(timings_ms: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms:.1f}" for stage, ms in timings_ms.items())


def content_disposition(filename: str) -> str:
    """`attachment` with a plain ASCII filename, plus RFC 5987 `filename*` when the name needs escaping."""
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    if fallback == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def prediction_response(result: RunResult, format_name: str, *, attachment: bool = True) -> Response:
    """The run's output `format_name` with its media type, download name, model/camera headers and
    Server-Timing."""
    output = result.outputs[format_name]
    headers = {**prediction_headers(result.prediction), "Server-Timing": server_timing(result.timings_ms)}
    if attachment:
        headers["Content-Disposition"] = content_disposition(output.filename)
    return Response(output.body, media_type=output.media_type, headers=headers)


class RangeFileResponse(FileResponse):
    """A file download whose `Range` errors have the API's JSON error shape: 400 `bad_range` (malformed, e.g.
    ``bytes=5-1``) and 416 `range_not_satisfiable` (past the end, with ``Content-Range: bytes */<size>``);
    Starlette's own answer is plain text. Valid ranges are Starlette's. A file deleted before its first byte
    is sent (a job's files expired or evicted meanwhile) is a 410 `job_expired`, not a 500."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def send_started(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._send_file(scope, receive, send_started)
        except FileNotFoundError:
            if started:
                raise
            await error_response(410, "job_expired", "The file was deleted (expired, or evicted to keep the job "
                                 "store under its size limit) before it could be sent.",
                                 request_id_of(scope))(scope, receive, send)

    async def _send_file(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stat_result is None:  # Starlette's own stat turns a missing file into a RuntimeError
            self.stat_result = await anyio.to_thread.run_sync(os.stat, self.path)
            self.set_stat_headers(self.stat_result)
        http_range = Headers(scope=scope).get("range")
        if http_range is not None and scope["method"] in ("GET", "HEAD"):
            size = self.stat_result.st_size
            refusal = None
            try:
                self._parse_range_header(http_range, size)
            except MalformedRangeHeader as error:
                refusal = error_response(400, "bad_range", f"Malformed Range header: {error.content}",
                                         request_id_of(scope))
            except RangeNotSatisfiable:
                refusal = error_response(416, "range_not_satisfiable", f"The Range is past the end of the "
                                         f"file ({size} bytes).", request_id_of(scope),
                                         headers={"Content-Range": f"bytes */{size}"})
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

"""The CPU web container of `modal_api.py`: everything but predictions, which go to the GPU class.

    client ── https://<workspace>--sharp-api-fastapi-app.modal.run ──> CPU container (`Front`)
        /predict, /predict/*, /render: checked here by the local app, then one Modal call ──> SharpAPI (GPU)
        everything else (page, /health, /, /jobs and their events and results) ──> `create_app` on the CPU

Event streams and polls hold an input slot of the container that serves them for as long as they are
open; served here, watching a job never holds (or starts) a GPU container, and neither do `/health` and `/`:
the front's `FrontService` describes the model from the deploy's settings (`deploy_model_info`), and says
in `/health` whether a GPU container has answered yet.

A prediction first goes through the front's own `create_app` (`Front`): the API key (401), the upload's size
(413), its form (422: a missing file, a field sent twice, an `f_px` out of range) and every output option
and budget are checked exactly as `sharp-serve serve` checks them. Only when the route reaches
`FrontService.run` (the request is one the local app would run) is it forwarded, as one `ForwardedRequest`
(method, path, headers, the whole body), and answered with one `ForwardedResponse`: the GPU class answers it
with the same `create_app`, so its errors and headers are those of every other deployment. A refused
request never reaches a GPU class.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.budget import MaxGaussians, budget_count
from app.errors import SharpError
from app.model.presets import get_preset
from app.outputs import check_options
from app.prediction import ModelInfo
from app.service import InferenceService

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from app.settings import Settings

FORWARDED_PATHS = ("/predict", "/render")
"""Paths (and their sub-paths) answered by the GPU class."""
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host", b"upgrade"}


@dataclass(frozen=True)
class ForwardedRequest:
    method: str
    target: str
    """Path and query string, as received (`/predict/ply?f_px=1200`)."""
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True)
class ForwardedResponse:
    """A forwarded response's status and headers (`content-length` included); its body follows in pieces."""

    status: int
    headers: list[tuple[bytes, bytes]]


FORWARD_CHUNK_BYTES = 1024 * 1024
"""A forwarded response's body travels in pieces of at most this size (the outputs of `SharpAPI.respond`, a
Modal generator), so the front holds a piece or two of each answer, never a whole 193 MB JSON or 70 MB PLY.
Below Modal's inline limit for a generator's item (`MAX_OBJECT_SIZE_BYTES`, 2 MiB pickled; a larger item is
uploaded to blob storage and downloaded again, two more HTTP round trips per piece)."""

Forward = Callable[[ForwardedRequest], AsyncIterator["ForwardedResponse | bytes"]]
"""`forward(request)`: the response's head (`ForwardedResponse`), then its body's pieces (`bytes`)."""


def is_forwarded(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in FORWARDED_PATHS)


class Admitted(SharpError):
    """Raised by `FrontService.run`: the local app checked the request and would run it; `Front` forwards it
    (the local app's answer to this error is never sent)."""

    code = "forwarded"
    status = 202


_ADMISSION: ContextVar[list[bool] | None] = ContextVar("sharp_front_admission", default=None)
"""Set by `Front` around the local app's handling of a forwarded path: `[True]` once `FrontService.run` is reached."""


def deploy_model_info(settings: Settings) -> ModelInfo:
    """The model the GPU containers load, described from the deploy's settings (the image's environment):
    preset, weights (official, a file, or synthetic) and the checkpoint's name, device and dtype. No GPU call."""
    preset = get_preset(settings.preset)
    url = settings.weights_url
    if settings.checkpoint is not None:
        weights, checkpoint = "file", str(settings.checkpoint)
    elif url is None:
        weights, checkpoint = "synthetic", None
    else:
        weights = "official" if url == preset.checkpoint_url else "file"
        checkpoint = str(Path(str(settings.cache_dir)) / Path(url.split("?")[0]).name)
    return ModelInfo(preset=preset.name, weights=weights, checkpoint=checkpoint, device=settings.device,
                     dtype=settings.dtype, num_gaussians=preset.config.num_gaussians,
                     internal_resolution=preset.config.internal_resolution)


class RemoteModel:
    """What the front's service knows of the model: its description (`/health`, `/`, the budget's count). It
    holds no network: predictions never reach it (`Front` sends them to the GPU class)."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the CPU container forwards predictions to the GPU class; it runs none")


class FrontService(InferenceService):
    """The front's `InferenceService`: ready at once with the deploy's model description (no load, no GPU
    call); `run` checks the outputs and the budget as `app.pipeline.run` does, then admits the request for
    forwarding (`Admitted`). `backend` says whether a GPU container has answered a forwarded request yet."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, RemoteModel(deploy_model_info(settings)))  # type: ignore[arg-type]
        self.answered_at: float | None = None

    @property
    def backend(self) -> str | None:
        return "waiting" if self.answered_at is None else "answered"

    def gpu_answered(self) -> None:
        self.answered_at = time.time()

    async def run(self, source: bytes | Path, *, filename: str | None, f_px: float | None,
                  outputs: dict[str, dict[str, Any]], max_gaussians: MaxGaussians | None = None,
                  **_: Any) -> Any:
        admission = _ADMISSION.get()
        if admission is None:
            raise RuntimeError("the CPU container runs no prediction (jobs go to the GPU classes)")
        for name, options in outputs.items():
            check_options(name, options)
        if max_gaussians is not None:
            budget_count(max_gaussians, self.require_predictor().info.num_gaussians)
        admission.append(True)
        raise Admitted("checked here; answered by the GPU class")


class Front:
    """The ASGI app of the CPU container: `local` (a `create_app` app over a `FrontService`) answers every
    request; those it admits on a forwarded path are answered by `forward` (the GPU class) instead."""

    def __init__(self, local: ASGIApp, forward: Forward, service: FrontService) -> None:
        self.local = local
        self.forward = forward
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_forwarded(scope["path"]):
            await self.local(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        request_id = next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-request-id"), "")
        if not request_id:  # the same id here and on the GPU side
            request_id = uuid.uuid4().hex
            headers.append((b"x-request-id", request_id.encode()))
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", request_id.encode())]}
        chunks: list[bytes] = []
        body_done = False

        async def recording_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.request" and not body_done:
                chunks.append(message.get("body", b""))
                body_done = not message.get("more_body", False)
            return message

        refusal: list[Message] = []

        async def hold(message: Message) -> None:
            refusal.append(message)

        admission: list[bool] = []
        token = _ADMISSION.set(admission)
        try:
            await self.local(scope, recording_receive, hold)
        finally:
            _ADMISSION.reset(token)
        if not admission or not body_done:  # refused (or the client left): the local app's answer
            for message in refusal:
                await send(message)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + (f"?{query}" if query else "")
        pieces = self.forward(ForwardedRequest(scope["method"], target, headers, b"".join(chunks)))
        chunks.clear()
        try:
            head = await anext(pieces)
            assert isinstance(head, ForwardedResponse), "a forwarded answer starts with its head"
        except Exception as error:  # the GPU call failed (container lost, timeout): the service's error shape
            head, body = unavailable(request_id, error)
            await send({"type": "http.response.start", "status": head.status, "headers": head.headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.service.gpu_answered()
        await send({"type": "http.response.start", "status": head.status, "headers": head.headers})
        async for piece in pieces:  # a failure now cuts the body short (its content-length tells the client)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def unavailable(request_id: str, error: BaseException) -> tuple[ForwardedResponse, bytes]:
    """503 `gpu_unavailable`, in the shape of every error of the service: its head and body."""
    import orjson

    body = orjson.dumps({"error": {"code": "gpu_unavailable", "request_id": request_id,
                                   "message": f"the GPU container did not answer ({type(error).__name__}); retry"}})
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode()), (b"retry-after", b"5"),
               (b"content-length", str(len(body)).encode())]
    return ForwardedResponse(503, headers), body


async def answer(app: ASGIApp, request: ForwardedRequest) -> AsyncIterator[ForwardedResponse | bytes]:
    """Run a forwarded request through `app` in-process (the GPU side): the response's head, then its body's
    bytes as sent, in pieces of `FORWARD_CHUNK_BYTES`."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sharp-gpu", timeout=None) as client:
        outgoing = client.build_request(request.method, request.target, headers=request.headers,
                                        content=request.body)
        response = await client.send(outgoing, stream=True)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
    yield ForwardedResponse(response.status_code, [*headers, (b"content-length", str(len(body)).encode())])
    view = memoryview(body)
    for start in range(0, len(body), FORWARD_CHUNK_BYTES):
        yield bytes(view[start:start + FORWARD_CHUNK_BYTES])

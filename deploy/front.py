"""The CPU web container of `modal_api.py`: everything but predictions, which go to the GPU class.

    client ── https://<workspace>--sharp-api-fastapi-app.modal.run ──> CPU container (`Front`)
        /predict, /predict/*, /render ─── one Modal call ──> SharpAPI (GPU): the same FastAPI app, in-process
        everything else (page, /health, /, /jobs and their events and results) ──> `create_app` on the CPU

Event streams and polls hold an input slot of the container that serves them for as long as they are
open; served here, watching a job never holds (or starts) a GPU container. A prediction is forwarded as
one `ForwardedRequest` (method, path, headers, the whole body) and answered with one `ForwardedResponse`:
the GPU class answers it with the same `create_app` as `sharp-serve serve`, so its checks, errors and
headers are those of every other deployment. A body over the upload limit is not forwarded: the local app
answers it (413), as it answers a request without the API key.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from app.prediction import ModelInfo

FORWARDED_PATHS = ("/predict", "/render")
"""Paths (and their sub-paths) answered by the GPU class."""
BODY_SLACK_BYTES = 1024 * 1024
"""Room for the multipart envelope around an upload of the largest allowed size."""
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
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


Forward = Callable[[ForwardedRequest], Awaitable[ForwardedResponse]]


def is_forwarded(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in FORWARDED_PATHS)


class Front:
    """The ASGI app of the CPU container: `local` (a `create_app` app) or `forward` (to the GPU class)."""

    def __init__(self, local: ASGIApp, forward: Forward, max_body_bytes: int) -> None:
        self.local = local
        self.forward = forward
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_forwarded(scope["path"]):
            await self.local(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:  # the local app reads it again and answers 413
                await self.local(scope, _replay(chunks, receive), send)
                return
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        request_id = next((v.decode("latin-1") for k, v in headers if k.lower() == b"x-request-id"), "")
        if not request_id:
            request_id = uuid.uuid4().hex
            headers.append((b"x-request-id", request_id.encode()))
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + (f"?{query}" if query else "")
        try:
            response = await self.forward(ForwardedRequest(scope["method"], target, headers, b"".join(chunks)))
        except Exception as error:  # the GPU call failed (container lost, timeout): the service's error shape
            response = unavailable(request_id, error)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [*response.headers, (b"content-length", str(len(response.body)).encode())]})
        await send({"type": "http.response.body", "body": response.body})


def _replay(chunks: list[bytes], receive: Receive) -> Receive:
    """`receive` that first hands back the body already read."""
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": True}
        return await receive()

    return replay


def unavailable(request_id: str, error: BaseException) -> ForwardedResponse:
    """503 `gpu_unavailable`, in the shape of every error of the service."""
    import orjson

    body = orjson.dumps({"error": {"code": "gpu_unavailable", "request_id": request_id,
                                   "message": f"the GPU container did not answer ({type(error).__name__}); retry"}})
    return ForwardedResponse(503, [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode()),
                                   (b"retry-after", b"5")], body)


async def answer(app: ASGIApp, request: ForwardedRequest) -> ForwardedResponse:
    """Run a forwarded request through `app` in-process (the GPU side); the response's bytes as sent."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sharp-gpu", timeout=None) as client:
        outgoing = client.build_request(request.method, request.target, headers=request.headers,
                                        content=request.body)
        response = await client.send(outgoing, stream=True)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
    return ForwardedResponse(response.status_code, headers, body)


class RemoteModel:
    """What the CPU container's service knows of the model: the GPU class's `ModelInfo` (for `/health` and
    `/`). It holds no network: predictions never reach it (`Front` sends them to the GPU class)."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the CPU container forwards predictions to the GPU class; it runs none")

"""ASGI middleware that must see a request before any route does.

- `RequestContextMiddleware`: a request id for every request (an incoming sane `X-Request-ID`, else a
  new one), echoed in the response; one access-log line per request; a JSON 500 for any crash.
- `UploadGuard`: on the API's protected paths, the API key (401) and the upload size (413), checked
  before the body is read: from Content-Length when given, else by counting bytes as they arrive.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import error_response, request_id_of
from app.settings import Settings

LOGGER = logging.getLogger(__name__)
ACCESS_LOGGER = logging.getLogger("app.access")

PROTECTED_PREFIXES = ("/predict", "/jobs", "/render")
"""Paths that need the API key (when one is set) and whose bodies count against the upload limit."""
MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Allowance on top of SHARP_MAX_UPLOAD_MB for the form fields and multipart headers of a request."""

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestContextMiddleware:
    """Request id, access log and the last-resort JSON 500."""

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
            LOGGER.exception("Unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id)
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
    """The API key (401) and the upload size (413) on `PROTECTED_PREFIXES`, before the body is read."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_body_bytes = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES)
        if not guarded or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_key is not None and not _bearer_matches(headers.get("authorization"), self.api_key):
            response = error_response(401, "unauthorized", "Missing or wrong API key: send the header "
                                      "'Authorization: Bearer <key>'.", request_id_of(scope),
                                      headers={"WWW-Authenticate": 'Bearer realm="sharp-serve"'})
            await response(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(413, "upload_too_large", too_large_message(self.max_upload_bytes),
                                 request_id_of(scope))(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException: FastAPI re-raises those from body parsing (others become a 400).
                    raise HTTPException(413, too_large_message(self.max_upload_bytes))
            return message

        await self.app(scope, counting_receive, send)


def too_large_message(limit_bytes: int) -> str:
    return f"The upload is larger than the limit of {limit_bytes / 2**20:.3g} MB (SHARP_MAX_UPLOAD_MB)."


def _bearer_matches(authorization: str | None, key: bytes) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

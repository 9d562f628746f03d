"""ASGI middleware that must see a request before any route does.

- `RequestContextMiddleware`: a request id for every request (an incoming sane `X-Request-ID`, else a
  new one), echoed in the response; one access-log line per request; a JSON 500 for any crash.
- `UploadGuard`: on the API's protected paths, the API key (401) and the upload size (413), checked
  before the body is read: from Content-Length when given, else by counting bytes as they arrive; and a
  body that stalls for `SHARP_UPLOAD_TIMEOUT_S`, or is not complete `SHARP_UPLOAD_DEADLINE_S` after the
  request began (a byte every few seconds), gets 408 (uvicorn itself has no body read timeout).
- `JSONCORSMiddleware`: Starlette's CORS, but a refused preflight gets the JSON error shape (400
  `cors_origin_not_allowed`, `cors_method_not_allowed` or `cors_headers_not_allowed`), not plain text.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
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
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers.setdefault("X-Content-Type-Options", "nosniff")  # never guess a type we did not send
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
    """The API key (401), the upload size (413) and stalled uploads (408) on `PROTECTED_PREFIXES`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.api_key = settings.api_key.get_secret_value().encode() if settings.api_key else None
        self.max_upload_bytes = settings.max_upload_bytes
        self.max_body_bytes = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        self.idle_timeout_s = settings.upload_timeout_s
        self.deadline_s = settings.upload_deadline_s

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
        body_done = False
        deadline = time.monotonic() + self.deadline_s

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, which may rightly take long
                return await receive()
            left_s = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.idle_timeout_s, left_s)))
            except asyncio.TimeoutError:
                # An HTTPException: FastAPI re-raises those from body parsing (others become a 400).
                reason = (f"The upload stalled: no data for {self.idle_timeout_s:g} s (SHARP_UPLOAD_TIMEOUT_S)."
                          if left_s > self.idle_timeout_s else f"The upload took longer than {self.deadline_s:g} s "
                          "(SHARP_UPLOAD_DEADLINE_S).")
                raise HTTPException(408, reason, headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise HTTPException(413, too_large_message(self.max_upload_bytes))
            else:
                body_done = True
            return message

        await self.app(scope, counting_receive, send)


class JSONCORSMiddleware(CORSMiddleware):
    """CORS whose refused preflights are `{"error": {...}}` 400s with a code naming what was refused.

    Allowed preflights and simple requests are Starlette's unchanged; a refusal keeps Starlette's
    `Vary` and `Access-Control-Allow-*` headers (browsers read only those) and gets our body, code and
    request id instead of the plain text "Disallowed CORS origin".
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code != 200:
                    response = self._refusal(headers, response, request_id_of(scope))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _refusal(self, headers: Headers, refused: Response, request_id: str | None) -> Response:
        origin = headers["origin"]
        method = headers["access-control-request-method"]
        kept = {k: v for k, v in refused.headers.items() if k.lower().startswith(("vary", "access-control-"))}
        if not self.is_allowed_origin(origin=origin):
            code, message = "cors_origin_not_allowed", f"CORS: the origin {origin[:200]!r} is not allowed."
        elif method not in self.allow_methods:
            code, message = "cors_method_not_allowed", (f"CORS: the method {method[:50]!r} is not allowed; "
                                                        f"allowed: {', '.join(self.allow_methods)}.")
        else:
            code, message = "cors_headers_not_allowed", ("CORS: a requested header is not allowed; allowed: "
                                                         f"{', '.join(self.allow_headers)}.")
        return error_response(400, code, message, request_id, headers=kept)


def too_large_message(limit_bytes: int) -> str:
    return f"The upload is larger than the limit of {limit_bytes / 2**20:.3g} MB (SHARP_MAX_UPLOAD_MB)."


def _bearer_matches(authorization: str | None, key: bytes) -> bool:
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)

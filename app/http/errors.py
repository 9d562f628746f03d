"""Error responses: every failure, whoever raises it, leaves as `{"error": {"code", "message", "request_id"}}`.

`SharpError` (and its subclasses in imaging, weights, formats and the service) carries its own code and
status; FastAPI's validation errors become 422 `validation_error` (or `missing_file`); Starlette's HTTP
errors (404 route, 405 method) keep their status with a stable code. Unexpected exceptions are turned
into a JSON 500 by `RequestContextMiddleware`, the traceback going only to the log.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from app.errors import SharpError

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_HTTP_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                     408: "upload_timeout", 413: "upload_too_large", 415: "unsupported_media_type",
                     503: "unavailable"}


def error_response(status_code: int, code: str, message: str, request_id: str | None,
                   headers: dict[str, str] | None = None, details: list[dict[str, Any]] | None = None,
                   ) -> JSONResponse:
    """The one shape of every error body."""
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status_code, headers=headers)


def request_id_of(scope_or_request: Scope | Request) -> str | None:
    """The id `RequestContextMiddleware` gave this request."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return scope.get("state", {}).get("request_id")


async def _sharp_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SharpError)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return error_response(exc.status, exc.code, exc.message, request_id_of(request), headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (several routes may share one path, e.g. GET and DELETE)."""
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                   for route in request.app.router.routes)]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(exc.status_code, code, str(exc.detail), request_id_of(request), headers or None)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    message = "; ".join(f"{'.'.join(str(p) for p in d['loc'] if p != 'body')}: {d['msg']}" for d in details)
    missing_file = any(d["loc"][-1:] == ["file"] and d["type"] != "duplicate_field" for d in details)
    code = "missing_file" if missing_file else "validation_error"
    if missing_file:
        message = "Send the image as a multipart form field named 'file'. " + message
    return error_response(422, code, message or "Invalid request.", request_id_of(request), details=details)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SharpError, _sharp_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

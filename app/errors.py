"""The one base class of every error a client or a CLI user can cause or see.

Each `SharpError` carries a stable machine-readable `code`, the HTTP `status` a client should get, a
human-readable message, and, where waiting can help, `retry_after_s`. The HTTP layer renders any of
them as `{"error": {"code", "message", "request_id"}}` with that status; the CLI prints `error: <message>`.
Subclasses live beside the code that raises them (images, weights, the service, formats).
"""

from __future__ import annotations


class SharpError(Exception):
    """An expected failure with a `code` and an HTTP `status` (class defaults, overridable per instance)."""

    code: str = "error"
    status: int = 400
    retryable: bool = False
    """True when the same request may succeed later (a network hiccup, a busy server)."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s


class InvalidRequestError(SharpError):
    """A request parameter outside its documented range (a form field, a CLI option)."""

    code = "validation_error"
    status = 422


class UnknownFormatError(SharpError):
    """An output format we do not have."""

    code = "unknown_format"
    status = 404

"""The one base class of every error a client or a CLI user can cause or see.

Each `SharpError` carries a stable machine-readable `code`, the HTTP `status` a client should get, a
human-readable message, and, where waiting can help, `retry_after_s`. The HTTP layer renders any of
them as `{"error": {"code", "message", "request_id"}}` with that status; the CLI prints `error: <message>`.
Subclasses live beside the code that raises them (images, weights, the service, formats).

An upload that cannot be used (a photo, a clip) fails in one of the ways of `InputError` below, each with
its one HTTP status; each kind of input names its codes (`app.imaging.errors`, `app.video.errors`).
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


class BusyError(SharpError):
    """The server cannot do this now, but may shortly (a full queue or store, a busy volume, a file still
    being made): 503, worth retrying (after `retry_after_s` where it is given)."""

    status = 503
    retryable = True


class InvalidRequestError(SharpError):
    """A request parameter outside its documented range (a form field, a CLI option)."""

    code = "validation_error"
    status = 422


class UnknownFormatError(SharpError):
    """An output format we do not have."""

    code = "unknown_format"
    status = 404


class InputError(SharpError, ValueError):
    """An upload that cannot be turned into what it should be (a photo's pixels, a clip's frames). Each kind
    of input subclasses it once (`ImageError`, `VideoError`: its `code` only), and each of its failures
    subclasses that and one of the failures below (their `status`), naming its own `code`. Also a
    ValueError: the input's value is wrong."""

    code = "invalid_input"
    status = 400


class UnsupportedInputError(InputError):
    """Not a kind of file read here (or an empty one)."""

    status = 415


class CorruptInputError(InputError):
    """Looks like a kind read here, but does not decode (truncated, garbled)."""

    status = 400


class InputTooLargeError(InputError):
    """Over a size limit (pixels, seconds, frames), decided as early as the file allows."""

    status = 413

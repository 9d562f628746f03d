"""Why the service cannot take a request now: 503s, with a retry hint where waiting helps."""

from __future__ import annotations

from app.errors import SharpError


class ServiceUnavailableError(SharpError):
    """The service cannot take this request now; `retry_after_s` is a hint, None if retrying won't help."""

    code = "unavailable"
    status = 503


class ModelLoadingError(ServiceUnavailableError):
    code = "model_loading"
    retryable = True


class ModelFailedError(ServiceUnavailableError):
    code = "model_unavailable"


class QueueFullError(ServiceUnavailableError):
    code = "queue_full"
    retryable = True


class ShuttingDownError(ServiceUnavailableError):
    code = "shutting_down"

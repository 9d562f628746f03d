"""The `CheckpointError` family: why no usable checkpoint could be had.

Every error carries:

- `code`: a stable machine-readable tag (one per class), for logs and error bodies;
- `status`: the HTTP status a service answers while the model cannot load because of it (503);
- `retryable`: whether trying again later, unchanged, may succeed. True for network trouble
  (unreachable host, timeouts, connections cut short, HTTP 408/425/429/5xx, a body cut short);
  False where only a human can fix it (downloads disabled, a missing file, HTTP 404 and other
  4xx, a checksum mismatch, a file that is not a checkpoint or does not fit the model, a full or
  read-only disk). A service should retry loading with backoff, and answer 503 with
  Retry-After, only while `retryable` is True.

`str(error)` is one paragraph (no newlines) that says what went wrong and what to do.
"""

from __future__ import annotations

from app.errors import SharpError


class CheckpointError(SharpError, RuntimeError):
    """Base class of every checkpoint error; see the module docstring for `code`, `status`, `retryable`."""

    code: str = "checkpoint_error"
    status: int = 503
    retryable: bool = False
    """Class default; an instance may override it (see each subclass)."""

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(" ".join(message.split()))
        if retryable is not None:
            self.retryable = retryable


class CheckpointNotAvailableError(CheckpointError):
    """No checkpoint file can be had: nothing cached and downloads disabled or the host unreachable,
    or an explicit path that does not exist.

    Retryable only when the download host was unreachable (network down, DNS, connect timeout).
    """

    code = "checkpoint_unavailable"


class CheckpointDownloadError(CheckpointError):
    """The download failed: HTTP error, network errors after the retries, or an incomplete file.

    Retryable for network trouble (HTTP 408/425/429/5xx, connection errors, timeouts, a body cut
    short); not for other HTTP statuses (404, 403, ...), unwritable or full disks, or a complete
    body that is not a PyTorch checkpoint.
    """

    code = "checkpoint_download_failed"

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        reason: str = "",
        retryable: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message, retryable=retryable or unreachable)
        self.url = url
        self.reason = reason
        """The last failure in a few words, e.g. "HTTP 404 Not Found"."""
        self.unreachable = unreachable
        """True when no attempt got any HTTP response (DNS, refused connection, connect timeout)."""


class ChecksumMismatchError(CheckpointError):
    """A file's SHA-256 differs from the expected one (`SHARP_CHECKPOINT_SHA256`). Not retryable."""

    code = "checksum_mismatch"


class CheckpointFormatError(CheckpointError):
    """The file is not a readable PyTorch state_dict. Not retryable."""

    code = "checkpoint_format"


class CheckpointMismatchError(CheckpointError):
    """The state_dict's keys or shapes do not match the model's. Not retryable."""

    code = "checkpoint_mismatch"

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []
        """(key, shape in the checkpoint, shape the model expects)."""

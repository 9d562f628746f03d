"""Why an input is not a usable image: a machine-readable `code` and the HTTP `status` that fits it."""

from __future__ import annotations

from typing import ClassVar


class ImageError(ValueError):
    """The input could not be turned into an RGB image; `code` is machine-readable, `str(e)` is for people."""

    code: ClassVar[str] = "invalid_image"
    status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedImageError(ImageError):
    """Not an image, or an image format this service does not read."""

    code: ClassVar[str] = "unsupported_image"
    status: ClassVar[int] = 415


class CorruptImageError(ImageError):
    """Looks like a supported image but cannot be decoded (truncated, garbled, zero-sized)."""

    code: ClassVar[str] = "corrupt_image"
    status: ClassVar[int] = 400


class ImageTooLargeError(ImageError):
    """More pixels than allowed, or a side longer than `MAX_SIDE_PX`; decided before decoding."""

    code: ClassVar[str] = "image_too_large"
    status: ClassVar[int] = 413

"""Why an input is not a usable image: a machine-readable `code` and the HTTP `status` that fits it."""

from __future__ import annotations

from app.errors import SharpError


class ImageError(SharpError, ValueError):
    """The input could not be turned into an RGB image; `code` is machine-readable, `str(e)` is for people."""

    code = "invalid_image"
    status = 400


class UnsupportedImageError(ImageError):
    """Not an image, or an image format this service does not read."""

    code = "unsupported_image"
    status = 415


class CorruptImageError(ImageError):
    """Looks like a supported image but cannot be decoded (truncated, garbled, zero-sized)."""

    code = "corrupt_image"
    status = 400


class ImageTooLargeError(ImageError):
    """More pixels than allowed, or a side longer than `MAX_SIDE_PX`; decided before decoding."""

    code = "image_too_large"
    status = 413

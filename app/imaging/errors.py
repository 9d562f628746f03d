"""Why an input is not a usable image: a machine-readable `code`; the HTTP `status` comes from the kind of
failure (`app.errors.InputError` and its subclasses, shared with clips)."""

from __future__ import annotations

from app.errors import CorruptInputError, InputError, InputTooLargeError, UnsupportedInputError


class ImageError(InputError):
    """The input could not be turned into an RGB image; `code` is machine-readable, `str(e)` is for people."""

    code = "invalid_image"


class UnsupportedImageError(ImageError, UnsupportedInputError):
    """Not an image, or an image format this service does not read."""

    code = "unsupported_image"


class CorruptImageError(ImageError, CorruptInputError):
    """Looks like a supported image but cannot be decoded (truncated, garbled, zero-sized)."""

    code = "corrupt_image"


class ImageTooLargeError(ImageError, InputTooLargeError):
    """More pixels than allowed, or a side longer than `MAX_SIDE_PX`; decided before decoding."""

    code = "image_too_large"

"""Why an input is not a usable video: a machine-readable `code`; the HTTP `status` comes from the kind of
failure (`app.errors.InputError` and its subclasses, shared with photos), but for a bad selection (422)."""

from __future__ import annotations

from app.errors import CorruptInputError, InputError, InputTooLargeError, UnsupportedInputError


class VideoError(InputError):
    """The input could not be turned into frames; `code` is machine-readable, `str(e)` is for people."""

    code = "invalid_video"


class UnsupportedVideoError(VideoError, UnsupportedInputError):
    """Not a video container FFmpeg reads, or a container without a video stream."""

    code = "unsupported_video"


class CorruptVideoError(VideoError, CorruptInputError):
    """A video container whose frames do not decode (truncated, garbled), or that holds no frame at all."""

    code = "corrupt_video"


class VideoTooLargeError(VideoError, InputTooLargeError):
    """Longer, with more frames, or with larger frames than the settings allow."""

    code = "video_too_large"


class VideoSelectionError(VideoError):
    """Sampling options (`fps`, `start`, `end`, `max_frames`) out of range, or selecting no frame of the clip."""

    code = "invalid_video_selection"
    status = 422

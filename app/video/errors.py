"""Why an input is not a usable video: a machine-readable `code` and the HTTP `status` that fits it."""

from __future__ import annotations

from app.errors import SharpError


class VideoError(SharpError, ValueError):
    """The input could not be turned into frames; `code` is machine-readable, `str(e)` is for people."""

    code = "invalid_video"
    status = 400


class UnsupportedVideoError(VideoError):
    """Not a video container FFmpeg reads, or a container without a video stream."""

    code = "unsupported_video"
    status = 415


class CorruptVideoError(VideoError):
    """A video container whose frames do not decode (truncated, garbled), or that holds no frame at all."""

    code = "corrupt_video"
    status = 400


class VideoTooLargeError(VideoError):
    """Longer, with more frames, or with larger frames than the settings allow."""

    code = "video_too_large"
    status = 413


class VideoSelectionError(VideoError):
    """Sampling options (`fps`, `start`, `end`, `max_frames`) out of range, or selecting no frame of the clip."""

    code = "invalid_video_selection"
    status = 422

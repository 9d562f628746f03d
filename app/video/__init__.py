"""Video input: a clip (bytes or a file) in, a stream of upright RGB frames out (`read_frames`), each one a
`LoadedImage` for the pipeline (`VideoFrame.as_image`). No torch here.

* `app.video.decode`: opening with PyAV, the sampling options (`Sampling`), the limits (`VideoLimits`),
  rotation, and the errors it raises;
* `app.video.detect`: telling a clip from a photo by its first bytes or its file name;
* `app.video.errors`: `VideoError` and its subclasses, each with a `code` and an HTTP `status`.
"""

from app.video.decode import (
    MAX_SAMPLING_FPS,
    MAX_SAMPLING_FRAMES,
    MAX_TIME_S,
    Sampling,
    VideoFrame,
    VideoInfo,
    VideoLimits,
    probe_video,
    read_frames,
)
from app.video.detect import HEAD_BYTES, VIDEO_EXTENSIONS, is_video_path, looks_like_video
from app.video.errors import (
    CorruptVideoError,
    UnsupportedVideoError,
    VideoError,
    VideoSelectionError,
    VideoTooLargeError,
)

__all__ = [
    "HEAD_BYTES",
    "MAX_SAMPLING_FPS",
    "MAX_SAMPLING_FRAMES",
    "MAX_TIME_S",
    "VIDEO_EXTENSIONS",
    "CorruptVideoError",
    "Sampling",
    "UnsupportedVideoError",
    "VideoError",
    "VideoFrame",
    "VideoInfo",
    "VideoLimits",
    "VideoSelectionError",
    "VideoTooLargeError",
    "is_video_path",
    "looks_like_video",
    "probe_video",
    "read_frames",
]

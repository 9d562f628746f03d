"""Decoding a clip: bytes or a file in, a stream of upright RGB frames out, never all of them at once.

* Containers and codecs: whatever FFmpeg (through PyAV) opens and decodes: MP4, MOV, WebM, MKV, AVI, 3GP,
  with H.264, HEVC, VP8/9, AV1 where the FFmpeg build has the decoder. The first video stream is read;
  audio and other streams are ignored.
* Orientation: the display matrix of the stream (a phone's portrait clip is stored landscape with a 90°
  rotation; a front camera's or an editor's flip mirrors it) is applied to each frame, as EXIF orientation
  is to a photo: the matrix (the frame's `DISPLAYMATRIX` side data) is turned into the EXIF orientation
  that does the same (`display_orientation`: a quarter turn, and a mirror when its determinant is
  negative; 2, 4, 5 and 7 are the mirrored ones) and the photos' own transform is applied
  (`app.imaging.apply_orientation`). Angles between quarter turns are rounded to the nearest.
* Sampling (`Sampling`): times are seconds from the stream's first frame. Frames at `start` <= t < `end`
  are taken; with `fps`, the first frame at or after each of start, start + 1/fps, start + 2/fps, ...
  (never the same frame twice, so a clip slower than `fps` gives each of its frames once); at most
  `max_frames`. Decoding seeks to the keyframe before `start`, then reads forward.
* Limits (`VideoLimits`, from the `SHARP_VIDEO_*` settings): the selected span's length, the number of
  frames taken and the pixels of a frame; a clip over a limit is refused before any frame is decoded
  when its header says so, else as soon as decoding passes the limit. A clip's header does not bind its
  frames (an MJPEG frame carries its own size): FFmpeg is given the pixel limit (its `max_pixels`, checked
  before it allocates a frame), and each decoded frame is checked again before it is converted to RGB.
* A size that changes mid-clip: a later frame of the first frame's aspect ratio (within 2 %) is scaled to
  the first frame's size, so that every frame of a clip, and every scene, has one size; a frame of another
  shape is refused at that frame (`CorruptVideoError`; the frames before it were taken).
* Failures raise `VideoError` subclasses (`app.video.errors`), never a raw PyAV error.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from app.imaging import DEFAULT_FOCAL_LENGTH_MM, LoadedImage, apply_orientation, focal_length_to_px
from app.settings import Settings
from app.video.detect import HEAD_BYTES, looks_like_video
from app.video.errors import CorruptVideoError, UnsupportedVideoError, VideoSelectionError, VideoTooLargeError

MAX_SAMPLING_FPS = 240.0
"""The highest `fps` a caller may ask for (no phone records faster)."""
MAX_TIME_S = 7 * 24 * 3600.0
"""The latest `start` or `end` a caller may ask for, in seconds (a week: longer than any recording)."""
MAX_SAMPLING_FRAMES = 1_000_000
"""The largest `max_frames` a caller may ask for (the limit, `SHARP_VIDEO_MAX_FRAMES`, caps what is taken)."""
_ASPECT_SLACK = 0.02
"""How far (relative) a later frame's aspect ratio may differ from the first's and still be scaled to its size."""
_STILL_DEMUXERS = frozenset({"image2", "gif", "apng", "webp", "tiff", "bmp"})
"""FFmpeg demuxers of still images (besides the `*_pipe` ones): photos, which `app.imaging` reads, not clips."""
_EPS_S = 1e-6
"""Slack in seconds when comparing frame times (timestamps are rationals rounded to floats)."""
_ORIENTATION_OF_TURN = {(0, False): 1, (1, False): 8, (2, False): 3, (3, False): 6,
                        (0, True): 2, (1, True): 7, (2, True): 4, (3, True): 5}
"""(quarter turns counter-clockwise, then mirrored left-right) -> the EXIF orientation that displays the
same picture (`app.imaging.apply_orientation`'s numbers)."""


@dataclass(frozen=True)
class Sampling:
    """Which frames of a clip to take (module docstring). `fps`: frames per second, None for every frame;
    `start`, `end`: seconds (end None: the clip's end); `max_frames`: None for no cap but the limit's."""

    fps: float | None = None
    start: float = 0.0
    end: float | None = None
    max_frames: int | None = None

    def checked(self) -> Sampling:
        """This sampling, if every field is in range; else `VideoSelectionError`."""
        if self.fps is not None and not (math.isfinite(self.fps) and 0 < self.fps <= MAX_SAMPLING_FPS):
            raise VideoSelectionError(f"fps must be a number above 0 and at most {MAX_SAMPLING_FPS:g}, got {self.fps}.")
        if not (math.isfinite(self.start) and 0 <= self.start <= MAX_TIME_S):
            raise VideoSelectionError(f"start must be a number of seconds from 0 to {MAX_TIME_S:g}, got {self.start}.")
        if self.end is not None and not (math.isfinite(self.end) and self.start < self.end <= MAX_TIME_S):
            raise VideoSelectionError(f"end must be a number of seconds after start ({self.start:g}) and at most "
                                      f"{MAX_TIME_S:g}, got {self.end}.")
        if self.max_frames is not None and (isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int)
                                            or not 1 <= self.max_frames <= MAX_SAMPLING_FRAMES):
            raise VideoSelectionError(f"max_frames must be a whole number from 1 to {MAX_SAMPLING_FRAMES:,}, got "
                                      f"{self.max_frames}.")
        return self


@dataclass(frozen=True)
class VideoLimits:
    """The largest clip accepted: seconds of the selected span, frames taken, pixels of one frame."""

    max_duration_s: float
    max_frames: int
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> VideoLimits:
        """`SHARP_VIDEO_MAX_DURATION_S`, `SHARP_VIDEO_MAX_FRAMES`, `SHARP_VIDEO_MAX_PIXELS`."""
        return cls(max_duration_s=settings.video_max_duration_s, max_frames=settings.video_max_frames,
                   max_pixels=settings.video_max_pixels)


@dataclass(frozen=True)
class VideoInfo:
    """What a clip's header says. `width`, `height`: as stored, in pixels (before the rotation, which the
    frames carry); `duration_s`, `frame_rate`: None when the container does not say; `frames`: about how many
    frames the sampling takes (from the span and the rates), None when the header cannot tell."""

    width: int
    height: int
    duration_s: float | None
    frame_rate: float | None
    codec: str
    container: str
    frames: int | None = None


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """One sampled frame: `index` (0, 1, ... in the order taken), `time_s` (seconds from the clip's first
    frame) and `rgb`, (H, W, 3) uint8, upright and C-contiguous."""

    index: int
    time_s: float
    rgb: np.ndarray

    def as_image(self, f_px: float | None = None) -> LoadedImage:
        """The frame as a decoded photo named `000000`, `000001`, ...: with `f_px` (the request's), else the
        30 mm-equivalent default for its size (a clip has no EXIF), as for a photo without one."""
        height, width = self.rgb.shape[:2]
        default = focal_length_to_px(DEFAULT_FOCAL_LENGTH_MM, width, height)
        return LoadedImage(rgb=self.rgb, f_px=default if f_px is None else f_px,
                           f_px_source="default" if f_px is None else "request",
                           focal_length_35mm=DEFAULT_FOCAL_LENGTH_MM, name=f"{self.index:06d}", format="video")


def probe_video(source: bytes | Path, sampling: Sampling, limits: VideoLimits) -> VideoInfo:
    """Check `source` is a video within `limits` whose selection can hold a frame, from its header alone.
    The errors are `read_frames`'; a clip damaged past its header passes here and fails there."""
    with _open(source) as container:
        return _check_header(container, sampling.checked(), limits)


def read_frames(source: bytes | Path, sampling: Sampling, limits: VideoLimits, *, first: int = 0
                ) -> Iterator[VideoFrame]:
    """The frames `sampling` selects, decoded one at a time (module docstring for the rules); from index
    `first` on (the frames before it are selected and counted, not converted to RGB: a chunk of a clip,
    `app.sequence.fanout`).

    Raises (while iterating):
        UnsupportedVideoError: not a video, or no video stream.
        CorruptVideoError: frames that do not decode, or no frame at all.
        VideoTooLargeError: over a limit.
        VideoSelectionError: bad sampling options, or a selection holding no frame.
    """
    sampling = sampling.checked()
    with _open(source) as container:
        info = _check_header(container, sampling, limits)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # FFmpeg's own bound, checked before it allocates a frame: a frame larger than the header's (an MJPEG
        # clip's frames each carry their size) fails to decode instead of taking gigabytes.
        stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(limits.max_pixels)}
        offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if sampling.start > 0:
            _seek(container, stream, offset + sampling.start)
        wanted = min(sampling.max_frames or limits.max_frames, limits.max_frames)
        taken, decoded, next_time = 0, 0, sampling.start
        frames = _decoded(container, stream, limits)
        orientation: int | None = None
        first_size: tuple[int, int] | None = None  # the first decoded frame's (width, height), as stored
        for frame in frames:
            decoded += 1
            time_s = (frame.time - offset) if frame.time is not None else (decoded - 1) / (info.frame_rate or 1.0)
            if time_s < sampling.start - _EPS_S or time_s < next_time - _EPS_S:
                continue
            if sampling.end is not None and time_s >= sampling.end - _EPS_S:
                break
            if time_s - sampling.start > limits.max_duration_s:
                raise VideoTooLargeError(f"The selected part of the clip is longer than {limits.max_duration_s:g} s "
                                         "(SHARP_VIDEO_MAX_DURATION_S); choose a shorter start-end range.")
            if taken == wanted:
                if sampling.max_frames is not None and sampling.max_frames <= limits.max_frames:
                    break
                raise VideoTooLargeError(f"The selection holds more than {limits.max_frames} frames "
                                         "(SHARP_VIDEO_MAX_FRAMES); lower fps, set max_frames or shorten it.")
            first_size = _checked_size(frame, first_size, limits, decoded)
            if orientation is None:  # the stream's, which FFmpeg attaches to every frame: read once (see _upright)
                orientation = display_orientation(_display_matrix(frame))
            if taken >= first:
                yield VideoFrame(index=taken, time_s=max(0.0, time_s), rgb=_upright(frame, orientation, first_size))
            taken += 1
            if sampling.fps is not None:
                next_time = sampling.start + (math.floor((time_s - sampling.start) * sampling.fps + _EPS_S) + 1) \
                    / sampling.fps
        if taken == 0:
            if decoded == 0 and sampling.start == 0:
                raise CorruptVideoError("The clip holds no frame that decodes (empty or truncated).")
            raise VideoSelectionError(f"No frame of the clip lies between start={sampling.start:g} s and "
                                      f"end={'the end' if sampling.end is None else f'{sampling.end:g} s'}.")


def _open(source: bytes | Path) -> Any:
    if isinstance(source, (bytes, bytearray, memoryview)):
        target: Any = io.BytesIO(bytes(source))
        head = bytes(source[:HEAD_BYTES])
    else:
        target = str(source)
        with Path(source).open("rb") as file:
            head = file.read(HEAD_BYTES)
    if not head:
        raise UnsupportedVideoError("The file is empty (0 bytes); expected a video.")
    try:
        return av.open(target, mode="r")
    except MemoryError:
        raise
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as error:
        if looks_like_video(head):
            raise CorruptVideoError(f"The data starts like a video but could not be read; it is truncated or "
                                    f"corrupt ({_reason(error)}).") from error
        raise UnsupportedVideoError(f"The data is not a video FFmpeg reads ({_reason(error)}).") from error


def _check_header(container: Any, sampling: Sampling, limits: VideoLimits) -> VideoInfo:
    if container.format.name.endswith("_pipe") or container.format.name in _STILL_DEMUXERS:
        raise UnsupportedVideoError(f"The data is a still image ({container.format.name}), not a video.")
    if not container.streams.video:
        raise UnsupportedVideoError(f"The {container.format.name} file has no video stream.")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg knows no decoder of the stream's codec
        raise UnsupportedVideoError(f"The {container.format.name} file's video codec is unknown to this server's "
                                    "FFmpeg; re-encode the clip as H.264 (MP4).")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0:
        raise CorruptVideoError(f"The video stream has an invalid frame size of {width}x{height} pixels.")
    if width * height > limits.max_pixels:
        raise VideoTooLargeError(f"The clip's frames are {width}x{height} = {width * height:,} pixels, more than "
                                 f"the limit of {limits.max_pixels:,} (SHARP_VIDEO_MAX_PIXELS).")
    rate = float(stream.average_rate or stream.guessed_rate or 0) or None
    duration = _duration_s(container, stream)
    if duration is not None and duration <= 0:
        raise CorruptVideoError("The clip is zero seconds long; it holds no frame.")
    if duration is not None and sampling.start >= duration:
        raise VideoSelectionError(f"start={sampling.start:g} s is past the clip's end ({duration:.3g} s).")
    estimate: int | None = None
    span = (min(sampling.end, duration) if sampling.end is not None and duration is not None
            else sampling.end if sampling.end is not None else duration)
    if span is not None:
        span -= sampling.start
        if span > limits.max_duration_s + _EPS_S:
            raise VideoTooLargeError(f"The selected part of the clip is {span:.3g} s long, more than "
                                     f"{limits.max_duration_s:g} s (SHARP_VIDEO_MAX_DURATION_S); choose a shorter "
                                     "start-end range.")
        per_second = sampling.fps if sampling.fps is not None and rate is None else \
            min(sampling.fps or math.inf, rate or math.inf)
        if math.isfinite(per_second):
            estimate = math.ceil(span * per_second - 1e-3)
            if sampling.max_frames is not None:
                estimate = min(estimate, sampling.max_frames)
            if estimate > limits.max_frames:
                raise VideoTooLargeError(f"The selection holds about {estimate} frames, more than {limits.max_frames} "
                                         "(SHARP_VIDEO_MAX_FRAMES); lower fps, set max_frames or shorten it.")
    return VideoInfo(width=width, height=height, duration_s=duration, frame_rate=rate,
                     codec=stream.codec_context.name, container=container.format.name, frames=estimate)


def _duration_s(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _seek(container: Any, stream: Any, time_s: float) -> None:
    try:
        container.seek(int(time_s / stream.time_base), stream=stream, backward=True, any_frame=False)
    except (OverflowError, ZeroDivisionError) as error:  # a time past what the stream's time base can say
        raise VideoSelectionError(f"start={time_s:g} s lies past what the clip can hold.") from error
    except av.FFmpegError as error:
        raise CorruptVideoError(f"The clip could not be searched to {time_s:g} s ({_reason(error)}).") from error


def _decoded(container: Any, stream: Any, limits: VideoLimits) -> Iterator[Any]:
    """The stream's frames in order; a decoding failure is a `CorruptVideoError`, but FFmpeg's refusal of a
    frame over `max_pixels` (EINVAL; FFmpeg does not say more) a `VideoTooLargeError`."""
    frames = container.decode(stream)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except MemoryError:
            raise
        except av.ArgumentError as error:
            raise VideoTooLargeError(f"A frame of the clip could not be decoded within the limit of "
                                     f"{limits.max_pixels:,} pixels (SHARP_VIDEO_MAX_PIXELS): it is larger than the "
                                     f"clip's header says, or corrupt ({_reason(error)}).") from error
        except (av.FFmpegError, ValueError) as error:
            raise CorruptVideoError(f"The clip could not be decoded; it is truncated or corrupt "
                                    f"({_reason(error)}).") from error
        yield frame


def display_orientation(matrix: Sequence[int] | None) -> int:
    """The EXIF orientation (1-8) that shows a frame as its display matrix does.

    `matrix`: FFmpeg's 3x3 display matrix, row-major, as 9 int32 (16.16 fixed point, the last column 2.30);
    a point (x, y) of the stored frame (x right, y down) is shown at (x, y) @ [[m0, m1], [m3, m4]]. None
    (no matrix), or one that maps the frame to a line or a point: 1. A negative determinant is a mirror:
    the matrix is then a counter-clockwise turn followed by a left-right flip (FFmpeg's
    `av_display_matrix_flip`, PyAV's `set_display_rotation(degrees, hflip=True)`; a top-bottom flip is
    the same as a half turn and a left-right flip). The turn is rounded to quarter turns.
    """
    if matrix is None:
        return 1
    a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
    determinant = a * d - b * c
    if not math.isfinite(determinant) or determinant == 0:
        return 1
    mirrored = determinant < 0
    if mirrored:  # undo the flip (it negates the first column) to leave the turn
        a, c = -a, -c
    counter_clockwise_deg = -math.degrees(math.atan2(b, a))
    return _ORIENTATION_OF_TURN[(round(counter_clockwise_deg / 90.0) % 4, mirrored)]


def _display_matrix(frame: Any) -> tuple[int, ...] | None:
    """The frame's display matrix (9 int32), or None when it has none."""
    side_data = frame.side_data.get("DISPLAYMATRIX")
    if side_data is None:
        return None
    values = np.frombuffer(bytes(side_data), dtype=np.int32)
    return tuple(int(value) for value in values) if values.size == 9 else None


def _checked_size(frame: Any, first_size: tuple[int, int] | None, limits: VideoLimits, position: int
                  ) -> tuple[int, int]:
    """The first frame's (width, height), stored: `frame`'s own if it is the first. A decoded frame is checked
    before it is converted: within `limits.max_pixels`, and, after the first, of the first's aspect ratio (it is
    then scaled to the first's size by `_upright`); else `VideoTooLargeError`, `CorruptVideoError`. `position`:
    the frame's place in the stream (1 for its first decoded frame)."""
    width, height = frame.width, frame.height
    if width <= 0 or height <= 0 or width * height > limits.max_pixels:
        raise VideoTooLargeError(f"Frame {position} (counting from 1) of the clip is {width}x{height} pixels, more "
                                 f"than the limit of {limits.max_pixels:,} (SHARP_VIDEO_MAX_PIXELS) or empty.")
    if first_size is None:
        return width, height
    if (width, height) != first_size and \
            abs(width * first_size[1] / (height * first_size[0]) - 1.0) > _ASPECT_SLACK:
        raise CorruptVideoError(f"Frame {position} (counting from 1) of the clip is {width}x{height} pixels, another "
                                f"shape than the first frame's {first_size[0]}x{first_size[1]}; a clip's frames must "
                                "keep one shape (a change of size alone is scaled to the first frame's).")
    return first_size


def _upright(frame: Any, orientation: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB, C-contiguous, shown as EXIF `orientation` says (`display_orientation`), from
    `frame` scaled to `size` (width, height, as stored) if it is another size (a clip whose size changes).

    The orientation is read from the first frame only: PyAV's side data of a frame and the frame refer to
    each other, so reading it from every frame would keep each decoded frame (3 MB at 1080p) until the
    garbage collector's next full pass, and memory would grow with the clip's length."""
    if (frame.width, frame.height) != size:
        frame = frame.reformat(width=size[0], height=size[1], interpolation="AREA")
    rgb = frame.to_ndarray(format="rgb24")
    return rgb if orientation == 1 else np.ascontiguousarray(apply_orientation(rgb, orientation))


def _reason(error: BaseException) -> str:
    return str(getattr(error, "strerror", None) or error).strip() or type(error).__name__

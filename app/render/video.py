"""Encode rendered frames: PNG / JPEG stills (Pillow), MP4 videos (H.264 via PyAV), GIF loops, depth maps.

Videos are encoded as the frames arrive (`iter_mp4_chunks`, `iter_gif_chunks` take an iterator and yield the
file in pieces), so memory does not grow with the number of frames.

MP4: H.264 (libx264, CRF 20, preset "medium") in yuv420p, the pixel format every browser plays; yuv420p needs
even width and height, so odd sizes are refused (``bad_size``). ``+faststart`` puts the index first so that a
browser can start playing before the download ends.

Depth maps (`depth_to_gray`): near = bright. The inverse depth 1/z of the covered pixels (alpha >= 0.5) is
mapped linearly from its 2nd percentile (black, 16) to its 98th percentile (white, 255), clipped; pixels
with alpha < 0.5 (nothing there) are black (0). Inverse depth spreads near and far content more evenly
than depth, as for monocular depth maps.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.render.errors import RenderError

VIDEO_FORMATS = ("mp4", "gif")
IMAGE_FORMATS = ("png", "jpg", "jpeg")
DEFAULT_FPS = 30


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 92) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG or JPEG bytes (JPEG `quality` 1-95, 4:2:0)."""
    fmt = fmt.lower()
    if fmt not in IMAGE_FORMATS:
        raise RenderError("unsupported_format", f"unknown image format {fmt!r}; choose png or jpg")
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "png":
        image.save(buffer, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_mp4(frames: Iterable[np.ndarray], fps: int = DEFAULT_FPS, crf: int = 20) -> bytes:
    """H.264 / yuv420p MP4 bytes of (H, W, 3) uint8 RGB frames (all the same, even size); see `iter_mp4_chunks`."""
    return b"".join(iter_mp4_chunks(frames, fps, crf))


def iter_mp4_chunks(frames: Iterable[np.ndarray], fps: int = DEFAULT_FPS, crf: int = 20,
                    chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The MP4 file in pieces of `chunk_bytes`, for writing to a file or a response without holding it whole.

    Frames are taken from the iterator one at a time and handed to the encoder (which keeps a few dozen for its
    look-ahead, whatever their number); the file is built in a temporary folder, since ``+faststart`` rewrites
    it to put the index first, then read back a piece at a time.

    Raises:
        RenderError: ``bad_size`` for an odd width or height, ``bad_frames`` for no frames (before the first
            piece).
    """
    import av

    with tempfile.TemporaryDirectory(prefix="render-mp4-") as folder:
        path = Path(folder) / "video.mp4"
        _write_mp4(frames, str(path), fps, crf, av)
        with path.open("rb") as stream:
            while chunk := stream.read(chunk_bytes):
                yield chunk


def _write_mp4(frames: Iterable[np.ndarray], path: str, fps: int, crf: int, av: Any) -> None:
    with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = None
        for frame in frames:
            frame = _check_frame(frame)
            height, width = frame.shape[:2]
            if stream is None:
                if width % 2 or height % 2:
                    raise RenderError("bad_size", f"H.264 in yuv420p needs an even width and height, got "
                                                  f"{width}x{height}")
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": str(crf), "preset": "medium"}
            elif (height, width) != (stream.height, stream.width):
                raise ValueError("all frames must have the same size")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is None:
            raise RenderError("bad_frames", "no frames to encode")
        container.mux(stream.encode(None))


def encode_gif(frames: Iterable[np.ndarray], fps: int = 15) -> bytes:
    """A looping GIF of (H, W, 3) uint8 frames; see `iter_gif_chunks`."""
    return b"".join(iter_gif_chunks(frames, fps))


def iter_gif_chunks(frames: Iterable[np.ndarray], fps: int = 15) -> Iterator[bytes]:
    """A looping GIF written a frame at a time: the header, then each frame as soon as it arrives.

    Each frame gets its own 256-colour palette (Pillow's adaptive quantiser, as ``Image.save`` uses) as a local
    colour table, and a delay of 1/`fps` s; every frame is written, identical ones too. Memory is one frame,
    whatever the number of frames (Pillow's ``save_all`` holds them all).

    Raises:
        RenderError: ``bad_frames`` for no frames.
    """
    from PIL import GifImagePlugin

    duration = round(1000 / fps)
    size: tuple[int, int] | None = None
    for frame in frames:
        image = Image.fromarray(_check_frame(frame)).convert("P", palette=Image.Palette.ADAPTIVE)
        if size is None:
            size = image.size
            header, _ = GifImagePlugin.getheader(image, info={"loop": 0, "duration": duration})
            yield b"".join(header)
        elif image.size != size:
            raise ValueError("all frames must have the same size")
        yield b"".join(GifImagePlugin.getdata(image, duration=duration, include_color_table=True))
    if size is None:
        raise RenderError("bad_frames", "no frames to encode")
    yield b";"


def depth_to_gray(depth: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(H, W) depth (metres) and alpha -> (H, W) uint8, near = bright (see the module docstring)."""
    depth = np.asarray(depth, dtype=np.float64)
    covered = (np.asarray(alpha) >= 0.5) & (depth > 0) & np.isfinite(depth)
    out = np.zeros(depth.shape, dtype=np.uint8)
    if not covered.any():
        return out
    inverse = 1.0 / depth[covered]
    low, high = np.percentile(inverse, [2, 98])
    scaled = (inverse - low) / max(high - low, 1e-12)
    out[covered] = np.round(16 + 239 * np.clip(scaled, 0, 1)).astype(np.uint8)
    return out

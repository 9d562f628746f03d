"""One call from a scene to encoded bytes: a still image or a video (what the CLI, HTTP layer and jobs use).

    scene = load_scene(ply_bytes, name="scene.ply")
    png = render_still(scene, size=(512, 512))                    # bytes
    mp4 = render_video(scene, path="orbit", frames=60, size=512)  # bytes

Sizes: ``(width, height)``; an int N is the longer side with the scene's aspect ratio (both sides rounded to
even); None is the scene's own size, scaled down to at most `DEFAULT_LONGEST_SIDE` on its longer side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from app.gaussians import GaussianScene
from app.render.camera import PathName, camera_path, check_size, input_camera, scaled_size
from app.render.errors import RenderError
from app.render.projection import GaussianTensors
from app.render.renderer import check_background, prepare_scene, render, render_frames, to_uint8
from app.render.scene_io import with_camera
from app.render.video import DEFAULT_FPS, IMAGE_FORMATS, depth_to_gray, encode_image, iter_gif_chunks, iter_mp4_chunks

DEFAULT_LONGEST_SIDE = 1024
"""Without a size, outputs keep the scene's image size, scaled down to at most this on the longer side."""
MAX_FPS = 120
MAX_VIDEO_PIXELS = 400_000_000
"""Most pixels an MP4 may take to render, width x height x frames: 600 frames at 816x816, 508 at 1024x768, 192 at
1920x1080 (minutes of CPU time for a large scene)."""
MAX_GIF_PIXELS = 50_000_000
"""Most pixels a GIF may take, width x height x frames: 600 frames at 288x288, 63 at 1024x768 (a GIF is
palette-quantised frame by frame and stores about a byte a pixel: 50 Mpx is a 20-50 MB file)."""

Size = tuple[int, int] | int | None


def output_size(scene: GaussianScene, size: Size, even: bool = False) -> tuple[int, int]:
    """The (width, height) in pixels that `size` asks for (module docstring); ``bad_size`` if out of range, or odd
    when `even` (H.264 in yuv420p)."""
    if isinstance(size, tuple):
        result = (size[0], size[1])
    else:
        longest = size if size is not None else min(DEFAULT_LONGEST_SIDE, max(scene.image_width, scene.image_height))
        if isinstance(longest, bool) or not isinstance(longest, int) or longest < 1:
            raise RenderError("bad_size", f"size must be (width, height) or a positive int, got {size!r}")
        result = scaled_size(scene.image_width, scene.image_height, longest)
    check_size(*result)
    if even and (result[0] % 2 or result[1] % 2):
        raise RenderError("bad_size", f"videos need an even width and height, got {result[0]}x{result[1]}")
    return result


def _prepared(scene: GaussianScene, f_px: float | None, size: tuple[int, int],
              device: str | torch.device) -> tuple[GaussianScene, GaussianTensors]:
    if f_px is not None:
        scene = with_camera(scene, f_px=f_px, size=size)
    return scene, prepare_scene(scene, device)


def render_still(scene: GaussianScene, *, size: Size = None, fmt: str = "png", depth: bool = False,
                 background: Iterable[float] = (0.0, 0.0, 0.0), f_px: float | None = None,
                 device: str | torch.device = "cpu") -> bytes:
    """The input view as PNG or JPEG bytes: the colour image, or with `depth` the depth map (near = bright).

    Args:
        scene: the scene, with a camera (`app.render.scene_io.load_scene` completes it).
        size: see the module docstring.
        fmt: ``png``, ``jpg`` or ``jpeg``.
        depth: write the depth map instead of the colour.
        background: RGB in [0, 1].
        f_px: focal length in pixels of the output image (None: the scene's, scaled).
        device: ``cpu``, ``cuda``, ``mps`` or ``auto``.
    """
    if fmt.lower() not in IMAGE_FORMATS:
        raise RenderError("unsupported_format", f"unknown image format {fmt!r}; choose png or jpg")
    background = check_background(background)
    width_height = output_size(scene, size)
    scene, gaussians = _prepared(scene, f_px, width_height, device)
    frame = render(gaussians, input_camera(scene, width_height), background=background)
    if depth:
        return encode_image(depth_to_gray(frame.depth.cpu().numpy(), frame.alpha.cpu().numpy()), fmt)
    return encode_image(to_uint8(frame.color), fmt)


def render_video(scene: GaussianScene, *, path: PathName | str = "orbit", frames: int = 60, size: Size = None,
                 fps: int = DEFAULT_FPS, fmt: str = "mp4", background: Iterable[float] = (0.0, 0.0, 0.0),
                 f_px: float | None = None, device: str | torch.device = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> bytes:
    """A looping camera path that starts at the input view, as MP4 (H.264, yuv420p) or GIF bytes.

    Args:
        scene: the scene, with a camera.
        path: ``orbit``, ``swipe``, ``dolly`` or ``zoom`` (`app.render.camera`).
        frames: 1 to 600, and width x height x frames at most `MAX_VIDEO_PIXELS` (GIF: `MAX_GIF_PIXELS`).
        size: see the module docstring; MP4 needs even sides.
        fps: 1 to MAX_FPS.
        fmt: ``mp4`` or ``gif``.
        background, f_px, device: as for `render_still`.
        progress: called as ``progress(frames_done, frames)`` after each frame; an exception it raises (a
            cancel) stops the render there.
    """
    return b"".join(video_chunks(scene, path=path, frames=frames, size=size, fps=fps, fmt=fmt,
                                 background=background, f_px=f_px, device=device, progress=progress))


def video_chunks(scene: GaussianScene, *, path: PathName | str = "orbit", frames: int = 60, size: Size = None,
                 fps: int = DEFAULT_FPS, fmt: str = "mp4", background: Iterable[float] = (0.0, 0.0, 0.0),
                 f_px: float | None = None, device: str | torch.device = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
    """`render_video`'s file in pieces, each frame rendered as the encoder asks for it: memory does not grow with
    the number of frames. Every option is checked here, before any rendering; the rendering runs as the pieces
    are read.

    Args:
        progress: called as ``progress(frames_done, frames)`` after each frame (on the reading thread).

    Raises:
        RenderError: as `render_video`; ``too_large`` when width x height x frames is over the limit.
    """
    fmt = fmt.lower()
    if fmt not in ("mp4", "gif"):
        raise RenderError("unsupported_format", f"unknown video format {fmt!r}; choose mp4 or gif")
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_FPS:
        raise RenderError("bad_option", f"fps must be an integer from 1 to {MAX_FPS}, got {fps!r}")
    background = check_background(background)
    width_height = output_size(scene, size, even=fmt == "mp4")
    cameras = camera_path(scene, path, frames, width_height)  # validates before any rendering
    check_video_work(width_height, len(cameras), fmt)
    scene, gaussians = _prepared(scene, f_px, width_height, device)
    cameras = camera_path(scene, path, frames, width_height) if f_px is not None else cameras

    def rendered() -> Iterator[np.ndarray]:
        for done, frame in enumerate(render_frames(gaussians, cameras, background=background), start=1):
            yield frame
            if progress is not None:
                progress(done, len(cameras))

    return iter_mp4_chunks(rendered(), fps=fps) if fmt == "mp4" else iter_gif_chunks(rendered(), fps=fps)


def check_video_work(size: tuple[int, int], frames: int, fmt: str) -> None:
    """Raise `RenderError` (``too_large``) when width x height x frames is over `MAX_VIDEO_PIXELS` (MP4) or
    `MAX_GIF_PIXELS` (GIF)."""
    limit = MAX_GIF_PIXELS if fmt == "gif" else MAX_VIDEO_PIXELS
    work = size[0] * size[1] * frames
    if work > limit:
        most = max(1, limit // (size[0] * size[1]))
        raise RenderError("too_large", f"a {fmt.upper()} of {frames} frames at {size[0]}x{size[1]} is {work:,} "
                                       f"pixels to render, over the limit of {limit:,}: at this size, at most "
                                       f"{most} frames")

"""The preview of a clip's scenes: each frame's scene rendered at the input camera, beside the input frame.

Made either while the clip runs (`side_by_side` on each prediction, `app.sequence.run`), or after it, from the
frames' files on disk and the clip decoded again (`render_preview`: a job's preview, made after the job has
succeeded, `app.jobs.lazy`). The second reads each frame's scene back from the best file it has
(`app.sequence.run.PREVIEW_SOURCES`): from a PLY the picture is the first's (float32, as predicted); from a
quantised format (SPZ, SOG, .splat) it differs by that format's rounding, invisible at the preview's size.

Each picture is `PREVIEW_HEIGHT` pixels high at most (the frame's own height if smaller; even, for H.264
in yuv420p), the input frame on the left and the render on the right, black where nothing was predicted.
Each half's sides are kept within the renderer's (`MIN_SIDE` to `PREVIEW_MAX_WIDTH`): a frame smaller
than 8 px, or of an extreme aspect, is stretched to fit, and its render fills the same size (the input
camera's centre crop).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from app.errors import SharpError
from app.gaussians import GaussianScene
from app.pipeline import Slots
from app.render.camera import MIN_SIDE, input_camera
from app.render.renderer import prepare_scene, render, to_uint8
from app.render.scene_io import load_scene
from app.render.video import encode_mp4
from app.video import Sampling, VideoLimits, read_frames

PREVIEW_HEIGHT = 360
"""Largest height in pixels of a preview picture."""


PREVIEW_MAX_WIDTH = 1920
"""Largest width in pixels of each half of a preview picture."""


def preview_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of each half of a preview picture for a frame of `width` x `height`: both even, from
    `MIN_SIDE` to `PREVIEW_HEIGHT` high and to `PREVIEW_MAX_WIDTH` wide (module docstring)."""
    out_height = max(MIN_SIDE, min(height, PREVIEW_HEIGHT) // 2 * 2)
    out_width = round(width * out_height / height / 2) * 2
    return min(PREVIEW_MAX_WIDTH, max(MIN_SIDE, out_width)), out_height


def side_by_side(rgb: np.ndarray, scene: GaussianScene, device: str | torch.device = "cpu") -> np.ndarray:
    """(h, 2 w, 3) uint8: the frame `rgb` (H, W, 3) resized, then `scene` rendered at its camera."""
    size = preview_size(rgb.shape[1], rgb.shape[0])
    frame = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    rendered = render(prepare_scene(scene, device), input_camera(scene, size))
    return np.concatenate([frame, to_uint8(rendered.color)], axis=1)


class PreviewError(SharpError):
    """A clip's preview could not be made from what its job kept (`render_preview`)."""

    code = "preview_failed"
    status = 500


def preview_fps(rate: float) -> int:
    """The preview's frame rate (frames per second, 1 to 120) for a clip sampled at `rate`."""
    return max(1, min(120, round(rate)))


def render_preview(clip: bytes | Path, manifest: Mapping[str, Any], read: Callable[[str], bytes | None], *,
                   source: str, limits: VideoLimits, device: str | torch.device = "cpu",
                   slots: Slots | None = None, progress: Callable[[int, int], None] | None = None) -> bytes:
    """The clip's ``preview.mp4`` made after its run: the bytes of an H.264 video of `manifest`'s frames, each
    the frame decoded again from `clip` (with the manifest's sampling) beside its scene read back from its
    `source` file (`read(path)`: the file's bytes, None if gone), rendered at the manifest's camera.

    `slots.render` is entered around each frame's render; `progress(k, n)` is called before frame k of n (an
    exception it raises, a cancel, stops the preview there).

    Raises:
        PreviewError: the clip no longer decodes as it did, a frame or its file is missing, or the file is
            not a readable scene; the message says which.
    """
    slots = slots or Slots()
    frames = manifest["frames"]
    sampling = Sampling(**manifest["sampling"])
    size = (manifest["image_width"], manifest["image_height"])
    rate = sampling.fps or manifest["source"]["frame_rate"] or 30.0

    def pictures() -> Iterator[np.ndarray]:
        decoded = read_frames(clip, sampling, limits)
        for number, record in enumerate(frames):
            if progress is not None:
                progress(number, len(frames))
            try:
                frame = next(decoded, None)
                while frame is not None and frame.index < record["index"]:
                    frame = next(decoded, None)
            except SharpError as error:
                raise PreviewError(f"the clip kept for the preview no longer decodes ({error.message})") from None
            if frame is None or frame.index != record["index"]:
                raise PreviewError(f"the clip kept for the preview has no frame {record['index']}")
            path = record["files"][source]
            body = read(path)
            if body is None:
                raise PreviewError(f"frame {record['index']}'s {path} is gone from the job store")
            try:
                scene = load_scene(body, name=path, f_px=record["f_px"], size=size)
            except SharpError as error:
                raise PreviewError(f"frame {record['index']}'s {path} is not a readable scene ({error.message})"
                                   ) from None
            with slots.render():
                picture = side_by_side(frame.rgb, scene, device)
            del body, scene
            yield picture

    return encode_mp4(pictures(), fps=preview_fps(rate))

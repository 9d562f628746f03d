"""The preview of a clip's scenes: each frame's scene rendered at the input camera, beside the input frame.

Each picture is `PREVIEW_HEIGHT` pixels high at most (the frame's own height if smaller; even, for H.264
in yuv420p), the input frame on the left and the render on the right, black where nothing was predicted.
Each half's sides are kept within the renderer's (`MIN_SIDE` to `PREVIEW_MAX_WIDTH`): a frame smaller
than 8 px, or of an extreme aspect, is stretched to fit, and its render fills the same size (the input
camera's centre crop).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from app.gaussians import GaussianScene
from app.render.camera import MIN_SIDE, input_camera
from app.render.renderer import prepare_scene, render, to_uint8

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

"""The preview of a clip's scenes: each frame's scene rendered at the input camera, beside the input frame.

Each picture is `PREVIEW_HEIGHT` pixels high at most (the frame's own height if smaller; even, for H.264
in yuv420p), the input frame on the left and the render on the right, black where nothing was predicted.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from app.gaussians import GaussianScene
from app.render.camera import input_camera
from app.render.renderer import prepare_scene, render, to_uint8

PREVIEW_HEIGHT = 360
"""Largest height in pixels of a preview picture."""


def preview_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of each half of a preview picture for a frame of `width` x `height`: both even."""
    out_height = min(height, PREVIEW_HEIGHT)
    out_width = max(2, round(width * out_height / height / 2) * 2)
    return out_width, max(2, out_height // 2 * 2)


def side_by_side(rgb: np.ndarray, scene: GaussianScene, device: str | torch.device = "cpu") -> np.ndarray:
    """(h, 2 w, 3) uint8: the frame `rgb` (H, W, 3) resized, then `scene` rendered at its camera."""
    size = preview_size(rgb.shape[1], rgb.shape[0])
    frame = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    rendered = render(prepare_scene(scene, device), input_camera(scene, size))
    return np.concatenate([frame, to_uint8(rendered.color)], axis=1)

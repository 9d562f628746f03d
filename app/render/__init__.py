"""Render Gaussian-splat scenes to images, depth maps and short videos, in plain PyTorch (CPU, CUDA, MPS).

Public API (imported lazily, so that the CLI and `app.render.errors` load without torch)::

    from app.render import load_scene, prepare_scene, input_camera, camera_path, render, render_frames
    scene = load_scene("scene.ply")                       # or bytes; .ply, .splat, .spz
    gaussians = prepare_scene(scene, device="auto")      # validate + upload once
    frame = render(gaussians, input_camera(scene, (512, 512)))   # RenderOutput(color, depth, alpha)
    mp4 = encode_mp4(render_frames(gaussians, camera_path(scene, "orbit", 60, (512, 512))))
    png = render_still(scene, size=(512, 512)); mp4 = render_video(scene, path="orbit", frames=60)   # one call

Every bad input raises `RenderError` (a ValueError with a ``code``).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Camera": "app.render.camera",
    "camera_path": "app.render.camera",
    "input_camera": "app.render.camera",
    "look_at": "app.render.camera",
    "RenderError": "app.render.errors",
    "RenderOutput": "app.render.rasterizer",
    "prepare_scene": "app.render.renderer",
    "render": "app.render.renderer",
    "render_frames": "app.render.renderer",
    "to_uint8": "app.render.renderer",
    "load_scene": "app.render.scene_io",
    "output_size": "app.render.pictures",
    "render_still": "app.render.pictures",
    "render_video": "app.render.pictures",
    "depth_to_gray": "app.render.video",
    "encode_gif": "app.render.video",
    "encode_image": "app.render.video",
    "encode_mp4": "app.render.video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'app.render' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

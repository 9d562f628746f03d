"""Render Gaussian-splat scenes to images, depth maps and short videos, in plain PyTorch (see renderer.py)."""

from app.render.camera import Camera, camera_path, input_camera, look_at
from app.render.errors import RenderError
from app.render.renderer import prepare_scene, render, render_frames, to_uint8

__all__ = ["Camera", "RenderError", "camera_path", "input_camera", "look_at", "prepare_scene", "render",
           "render_frames", "to_uint8"]

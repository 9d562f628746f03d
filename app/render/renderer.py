"""The renderer's entry points: a `GaussianScene` and a `Camera` in, colour / depth / alpha images out.

    gaussians = prepare_scene(scene, device="auto")     # validate and upload once
    frame = render(gaussians, input_camera(scene, (512, 512)))
    rgb = to_uint8(frame.color)                           # (H, W, 3) uint8 on the CPU

The maths are in `app.render.projection` (EWA projection) and `app.render.rasterizer` (compositing).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from app import devices
from app.gaussians import GaussianScene
from app.render.camera import Camera
from app.render.errors import RenderError
from app.render.projection import GaussianTensors, covariances_from, project
from app.render.rasterizer import DEFAULT_MAX_ELEMENTS, DEFAULT_PASS_SIZE, DEFAULT_TILE_SIZE, RenderOutput, rasterize

Color = tuple[float, float, float]


def select_device(name: str | torch.device = "auto") -> torch.device:
    """`app.devices.select_device`, with a bad or missing device as `RenderError` (``bad_option``)."""
    try:
        return devices.select_device(name)
    except ValueError as error:
        raise RenderError("bad_option", str(error)) from None


def validate_scene(scene: GaussianScene) -> None:
    """Raise `RenderError` for an empty scene (``empty_scene``) or non-finite values (``non_finite``).

    Opacities must lie in [0, 1], scales be >= 0, quaternions non-zero.
    """
    if scene.num_gaussians == 0:
        raise RenderError("empty_scene", "the scene has no Gaussians")
    for name in ("positions", "scales", "rotations", "colors", "opacities"):
        values = np.asarray(getattr(scene, name))
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise RenderError("non_finite", f"the scene's {name} hold {bad:,} NaN or infinite values")
    opacities = np.asarray(scene.opacities)
    if opacities.min() < 0 or opacities.max() > 1:
        raise RenderError("non_finite", "opacities must lie in [0, 1]")
    if np.asarray(scene.scales).min() < 0:
        raise RenderError("non_finite", "scales must be >= 0")
    if not (np.abs(np.asarray(scene.rotations)).sum(axis=1) > 0).all():
        raise RenderError("non_finite", "a rotation quaternion is zero")


def prepare_scene(scene: GaussianScene, device: str | torch.device = "cpu") -> GaussianTensors:
    """Validate `scene` and upload what projection needs to `device` (once, for any number of frames).

    Colours become display sRGB clipped to [0, 1] (``scene.colors_srgb()``, what viewers show; for a PLY,
    0.5 + SH_C0 f_dc); covariances Σ = R S Sᵀ Rᵀ are computed once, in float32.
    """
    validate_scene(scene)
    target = select_device(device)

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float32), device=target)

    with np.errstate(divide="ignore"):
        log_opacities = np.log(np.asarray(scene.opacities, dtype=np.float32))
    return GaussianTensors(
        means=tensor(np.asarray(scene.positions).T),
        covariances=covariances_from(tensor(scene.scales), tensor(scene.rotations)),
        log_opacities=tensor(log_opacities),
        colors=tensor(np.clip(scene.colors_srgb(), 0.0, 1.0)),
    )


def check_background(background: Iterable[float]) -> Color:
    """An RGB triple of finite floats in [0, 1], or `RenderError` (``bad_option``)."""
    values = tuple(float(x) for x in background)
    if len(values) != 3 or not all(0.0 <= x <= 1.0 for x in values):
        raise RenderError("bad_option", f"background must be three values in [0, 1], got {values}")
    return values  # type: ignore[return-value]


def render(gaussians: GaussianTensors | GaussianScene, camera: Camera, *, background: Iterable[float] = (0, 0, 0),
           tile_size: int = DEFAULT_TILE_SIZE, pass_size: int = DEFAULT_PASS_SIZE,
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> RenderOutput:
    """Render one frame: colour (H, W, 3), depth (H, W) and alpha (H, W), tensors on the scene's device.

    Args:
        gaussians: a prepared scene (`prepare_scene`), or a `GaussianScene` (prepared on the CPU here).
        camera: the view.
        background: RGB in [0, 1].
        tile_size, pass_size, max_elements: see `app.render.rasterizer.rasterize` (speed and memory only).
    """
    if isinstance(gaussians, GaussianScene):
        gaussians = prepare_scene(gaussians)
    color = check_background(background)
    with torch.inference_mode():
        return rasterize(project(gaussians, camera), color, tile_size=tile_size, pass_size=pass_size,
                         max_elements=max_elements)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A [0, 1] float image tensor -> uint8 numpy array on the CPU (round to nearest)."""
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def render_frames(gaussians: GaussianTensors, cameras: Iterable[Camera], *,
                  background: Iterable[float] = (0, 0, 0)) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 colour frames, one per camera, rendered lazily."""
    for camera in cameras:
        yield to_uint8(render(gaussians, camera, background=background).color)

"""Pinhole cameras for rendering, the input view of a scene, and camera paths for short videos.

Conventions: OpenCV camera axes (x right, y down, z forward), metres, pixels with the top-left pixel's
centre at (0.5, 0.5). A `Camera` maps a world point X to camera coordinates ``R @ X + t`` and then to the
pixel ``(fx x / z + cx, fy y / z + cy)``. The world frame of a `GaussianScene` is the camera frame of its
photo, so the input view is ``R = I, t = 0``.

Camera paths (`camera_path`) all start at the input view (frame 0 is exactly the input camera) and loop
(frame N would be frame 0 again), so a video can repeat seamlessly. Their amplitude is scaled to the scene:
``z_near`` is the 10th percentile of the Gaussians' depths (in front of the camera) and ``z_focus`` their
median depth; a lateral amplitude of ``0.05 * z_near`` moves the nearest content by about 5 % of the focal
length in pixels, relative to content at infinity:

- ``orbit``: the eye runs around a circle of radius ``r = 0.05 z_near`` in the image plane,
  ``eye = r (sin a, cos a - 1, 0)`` with ``a = 2 pi i / N`` (through the input eye at a = 0; the circle's
  centre is r above it), always looking at the focus point (0, 0, z_focus);
- ``swipe``: ``eye = (r sin a, 0, 0)`` left-right, looking at the focus point;
- ``dolly``: ``eye = (0, 0, 0.2 z_near sin a)`` forwards and back, looking straight ahead;
- ``zoom``: the eye stays, the focal length scales by ``1 + 0.25 (1 - cos a) / 2`` (up to 1.25x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from app.gaussians import GaussianScene
from app.render.errors import RenderError

MIN_SIDE = 8
"""Smallest accepted image side in pixels."""
MAX_SIDE = 4096
"""Largest accepted image side in pixels."""
MAX_FRAMES = 600
"""Most frames a camera path may have."""

PathName = Literal["orbit", "swipe", "dolly", "zoom"]
PATHS: tuple[str, ...] = ("orbit", "swipe", "dolly", "zoom")

LATERAL_AMPLITUDE = 0.05
"""Orbit radius and swipe amplitude, as a fraction of z_near."""
DOLLY_AMPLITUDE = 0.2
"""Dolly travel, as a fraction of z_near."""
ZOOM_AMPLITUDE = 0.25
"""Largest focal-length increase of the zoom path (1.25x)."""


def check_size(width: int, height: int) -> None:
    """Raise `RenderError` (code ``bad_size``) unless both sides are integers in [MIN_SIDE, MAX_SIDE]."""
    for name, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or not MIN_SIDE <= side <= MAX_SIDE:
            raise RenderError("bad_size", f"image {name} must be an integer from {MIN_SIDE} to {MAX_SIDE} px, "
                                          f"got {side!r}")


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: intrinsics in pixels and the world-to-camera rigid transform.

    Attributes:
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels (the image centre is (width / 2, height / 2)).
        width, height: image size in pixels.
        rotation: (3, 3) float64 world-to-camera rotation R.
        translation: (3,) float64 world-to-camera translation t in metres: x_cam = R x_world + t.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self) -> None:
        check_size(self.width, self.height)
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise RenderError("bad_camera", f"focal lengths must be finite and > 0 and the principal point finite, "
                                            f"got fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy}")
        rotation = np.asarray(self.rotation, dtype=np.float64)
        translation = np.asarray(self.translation, dtype=np.float64).reshape(-1)
        if rotation.shape != (3, 3) or translation.shape != (3,):
            raise RenderError("bad_camera", "rotation must be 3x3 and translation 3 values")
        if not (np.isfinite(rotation).all() and np.isfinite(translation).all()):
            raise RenderError("bad_camera", "camera pose has non-finite values")
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "translation", translation)

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) float64 pinhole matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def eye(self) -> np.ndarray:
        """(3,) camera centre in world coordinates, -R^T t, metres."""
        return -self.rotation.T @ self.translation

    def with_pose(self, rotation: np.ndarray, translation: np.ndarray) -> Camera:
        """The same intrinsics with another world-to-camera pose."""
        return replace(self, rotation=rotation, translation=translation)


def look_at(eye: np.ndarray, target: np.ndarray, down: np.ndarray = (0.0, 1.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) of a camera at `eye` looking at `target`, OpenCV axes.

    The camera's z axis points from `eye` to `target`, its x axis is ``down x z`` normalised (right), its y axis
    ``z x x`` (down). With eye 0, target (0, 0, d) and the default `down` (+y) this is exactly R = I, t = 0.

    Args:
        eye: (3,) camera centre, world metres.
        target: (3,) point to look at, world metres.
        down: (3,) the world direction that should appear downwards in the image.

    Returns:
        (R (3, 3), t (3,)) float64.
    """
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(np.asarray(down, dtype=np.float64), forward)
    norm = np.linalg.norm(right)
    if not norm > 1e-9:
        raise RenderError("bad_camera", "look_at: the view direction is parallel to the down vector")
    right = right / norm
    down_axis = np.cross(forward, right)
    rotation = np.stack([right, down_axis, forward])
    return rotation, -rotation @ eye


def scaled_size(scene_width: int, scene_height: int, longest: int) -> tuple[int, int]:
    """The scene's aspect ratio fitted to `longest` pixels on its longer side, both sides rounded to even."""
    scale = longest / max(scene_width, scene_height)
    width = max(MIN_SIDE, 2 * round(scene_width * scale / 2))
    height = max(MIN_SIDE, 2 * round(scene_height * scale / 2))
    return width, height


def input_camera(scene: GaussianScene, size: tuple[int, int] | None = None) -> Camera:
    """The view the photo was taken from, optionally at another image size.

    The focal length of the photo (``scene.f_px``, pixels of ``scene.image_width x scene.image_height``) is scaled
    by ``s = max(width / image_width, height / image_height)``, the principal point is the new image centre: the
    same aspect gives the photo's field of view exactly; another aspect fills the frame (like a centre crop).

    Args:
        scene: the scene, with a valid camera (f_px > 0, image size > 0).
        size: (width, height) in pixels; None keeps the scene's image size.
    """
    if not (scene.f_px > 0 and math.isfinite(scene.f_px)) or scene.image_width <= 0 or scene.image_height <= 0:
        raise RenderError("bad_camera", f"the scene has no usable camera (f_px={scene.f_px}, "
                                        f"size={scene.image_width}x{scene.image_height}); pass f_px and a size")
    width, height = size if size is not None else (scene.image_width, scene.image_height)
    check_size(width, height)
    scale = max(width / scene.image_width, height / scene.image_height)
    focal = scene.f_px * scale
    return Camera(fx=focal, fy=focal, cx=width / 2, cy=height / 2, width=int(width), height=int(height),
                  rotation=np.eye(3), translation=np.zeros(3))


def scene_depths(scene: GaussianScene, near: float = 0.01) -> tuple[float, float]:
    """(z_near, z_focus): the 10th percentile and the median of the depths z > `near` of the scene, metres."""
    z = np.asarray(scene.positions[:, 2], dtype=np.float64)
    z = z[np.isfinite(z) & (z > near)]
    if z.size == 0:
        raise RenderError("empty_scene", "no Gaussian lies in front of the camera")
    z_near, z_focus = np.percentile(z, [10, 50])
    return float(z_near), float(max(z_focus, z_near))


def camera_path(scene: GaussianScene, path: PathName | str, num_frames: int, size: tuple[int, int] | None = None,
                amplitude: float | None = None) -> list[Camera]:
    """`num_frames` cameras along a looping path that starts at the input view (see the module docstring).

    Args:
        scene: the scene (its camera and depths set the intrinsics and the amplitude).
        path: ``orbit``, ``swipe``, ``dolly`` or ``zoom``.
        num_frames: 1 to MAX_FRAMES.
        size: (width, height) of the frames; None keeps the scene's image size.
        amplitude: the eye's lateral radius (orbit, swipe) or travel (dolly) in metres, or the zoom factor minus
            one; None picks it from the scene's depths.
    """
    if path not in PATHS:
        raise RenderError("bad_option", f"unknown camera path {path!r}; choose one of {', '.join(PATHS)}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) \
            or not 1 <= num_frames <= MAX_FRAMES:
        raise RenderError("bad_frames", f"frame count must be an integer from 1 to {MAX_FRAMES}, got {num_frames!r}")
    if amplitude is not None and not (math.isfinite(amplitude) and amplitude >= 0):
        raise RenderError("bad_option", f"amplitude must be finite and >= 0, got {amplitude}")
    base = input_camera(scene, size)
    z_near, z_focus = scene_depths(scene)
    target = np.array([0.0, 0.0, z_focus])
    cameras = []
    for i in range(num_frames):
        angle = 2 * math.pi * i / num_frames
        if path == "zoom":
            factor = 1 + (ZOOM_AMPLITUDE if amplitude is None else amplitude) * (1 - math.cos(angle)) / 2
            cameras.append(replace(base, fx=base.fx * factor, fy=base.fy * factor))
            continue
        if path == "dolly":
            travel = DOLLY_AMPLITUDE * z_near if amplitude is None else amplitude
            eye = np.array([0.0, 0.0, travel * math.sin(angle)])
            rotation, translation = look_at(eye, eye + np.array([0.0, 0.0, 1.0]))
        else:
            radius = LATERAL_AMPLITUDE * z_near if amplitude is None else amplitude
            if path == "orbit":
                eye = radius * np.array([math.sin(angle), math.cos(angle) - 1.0, 0.0])
            else:
                eye = np.array([radius * math.sin(angle), 0.0, 0.0])
            rotation, translation = look_at(eye, target)
        cameras.append(base.with_pose(rotation, translation))
    return cameras

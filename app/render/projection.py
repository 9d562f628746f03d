"""EWA projection of 3D Gaussians to image-space 2D Gaussians (the first stage of the 3DGS rasteriser).

For each Gaussian with centre X (metres, world), covariance Σ = R S Sᵀ Rᵀ (R from the unit quaternion, S the
diagonal of standard deviations), opacity o and colour c, and a camera (W, t, fx, fy, cx, cy):

1. camera coordinates ``(x, y, z) = W X + t``; Gaussians with ``z <= near`` (default 0.01 m) are culled,
   as are non-finite ones;
2. ``Σ_cam = W Σ Wᵀ``; the local affine approximation of the perspective projection at the centre (Zwicker et
   al. 2001, "EWA Splatting", eq. 29; Kerbl et al. 2023, eq. 5) is the Jacobian
   ``J = [[fx / z, 0, -fx x' / z²], [0, fy / z, -fy y' / z²]]`` where ``x' = z clamp(x / z, ...)`` and ``y'`` are
   clamped to 1.3x the half field of view as the 3DGS CUDA code and gsplat do (limits ``(cx + 0.3 W) / fx``
   to the left, ``(W - cx + 0.3 W) / fx`` to the right, likewise for y), so that off-axis Gaussians far outside
   the view do not get huge footprints;
3. ``Σ₂D = J Σ_cam Jᵀ + 0.3 I`` (pixels²): the 0.3 px² low-pass filter of 3DGS / gsplat (``eps2d``); no opacity
   compensation (gsplat's "classic" mode);
4. the 2D mean ``(fx x / z + cx, fy y / z + cy)`` in pixels, where the pixel (i, j) has its centre at
   (i + 0.5, j + 0.5) as in gsplat; the conic is ``Σ₂D⁻¹ = [[A, B], [B, C]]``; Gaussians with det Σ₂D <= 0 are
   culled;
5. the support: a pixel at offset d from the mean gets ``alpha = min(0.99, o exp(-½ dᵀ Σ₂D⁻¹ d))``, and only
   alpha >= 1/255 counts, i.e. ``dᵀ Σ₂D⁻¹ d <= k² = 2 ln(255 o)``. The pixel bounding box is the exact box of
   that ellipse, ``±k sqrt(Σ₂D_xx)`` by ``±k sqrt(Σ₂D_yy)`` (k = 3.33 for o = 1; gsplat >= 1.0 uses the same
   opacity-aware extent, the original 3DGS a square of 3 sqrt(λ_max)). Nothing inside the support is ever
   truncated, so the image does not depend on the tile size. Gaussians with o < 1/255, or whose box holds
   no pixel centre of the image (off-screen), are culled.

The survivors are returned sorted by depth z, nearest first (stable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from app.render.camera import Camera

NEAR_PLANE = 0.01
"""Gaussians whose centre has camera z at or below this (metres) are culled."""
LOW_PASS = 0.3
"""Added to the diagonal of every 2D covariance, pixels²."""
ALPHA_MIN = 1.0 / 255.0
"""Contributions below this alpha are skipped."""
ALPHA_MAX = 0.99
"""Alpha is clamped to at most this."""
FOV_CLAMP = 0.3
"""The Jacobian's x / z and y / z are clamped to the field of view widened by this fraction of its extent."""


@dataclass(frozen=True)
class GaussianTensors:
    """A scene on a device, ready to project (all float32).

    Attributes:
        means: (3, N) centres, world metres (one row per axis: column-wise maths stays contiguous).
        covariances: (6, N) world covariances Σ = R S Sᵀ Rᵀ as rows (xx, xy, xz, yy, yz, zz), metres².
        log_opacities: (N,) ln(opacity), -inf for opacity 0.
        colors: (N, 3) display colours (sRGB) in [0, 1].
    """

    means: torch.Tensor
    covariances: torch.Tensor
    log_opacities: torch.Tensor
    colors: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[1])


# Columns of `ProjectedGaussians.params`.
MEAN_X, MEAN_Y, CONIC_A, CONIC_B, CONIC_C, LOG_OPACITY, RED, GREEN, BLUE, DEPTH, ONE = range(11)
_BOX_COLUMNS = 4


@dataclass(frozen=True)
class ProjectedGaussians:
    """The visible Gaussians in image space, sorted by depth (nearest first); M of them.

    Attributes:
        params: (M, 11) float32 columns: the centre (MEAN_X, MEAN_Y) in pixels; the conic (CONIC_A, CONIC_B,
            CONIC_C), i.e. the inverse 2D covariance [[A, B], [B, C]] in 1 / pixels²; LOG_OPACITY ln(o); the
            display colour (RED, GREEN, BLUE); DEPTH, camera z of the centre in metres; ONE, a column of ones.
        boxes: (M, 4) int64 inclusive pixel ranges (x0, x1, y0, y1) of the support, clipped to the image.
        width, height: the image size in pixels.
    """

    params: torch.Tensor
    boxes: torch.Tensor
    width: int
    height: int

    @property
    def num_gaussians(self) -> int:
        return int(self.params.shape[0])

    @property
    def means2d(self) -> torch.Tensor:
        """(M, 2) pixels."""
        return self.params[:, MEAN_X:MEAN_Y + 1]

    @property
    def conics(self) -> torch.Tensor:
        """(M, 3) (A, B, C) in 1 / pixels²."""
        return self.params[:, CONIC_A:CONIC_C + 1]

    @property
    def depths(self) -> torch.Tensor:
        """(M,) metres."""
        return self.params[:, DEPTH]


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised here, -> (N, 3, 3) rotation matrices."""
    q = quaternions / quaternions.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=1).reshape(-1, 3, 3)


_UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def covariances_from(scales: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
    """(6, N) Σ = R S Sᵀ Rᵀ as rows (xx, xy, xz, yy, yz, zz) from (N, 3) standard deviations (metres) and (N, 4)
    quaternions (w, x, y, z)."""
    rs = quaternion_to_matrix(quaternions) * scales[:, None, :]
    full = rs @ rs.transpose(1, 2)
    return torch.stack([full[:, i, j] for i, j in _UPPER], dim=0)


def _rotate_covariance_matrix(rotation: np.ndarray) -> np.ndarray:
    """(6, 6) M with ``vec6(W Σ Wᵀ) = vec6(Σ) @ M`` for the upper-triangle vectors of `_UPPER`."""
    matrix = np.zeros((6, 6))
    for row, (i, j) in enumerate(_UPPER):
        basis = np.zeros((3, 3))
        basis[i, j] = basis[j, i] = 1.0
        rotated = rotation @ basis @ rotation.T
        matrix[row] = [rotated[m, n] for m, n in _UPPER]
    return matrix


def _float_key(values: torch.Tensor) -> torch.Tensor:
    """int32 keys that sort like the float32 `values` when all are > 0 (IEEE bit patterns are monotonic there);
    integer sorts are radix sorts on the CPU, several times faster than float sorts."""
    return values.contiguous().view(torch.int32)


def project(gaussians: GaussianTensors, camera: Camera, near: float = NEAR_PLANE) -> ProjectedGaussians:
    """Project every Gaussian through `camera`; cull, and sort the survivors by depth (module docstring).

    Args:
        gaussians: the scene on its device.
        camera: the pinhole camera.
        near: the near plane, metres (> 0).
    """
    device = gaussians.device
    f32 = {"dtype": torch.float32, "device": device}
    cam = torch.as_tensor(camera.rotation, **f32) @ gaussians.means
    cam += torch.as_tensor(camera.translation, **f32)[:, None]
    x, y, z = cam.unbind(0)
    s00, s01, s02, s11, s12, s22 = torch.as_tensor(_rotate_covariance_matrix(camera.rotation).T, **f32) @ (
        gaussians.covariances)
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    width, height = camera.width, camera.height

    in_front = z > near
    inv_z = 1.0 / torch.where(in_front, z, 1.0)
    ratio_x, ratio_y = x * inv_z, y * inv_z
    tx = ratio_x.clamp(-(cx + FOV_CLAMP * width) / fx, (width - cx + FOV_CLAMP * width) / fx)
    ty = ratio_y.clamp(-(cy + FOV_CLAMP * height) / fy, (height - cy + FOV_CLAMP * height) / fy)
    # Σ₂D = J Σ_cam Jᵀ with J = [[fx/z, 0, -fx tx/z], [0, fy/z, -fy ty/z]], plus the low-pass filter.
    jx, jy = fx * inv_z, fy * inv_z
    a = jx * jx * (s00 - 2 * tx * s02 + tx * tx * s22) + LOW_PASS
    b = jx * jy * (s01 - tx * s12 - ty * s02 + tx * ty * s22)
    c = jy * jy * (s11 - 2 * ty * s12 + ty * ty * s22) + LOW_PASS
    det = a * c - b * b
    mean_x = fx * ratio_x + cx
    mean_y = fy * ratio_y + cy
    log_opacity = gaussians.log_opacities
    k2 = 2.0 * (log_opacity + math.log(255.0))
    # Exact box of the alpha >= 1/255 ellipse, widened by a hair so rounding never drops a pixel.
    extent_x = (k2 * a).clamp_min(0.0).sqrt() * 1.0001 + 1e-3
    extent_y = (k2 * c).clamp_min(0.0).sqrt() * 1.0001 + 1e-3
    x0 = torch.ceil((mean_x - extent_x - 0.5).clamp(-1.0, width)).clamp_min(0.0)
    x1 = torch.floor((mean_x + extent_x - 0.5).clamp(-1.0, width)).clamp_max(width - 1.0)
    y0 = torch.ceil((mean_y - extent_y - 0.5).clamp(-1.0, height)).clamp_min(0.0)
    y1 = torch.floor((mean_y + extent_y - 0.5).clamp(-1.0, height)).clamp_max(height - 1.0)
    visible = in_front & (k2 >= 0) & (det > 0) & (x0 <= x1) & (y0 <= y1)
    visible &= torch.isfinite(mean_x) & torch.isfinite(mean_y) & torch.isfinite(det)

    # Depth order of the visible ones: the rest get the largest key and are cut off after the sort.
    key = torch.where(visible, _float_key(z), torch.iinfo(torch.int32).max)
    order = torch.sort(key, stable=True).indices[:int(visible.sum())]
    inv_det = 1.0 / det
    columns = [mean_x, mean_y, c * inv_det, -b * inv_det, a * inv_det, log_opacity]
    params = torch.empty(order.numel(), 11, **f32)
    for i, column in enumerate(columns):
        params[:, i] = column.index_select(0, order)
    params[:, RED:BLUE + 1] = gaussians.colors.index_select(0, order)
    params[:, DEPTH] = z.index_select(0, order)
    params[:, ONE] = 1.0
    boxes = torch.stack([x0, x1, y0, y1], dim=0).index_select(1, order).T.long()
    return ProjectedGaussians(params=params, boxes=boxes, width=width, height=height)

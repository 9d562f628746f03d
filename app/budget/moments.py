"""A Gaussian's covariance and its footprint at the input view, and the one Gaussian that keeps the moments
of several (what a merge makes: `app.budget.pyramid`, `app.budget.coarse`).

A merge keeps the moments of its children, weighted by ``w_i = opacity_i x projected area_i`` (what each
adds to the input view, in pixels):

    w = sum w_i,  mean = sum w_i mean_i / w,  colour = sum w_i colour_i / w,
    covariance = sum w_i (covariance_i + (mean_i - mean)(mean_i - mean)^T) / w,
    opacity = min(1, w / projected area of the merged covariance)

so the merged Gaussian covers the pixels its children covered, with the light they added (the opacity
keeps the coverage, not the children's opacity: four side-by-side Gaussians of opacity 0.6 make one four
times as large of opacity about 0.6, not 1 - 0.4^4). Its scales and rotation are the covariance's
eigen-decomposition (descending, right-handed). The merged one's weight is its children's sum, so
``sum w``, ``sum w mean``, ``sum w colour`` and ``sum w (covariance + mean mean^T)`` over what is merged
are kept exactly.
"""

from __future__ import annotations

import math

import numpy as np

from app.gaussians import GaussianScene


def rotation_matrices(rotations: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) float64 rotation matrices."""
    q = np.asarray(rotations, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    w, x, y, z = np.ascontiguousarray(q.T)
    entries = np.empty((9, q.shape[0]))  # entry by entry, then one copy to matrices
    entries[0], entries[1], entries[2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    entries[3], entries[4], entries[5] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    entries[6], entries[7], entries[8] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
    return np.ascontiguousarray(entries.T).reshape(-1, 3, 3)


UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
"""The entries of a symmetric 3 x 3 matrix kept in its 6-vector form (xx, xy, xz, yy, yz, zz)."""


def covariances(scene: GaussianScene) -> np.ndarray:
    """(N, 6) float64 covariances R diag(s^2) R^T in metres^2, as upper triangles (`UPPER`); column-major
    (each entry's (N,) contiguous)."""
    scaled = rotation_matrices(scene.rotations) * np.asarray(scene.scales, dtype=np.float64)[:, None, :]
    entries = np.empty((len(UPPER), scaled.shape[0]))
    for entry, (i, j) in enumerate(UPPER):
        entries[entry] = np.einsum("nk,nk->n", scaled[:, i], scaled[:, j])
    return entries.T


def full_matrices(upper: np.ndarray) -> np.ndarray:
    """(N, 6) upper triangles (`UPPER`) -> (N, 3, 3) symmetric matrices."""
    return upper[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(-1, 3, 3)


def screen_areas(positions: np.ndarray, covariance: np.ndarray, f_px: float) -> np.ndarray:
    """(N,) float64 area in pixels of the 1-sigma ellipses of Gaussians with (N, 3) centres and (N, 6)
    covariances (`UPPER`) at a pinhole camera at the origin of focal length `f_px` (0 behind the camera):
    ``pi * sqrt(det(J covariance J^T))``, J = [[a, 0, b], [0, a, c]] the pinhole Jacobian at the centre."""
    px, py, pz = np.asarray(positions, dtype=np.float64).T
    xx, xy, xz, yy, yz, zz = np.asarray(covariance, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.where(pz > 0, f_px / pz, 0.0)
        b, c = -a * px * a / f_px, -a * py * a / f_px
        s00 = a * a * xx + 2 * a * b * xz + b * b * zz
        s11 = a * a * yy + 2 * a * c * yz + c * c * zz
        s01 = a * a * xy + a * c * xz + a * b * yz + b * c * zz
        areas = math.pi * np.sqrt(np.maximum(s00 * s11 - s01 * s01, 0.0))
    return np.nan_to_num(areas, nan=0.0, posinf=0.0)


def projected_areas(scene: GaussianScene) -> np.ndarray:
    """(N,) float64 area in pixels of each Gaussian's 1-sigma ellipse at the input view (0 behind the camera)."""
    return screen_areas(scene.positions, covariances(scene), scene.f_px)



def merged_gaussians(scene: GaussianScene, weight: np.ndarray, wp: np.ndarray, wpp: np.ndarray,
                     wc: np.ndarray) -> tuple[np.ndarray, ...]:
    """The Gaussians that keep the moments of what each merges (module docstring), from their sums: (M,)
    ``w``, (M, 3) ``w x centre``, (M, 6) ``w x (covariance + centre centre^T)`` (`UPPER`), (M, 3) ``w x
    colour``. Returns their (M, 3) positions, (M, 3) scales, (M, 4) rotations, (M, 3) colours, (M,) opacities
    (float64; opacity = w / the merged one's projected area at `scene`'s camera, at most 1)."""
    mean = wp / weight[:, None]
    covariance = wpp / weight[:, None] - np.stack([mean[:, i] * mean[:, j] for i, j in UPPER], axis=1)
    image_area = float(max(scene.image_width, 1) * max(scene.image_height, 1))
    area = np.minimum(screen_areas(mean, covariance, scene.f_px), image_area)
    variances, axes = np.linalg.eigh(full_matrices(covariance))
    variances, axes = variances[:, ::-1], axes[:, :, ::-1].copy()  # descending
    axes[np.linalg.det(axes) < 0, :, 2] *= -1  # right-handed: a rotation
    return (mean, np.sqrt(np.maximum(variances, 0.0)), matrices_to_quaternions(axes), wc / weight[:, None],
            np.clip(weight / np.maximum(area, 1e-12), 0.0, 1.0))



def matrices_to_quaternions(rotations: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices -> (N, 4) unit quaternions (w, x, y, z), w >= 0 (Shepperd's method: each
    row from its largest component, for accuracy)."""
    r = rotations
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    four_squares = np.stack([1 + trace, 1 + 2 * r[:, 0, 0] - trace, 1 + 2 * r[:, 1, 1] - trace,
                             1 + 2 * r[:, 2, 2] - trace], axis=1)  # 4w^2, 4x^2, 4y^2, 4z^2
    wx, wy, wz = r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]
    xy, xz, yz = r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1]
    candidates = [[four_squares[:, 0], wx, wy, wz], [wx, four_squares[:, 1], xy, xz],
                  [wy, xy, four_squares[:, 2], yz], [wz, xz, yz, four_squares[:, 3]]]
    row = np.argmax(four_squares, axis=1)
    q = np.empty((r.shape[0], 4))
    for component in range(4):
        q[:, component] = np.choose(row, [candidate[component] for candidate in candidates])
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)

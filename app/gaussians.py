"""The predicted scene: N metric 3D Gaussians in the camera frame of the input photo.

Conventions (the same as the reference implementation):
- positions are in metres, OpenCV camera axes (x right, y down, z forward), camera at the origin;
- scales are standard deviations in metres along the Gaussian's principal axes, in descending order;
- rotations are unit quaternions (w, x, y, z) whose rotation matrix has the principal axes as columns;
- colors are *linear* RGB in [0, 1] (`colors_srgb()` gives the sRGB values viewers expect);
- opacities are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SH_C0 = 0.28209479177387814
"""The degree-0 spherical harmonic, sqrt(1 / (4 pi)): colour = 0.5 + SH_C0 * f_dc."""


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear RGB -> sRGB (IEC 61966-2-1 curve, threshold 0.0031308), elementwise, float32."""
    linear = np.asarray(linear, dtype=np.float32)
    low = linear * np.float32(12.92)
    high = np.float32(1.055) * np.power(np.maximum(linear, 0), np.float32(1 / 2.4)) - np.float32(0.055)
    return np.where(linear <= np.float32(0.0031308), low, high).astype(np.float32)


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB -> linear RGB (threshold 0.04045), elementwise, float32; values whose power overflows float32 (over
    about 1e16, e.g. a corrupt PLY's f_dc) become inf, which the renderer refuses as non-finite."""
    srgb = np.asarray(srgb, dtype=np.float32)
    low = srgb / np.float32(12.92)
    with np.errstate(over="ignore"):
        high = np.power((np.maximum(srgb, 0) + np.float32(0.055)) / np.float32(1.055), np.float32(2.4))
    return np.where(srgb <= np.float32(0.04045), low, high).astype(np.float32)


@dataclass(frozen=True)
class GaussianScene:
    """N Gaussians plus the pinhole camera they were predicted for (all arrays float32, on the CPU).

    Attributes:
        positions: (N, 3) metres, OpenCV camera axes.
        scales: (N, 3) metres, descending per row.
        rotations: (N, 4) unit quaternions, (w, x, y, z).
        colors: (N, 3) linear RGB in [0, 1].
        opacities: (N,) in [0, 1].
        f_px: focal length in pixels of the original image.
        image_width, image_height: the original image size in pixels (after EXIF rotation).
    """

    positions: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    colors: np.ndarray
    opacities: np.ndarray
    f_px: float
    image_width: int
    image_height: int

    def __post_init__(self) -> None:
        n = self.positions.shape[0]
        expected = {"positions": (n, 3), "scales": (n, 3), "rotations": (n, 4), "colors": (n, 3),
                    "opacities": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")

    @property
    def num_gaussians(self) -> int:
        return int(self.positions.shape[0])

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) pinhole matrix of the original image, principal point at (W/2, H/2) pixels."""
        return np.array(
            [[self.f_px, 0.0, self.image_width / 2], [0.0, self.f_px, self.image_height / 2], [0.0, 0.0, 1.0]],
            dtype=np.float32,
        )

    def colors_srgb(self) -> np.ndarray:
        """(N, 3) sRGB colours in [0, 1], as web viewers and image tools expect."""
        return linear_to_srgb(self.colors)

    def select(self, indices: np.ndarray) -> GaussianScene:
        """A scene holding only the Gaussians at `indices` (same camera)."""
        return GaussianScene(
            positions=self.positions[indices], scales=self.scales[indices],
            rotations=self.rotations[indices], colors=self.colors[indices],
            opacities=self.opacities[indices], f_px=self.f_px,
            image_width=self.image_width, image_height=self.image_height,
        )


def largest_components(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The component each quaternion drops in a "smallest three" encoding (SPZ, SOG).

    Args:
        columns: (4, N) quaternions as columns, in the format's component order.

    Returns:
        (N,) uint8 index of the component of largest magnitude (the first of equal ones), (N,) bool whether
        it is negative, and the (4, N) magnitudes. Column by column, with no per-row gathers.
    """
    magnitudes = np.abs(columns)
    largest = np.zeros(columns.shape[1], dtype=np.uint8)
    negative = columns[0] < 0
    best = magnitudes[0].copy()
    for index in (1, 2, 3):
        better = magnitudes[index] > best
        np.putmask(largest, better, np.uint8(index))
        np.putmask(negative, better, columns[index] < 0)
        np.maximum(best, magnitudes[index], out=best)
    return largest, negative, magnitudes

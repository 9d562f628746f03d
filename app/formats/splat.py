"""The ``.splat`` format of antimatter15's WebGL viewer: 32 bytes per Gaussian, no header.

Each record, little-endian:

- bytes 0-11: position, 3 x float32, metres;
- bytes 12-23: scale, 3 x float32, standard deviations in metres (linear, not log);
- bytes 24-27: colour RGBA, 4 x uint8: round(sRGB * 255) and round(opacity * 255), clipped to [0, 255];
- bytes 28-31: rotation, 4 x uint8, the normalised quaternion (w, x, y, z) as
  clip(round(q * 128 + 128), 0, 255).

Records are sorted by descending ``opacity * scale_0 * scale_1 * scale_2`` (opacity times the volume of
the ellipsoid, up to 4/3 pi), as the common ``convert.py`` does: a viewer that loads the file
progressively shows the Gaussians that cover most of the picture first. Ties keep the scene's order.

Axes: .splat says nothing about them. We keep the scene's OpenCV camera axes (x right, y down,
z forward, camera at the origin looking along +z), as the PLY does; y-up viewers then show the scene
upside down until it is rotated 180 degrees about x, (x, y, z) -> (x, -y, -z).

What is lost: colour and opacity are quantised to 1/255, rotations to 1/128 per component.
"""

from __future__ import annotations

import numpy as np

from app.formats.limits import check_gaussian_count
from app.gaussians import GaussianScene, srgb_to_linear

SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)),
                        ("rotation", "u1", (4,))])
"""One 32-byte .splat record."""

RECORD_BYTES = SPLAT_DTYPE.itemsize
assert RECORD_BYTES == 32


def quantize_uint8(values: np.ndarray) -> np.ndarray:
    """round(values) (halves away from zero) clipped to [0, 255] as uint8; NaN -> 0."""
    rounded = np.floor(values + np.float32(0.5))
    return np.fmin(np.fmax(rounded, 0, out=rounded), 255, out=rounded).astype(np.uint8)  # fmax: NaN -> 0


def splat_order(scene: GaussianScene) -> np.ndarray:
    """(N,) int64 indices by descending opacity x volume, stable (computed in log space, float64)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        key = np.log(np.asarray(scene.opacities, dtype=np.float64)) + np.log(
            np.asarray(scene.scales, dtype=np.float64)).sum(axis=1)
    key = np.nan_to_num(key, nan=-np.inf)
    return np.argsort(-key, kind="stable")


def _normalised_quaternions(q: np.ndarray) -> np.ndarray:
    """(N, 4) float32 unit quaternions; zero or non-finite rows become the identity (1, 0, 0, 0)."""
    q = np.asarray(q, dtype=np.float32)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    good = np.isfinite(norm) & (norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(good, q / np.where(good, norm, 1), np.array([1, 0, 0, 0], dtype=np.float32))
    return out.astype(np.float32)


def encode_splat(scene: GaussianScene, *, sort: bool = True) -> bytes:
    """The scene as a .splat file: 32 * N bytes.

    Args:
        scene: the Gaussians.
        sort: order records by descending opacity x volume (the usual converter's order); False keeps
            the scene's order.
    """
    if sort:
        scene = scene.select(splat_order(scene))
    n = scene.num_gaussians
    out = np.empty(n, dtype=SPLAT_DTYPE)
    out["position"] = scene.positions
    out["scale"] = scene.scales
    out["rgba"][:, :3] = quantize_uint8(scene.colors_srgb() * np.float32(255))
    out["rgba"][:, 3] = quantize_uint8(np.asarray(scene.opacities, dtype=np.float32) * np.float32(255))
    q = _normalised_quaternions(scene.rotations)
    out["rotation"] = quantize_uint8(q * np.float32(128) + np.float32(128))
    return out.tobytes()


def decode_splat(
    data: bytes | bytearray | memoryview, *, f_px: float = 0.0, image_width: int = 0,
    image_height: int = 0, max_gaussians: int | None = None,
) -> GaussianScene:
    """Parse a .splat file back into a scene (colours back to linear RGB, quaternions renormalised).

    Args:
        data: the file's bytes, a multiple of 32.
        f_px, image_width, image_height: the camera, which .splat does not store.
        max_gaussians: refuse more records (`SceneTooLargeError`); None: `MAX_GAUSSIANS`.
    """
    if len(data) % RECORD_BYTES:
        raise ValueError(f".splat size {len(data)} is not a multiple of {RECORD_BYTES}")
    check_gaussian_count(len(data) // RECORD_BYTES, "the .splat file's size", max_gaussians)
    rec = np.frombuffer(data, dtype=SPLAT_DTYPE)
    positions = rec["position"].astype(np.float32)
    rotations = (rec["rotation"].astype(np.float32) - np.float32(128)) / np.float32(128)
    rotations = _normalised_quaternions(rotations)
    rgba = rec["rgba"].astype(np.float32) / np.float32(255)
    return GaussianScene(
        positions=positions,
        scales=rec["scale"].astype(np.float32),
        rotations=rotations,
        colors=srgb_to_linear(rgba[:, :3]),
        opacities=np.ascontiguousarray(rgba[:, 3]),
        f_px=f_px,
        image_width=image_width,
        image_height=image_height,
    )

"""PlayCanvas's SOG ("Spatially Ordered Gaussians", version 2) as one ``.sog`` zip bundle.

The bundle holds ``meta.json`` and five lossless WebP images of W x H pixels, W * H >= N; pixel
``i = x + y * W`` (row-major, top-left origin) of every image belongs to the i-th Gaussian:

- ``means_l.webp``, ``means_u.webp`` (RGB): each coordinate after the symmetric log transform
  ``n = sign(p) * ln(1 + |p|)`` as a 16-bit integer ``q = round(65535 * (n - min) / (max - min))``, its
  low byte in ``means_l`` and high byte in ``means_u`` (x, y, z in R, G, B); ``meta.means.mins`` / ``maxs``
  hold the per-axis range of n. The step is ``(max - min) / 65535`` in the log domain, i.e. a relative
  position error of at most half that (about 3e-5 for our scenes' ~4 log units).
- ``quats.webp`` (RGBA): "smallest three" of the unit quaternion (w, x, y, z): the largest-magnitude
  component is dropped (its index 0-3 stored as alpha 252-255) after negating the quaternion so that it is
  positive; the other three, in increasing index order, as ``round(255 * (c * sqrt(2) / 2 + 0.5))``, a
  step of ``sqrt(2) / 255`` (0.0055) over [-1/sqrt(2), 1/sqrt(2)].
- ``scales.webp`` (RGB): per axis, the index into ``meta.scales.codebook``, 256 log standard deviations
  (natural log of metres, as the PLY's ``scale_*``).
- ``sh0.webp`` (RGBA): per colour channel the index into ``meta.sh0.codebook``, 256 degree-0 SH
  coefficients ``f_dc`` (the PLY's ``f_dc_*``, colour = 0.5 + SH_C0 * f_dc), and the opacity in alpha as
  ``round(255 * opacity)``.

The two codebooks are each one 1-D k-means (Lloyd's algorithm on a 65,536-bin histogram) over all three
columns pooled, as the format shares one codebook between them. The Gaussians are written in Morton
(Z-curve) order of their 16-bit quantised coordinates, which puts neighbours in 3D next to each other in
the images, so the WebP predictors compress them well.

Axes: SOG keeps the PLY's coordinates (PlayCanvas's splat-transform converts PLY <-> SOG without
changing them, and viewers apply the same scene transform to both), so a ``.sog`` shows up the same way
as our PLY: OpenCV axes (x right, y down, z forward), camera at the origin. No spherical harmonics of
degree >= 1 (no ``shN``). Our ``meta.json`` adds ``"antialias": false`` and ``"sharp": {"f_px",
"image_width", "image_height"}`` (the camera; other readers ignore unknown fields).

This module holds the layout and the writer; `app.formats.sog_reader` reads a bundle back, as a hostile
file may be.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from app.formats.threads import usable_cpus
from app.gaussians import SH_C0, GaussianScene, largest_components, linear_to_srgb

SOG_VERSION = 2
MEDIA_TYPE = "application/zip"
CODEBOOK_SIZE = 256
MAX_IMAGE_SIDE = 16383
"""WebP's largest width or height."""
WEBP_SETTINGS: dict[str, tuple[int, int]] = {
    "means_l.webp": (0, 0), "means_u.webp": (30, 1), "scales.webp": (0, 1), "quats.webp": (0, 2),
    "sh0.webp": (0, 0),
}
"""Each image's lossless WebP (`quality`, `method`): libwebp's effort (0-100) and method (0-6), chosen by
measurement on a full-size prediction (docs/formats.md): 2.3 % larger in all than quality 70 / method 4 for
every image, in about a third of its CPU time (method 0 for all would be 10 % larger). The low bytes of the
positions are noise that no effort compresses; the high bytes need LZ77 effort; the scales and rotations
the predictors' search (method 1-2); the colours lose least to method 0 (1.4 % of the file for a fifth of the
time of method 1)."""
FILES = {"means": ["means_l.webp", "means_u.webp"], "scales": ["scales.webp"], "quats": ["quats.webp"],
         "sh0": ["sh0.webp"]}

_HISTOGRAM_BINS = 1 << 16
_LLOYD_ITERATIONS = 100
_QUAT_SCALE = math.sqrt(2.0)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# For each index of the dropped (largest) component, the three kept ones in increasing order.
_KEPT_COMPONENTS = np.array([[c for c in range(4) if c != largest] for largest in range(4)], dtype=np.int64)


def image_size(count: int) -> tuple[int, int]:
    """(W, H) of the images for `count` Gaussians, W * H >= count: W the largest power of two <= sqrt(count)
    (at least 4; the pixel above then lies at a fixed step of the Morton curve, which WebP's predictors
    exploit: 1-2 % smaller than a square image), H a multiple of 4."""
    width = max(4, 1 << max(0, math.isqrt(max(count, 1)).bit_length() - 1))
    height = max(4, math.ceil(count / width / 4) * 4)
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(f"{count:,} Gaussians do not fit SOG's {MAX_IMAGE_SIDE}-pixel WebP images")
    return width, height


def log_transform(values: np.ndarray) -> np.ndarray:
    """sign(v) * ln(1 + |v|), elementwise, float64."""
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.log1p(np.abs(values))


def inverse_log_transform(values: np.ndarray) -> np.ndarray:
    """sign(n) * (exp(|n|) - 1), elementwise, float64."""
    values = np.asarray(values, dtype=np.float64)
    return np.sign(values) * np.expm1(np.abs(values))


def _finite(values: np.ndarray) -> np.ndarray:
    """`values` with NaN -> 0 and ±inf -> the largest finite magnitude present (float64)."""
    values = np.asarray(values, dtype=np.float64)
    if np.isfinite(values).all():
        return values
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return np.nan_to_num(values, nan=0.0, posinf=high, neginf=low)


def quantize_positions(positions: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """(N, 3) metres -> (N, 3) uint16 codes and the per-axis log-domain mins and maxs."""
    finite = _finite(positions).reshape(-1, 3)
    logs = np.abs(finite)  # `log_transform`, in place
    np.log1p(logs, out=logs)
    logs *= np.sign(finite)
    mins = logs.min(axis=0) if logs.size else np.zeros(3)
    maxs = logs.max(axis=0) if logs.size else np.zeros(3)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    logs -= mins
    logs /= span
    logs *= 65535.0
    np.rint(logs, out=logs)
    return np.clip(logs, 0, 65535, out=logs).astype(np.uint16), mins.tolist(), maxs.tolist()


def _spread_bits(values: np.ndarray) -> np.ndarray:
    """16-bit integers -> uint64 with bit k moved to bit 3k (the Morton interleave of one axis)."""
    v = values.astype(np.uint64) & np.uint64(0xFFFF)
    for shift, mask in ((16, 0x0000FF0000FF), (8, 0x00F00F00F00F), (4, 0x0C30C30C30C3), (2, 0x249249249249)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def morton_order(codes: np.ndarray) -> np.ndarray:
    """(N,) int64 indices sorting (N, 3) uint16 codes along the 3-D Morton curve (x lowest bit; stable).

    The 48-bit keys are sorted 16 bits at a time, lowest first, each pass stable: numpy sorts 16-bit keys by
    radix in linear time, so three passes take about two thirds of one stable sort of the 64-bit keys."""
    key = _spread_bits(codes[:, 0]) | (_spread_bits(codes[:, 1]) << np.uint64(1))
    key |= _spread_bits(codes[:, 2]) << np.uint64(2)
    order = np.argsort(key.astype(np.uint16), kind="stable")
    for shift in (16, 32):
        digits = (key >> np.uint64(shift)).astype(np.uint16)
        order = order[np.argsort(digits[order], kind="stable")]
    return order


def _lloyd(codebook: np.ndarray, centers: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Lloyd's iterations of a sorted 1-D codebook on sorted weighted points: (codebook, weighted squared error).

    Each cell is a run of the sorted points (those up to the midpoint after its entry), so its mass and moment
    are differences of prefix sums: an iteration costs O(codebook size), not O(points).
    """
    mass = np.concatenate([[0.0], np.cumsum(weights)])
    moment = np.concatenate([[0.0], np.cumsum(weights * centers)])
    for _ in range(_LLOYD_ITERATIONS):
        ends = np.searchsorted(centers, (codebook[1:] + codebook[:-1]) / 2, side="right")
        bounds = np.concatenate([[0], ends, [centers.size]])
        cell_mass = mass[bounds[1:]] - mass[bounds[:-1]]
        cell_moment = moment[bounds[1:]] - moment[bounds[:-1]]
        updated = np.sort(np.where(cell_mass > 0, cell_moment / np.where(cell_mass > 0, cell_mass, 1), codebook))
        converged = np.array_equal(updated, codebook)
        codebook = updated
        if converged:
            break
    labels = np.searchsorted((codebook[1:] + codebook[:-1]) / 2, centers)
    return codebook, float(np.sum(weights * (centers - codebook[labels]) ** 2))


def kmeans_1d(values: np.ndarray, size: int = CODEBOOK_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A `size`-entry codebook minimising the squared error of `values`, and each value's label.

    Lloyd's algorithm on a histogram of 65,536 equal bins over the finite range (each bin represented by
    the mean of its values), started both at equally spaced quantiles of the density to the power 1/3 (the
    asymptotically optimal spacing for squared error) and evenly over the range (better for a few far
    outliers); the start with the smaller error wins. Non-finite values get the nearest end. The labels come
    from each value's bin (a bin that no midpoint between entries crosses has one label for all its values);
    only the values of the few bins that a midpoint crosses are searched for, so each value gets its nearest
    entry exactly, in a few passes over the values.

    Returns:
        (size,) float32 ascending codebook, and uint8 labels shaped like `values`.
    """
    flat = _finite(values).reshape(-1)
    if flat.size == 0:
        return np.zeros(size, dtype=np.float32), np.zeros(np.shape(values), dtype=np.uint8)
    low, high = float(flat.min()), float(flat.max())
    if high <= low:
        return np.full(size, low, dtype=np.float32), np.zeros(np.shape(values), dtype=np.uint8)
    bins = ((flat - low) * (_HISTOGRAM_BINS / (high - low))).astype(np.int32)
    np.minimum(bins, _HISTOGRAM_BINS - 1, out=bins)
    counts = np.bincount(bins, minlength=_HISTOGRAM_BINS).astype(np.float64)
    sums = np.bincount(bins, weights=flat, minlength=_HISTOGRAM_BINS)
    occupied = counts > 0
    centers, weights = sums[occupied] / counts[occupied], counts[occupied]
    cumulative = np.cumsum(np.cbrt(weights))
    targets = (np.arange(size) + 0.5) / size * cumulative[-1]
    starts = (centers[np.minimum(np.searchsorted(cumulative, targets), centers.size - 1)],
              low + (np.arange(size) + 0.5) / size * (high - low))
    codebook = min((_lloyd(start, centers, weights) for start in starts), key=lambda result: result[1])[0]
    codebook32 = codebook.astype(np.float32)
    midpoints = (codebook32[1:].astype(np.float64) + codebook32[:-1]) / 2
    # A bin's values lie in its nominal interval, give or take the rounding of their bin number (~1e-11 of a
    # bin): where no midpoint falls within a millionth of a bin of it, they all share one label.
    width = (high - low) / _HISTOGRAM_BINS
    edges = low + np.arange(_HISTOGRAM_BINS + 1) * width
    first = np.searchsorted(midpoints, edges[:-1] - 1e-6 * width)
    crossed_bins = first != np.searchsorted(midpoints, edges[1:] + 1e-6 * width)
    labels = first.astype(np.uint8)[bins]
    crossed = crossed_bins[bins]
    labels[crossed] = np.searchsorted(midpoints, flat[crossed])
    return codebook32, labels.reshape(np.shape(values))


def pack_quaternions(rotations: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z) -> (N, 4) uint8 "smallest three" (degenerate rows: identity).

    Column by column (no per-row gathers): the index of the largest magnitude (the first of equals), then the
    three others of each row picked by it.
    """
    columns = np.array(np.asarray(rotations).T, dtype=np.float64, order="C")  # (4, N)
    norm = columns[0] * columns[0]  # summed in the order of np.linalg.norm's, so the same bits
    for column in columns[1:]:
        norm += column * column
    np.sqrt(norm, out=norm)
    good = np.isfinite(norm) & (norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns /= norm
    if not good.all():
        columns[:, ~good] = np.array([[1.0], [0.0], [0.0], [0.0]])
    largest, negative, _ = largest_components(columns)
    sign = np.where(negative, -1.0, 1.0)
    out = np.empty((columns.shape[1], 4), dtype=np.uint8)
    # Kept columns, in increasing order, for largest = 0, 1, 2, 3: (1 2 3), (0 2 3), (0 1 3), (0 1 2).
    kept = (np.where(largest == 0, columns[1], columns[0]), np.where(largest <= 1, columns[2], columns[1]),
            np.where(largest == 3, columns[2], columns[3]))
    for slot, component in enumerate(kept):
        component *= sign
        component *= _QUAT_SCALE / 2
        component += 0.5
        component *= 255.0
        np.rint(component, out=component)
        np.clip(component, 0, 255, out=component)
        out[:, slot] = component
    out[:, 3] = largest + 252
    return out


def unpack_quaternions(packed: np.ndarray) -> np.ndarray:
    """(N, 4) uint8 "smallest three" -> (N, 4) float32 unit quaternions (w, x, y, z)."""
    packed = np.asarray(packed)
    mode = packed[:, 3].astype(np.int64) - 252
    if ((mode < 0) | (mode > 3)).any():
        raise ValueError("SOG quats.webp alpha must be 252..255")
    kept = (packed[:, :3].astype(np.float64) / 255.0 - 0.5) * (2.0 / _QUAT_SCALE)
    q = np.empty((packed.shape[0], 4), dtype=np.float64)
    np.put_along_axis(q, _KEPT_COMPONENTS[mode], kept, axis=1)
    dropped = np.sqrt(np.maximum(0.0, 1.0 - np.square(kept).sum(axis=1, keepdims=True)))
    np.put_along_axis(q, mode[:, None], dropped, axis=1)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def _webp(name: str, pixels: np.ndarray) -> bytes:
    """(H, W, 3 or 4) uint8 -> lossless WebP bytes at image `name`'s `WEBP_SETTINGS` (`exact`: colours under
    alpha 0 are kept too)."""
    quality, method = WEBP_SETTINGS[name]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB").save(
        buffer, "WEBP", lossless=True, quality=quality, method=method, exact=True)
    return buffer.getvalue()


def _image(columns: np.ndarray, width: int, height: int, order: np.ndarray | None = None) -> np.ndarray:
    """(N, C) uint8 rows -> (H, W, C) pixels, the rows (taken in `order` when given) first in row-major order,
    zeros after. `np.take` into the image, several times faster than a fancy-indexed copy of narrow rows."""
    pixels = np.zeros((width * height, columns.shape[1]), dtype=np.uint8)
    if order is None:
        pixels[: columns.shape[0]] = columns
    else:
        np.take(columns, order, axis=0, out=pixels[: columns.shape[0]])
    return pixels.reshape(height, width, columns.shape[1])


def encode_sog(scene: GaussianScene, *, workers: int | None = None) -> bytes:
    """The scene as a bundled ``.sog`` (a zip of ``meta.json`` and five WebP images; see the module docstring).

    Each image is made and encoded by its own task (the codebooks' k-means inside theirs), beside the Morton
    order's, on `workers` threads (at least 2: an image waits for the order): numpy and Pillow release the GIL
    for the heavy parts.

    Args:
        scene: the Gaussians (OpenCV axes, kept as in the PLY).
        workers: threads making and encoding the images; None: one per usable CPU, 5 at most (one per image:
            more threads than cores only contend, 15 % slower on 2 cores).
    """
    n = scene.num_gaussians
    width, height = image_size(n)

    def morton() -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
        codes, mins, maxs = quantize_positions(scene.positions)
        order = morton_order(codes)
        return order, np.take(codes, order, axis=0), mins, maxs

    def scales(ordered: Future[tuple[np.ndarray, ...]]) -> tuple[bytes, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_scales = np.log(np.asarray(scene.scales, dtype=np.float64))
        codebook, labels = kmeans_1d(log_scales)
        return _webp("scales.webp", _image(labels, width, height, ordered.result()[0])), codebook

    def sh0(ordered: Future[tuple[np.ndarray, ...]]) -> tuple[bytes, np.ndarray]:
        f_dc = (linear_to_srgb(scene.colors).astype(np.float64) - 0.5) / SH_C0
        codebook, labels = kmeans_1d(f_dc)
        opacity = np.clip(np.rint(_finite(scene.opacities) * 255.0), 0, 255).astype(np.uint8)
        pixels = np.concatenate([labels, opacity[:, None]], axis=1)
        return _webp("sh0.webp", _image(pixels, width, height, ordered.result()[0])), codebook

    def quats(ordered: Future[tuple[np.ndarray, ...]]) -> tuple[bytes, None]:
        packed = pack_quaternions(scene.rotations)
        return _webp("quats.webp", _image(packed, width, height, ordered.result()[0])), None

    def means(byte: int) -> Callable[[Future[tuple[np.ndarray, ...]]], tuple[bytes, None]]:
        name = FILES["means"][byte]
        return lambda ordered: (_webp(name, _image((ordered.result()[1] >> (8 * byte)).astype(np.uint8), width,
                                                   height)), None)

    # The Morton order first; meanwhile each image's own work (k-means, packing), in the original order, then
    # its values put in Morton order (uint8 gathers) and encoded. With fewer threads than tasks, the colours'
    # k-means beside the order, then the longest encode (the positions' high bytes) as soon as the order is made.
    tasks: dict[str, Callable[[Future[tuple[np.ndarray, ...]]], tuple[bytes, np.ndarray | None]]] = {
        "sh0.webp": sh0, "means_u.webp": means(1), "scales.webp": scales, "quats.webp": quats,
        "means_l.webp": means(0),
    }
    threads = workers if workers is not None else min(len(tasks), usable_cpus())
    with ThreadPoolExecutor(max_workers=max(2, threads)) as pool:
        ordered = pool.submit(morton)
        futures = {name: pool.submit(task, ordered) for name, task in tasks.items()}
        results = {name: future.result() for name, future in futures.items()}
        mins, maxs = ordered.result()[2:]
    encoded = {name: results[name][0] for name in ("means_l.webp", "means_u.webp", "scales.webp", "quats.webp",
                                                   "sh0.webp")}
    scale_codebook, color_codebook = (np.asarray(results[name][1]) for name in ("scales.webp", "sh0.webp"))
    meta: dict[str, Any] = {
        "version": SOG_VERSION,
        "asset": {"generator": "sharp-serve"},
        "count": n,
        "antialias": False,
        "means": {"mins": mins, "maxs": maxs, "files": FILES["means"]},
        "scales": {"codebook": scale_codebook.tolist(), "files": FILES["scales"]},
        "quats": {"files": FILES["quats"]},
        "sh0": {"codebook": color_codebook.tolist(), "files": FILES["sh0"]},
        "sharp": {"f_px": float(scene.f_px), "image_width": int(scene.image_width),
                  "image_height": int(scene.image_height)},
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        members = {"meta.json": json.dumps(meta, separators=(",", ":")).encode("utf-8"), **encoded}
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            bundle.writestr(info, data)
    return buffer.getvalue()

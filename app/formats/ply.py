"""The reference PLY layout (what apple/ml-sharp's `save_ply` writes), vectorised and streamable.

Layout (binary little-endian; docs/formats.md shows it with its header):

- ``vertex`` x N, 14 float32 properties ``x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2
  rot_0 rot_1 rot_2 rot_3``: positions in metres (OpenCV axes: x right, y down, z forward), the
  degree-0 SH coefficient of the *sRGB* colour, ``f_dc = (srgb - 0.5) / SH_C0``, the opacity logit
  ``log(o / (1 - o))`` (±inf when o is 0 or 1), log standard deviations in metres, and the unit
  quaternion (w, x, y, z);
- then seven one-property elements (128 bytes in all): ``extrinsic`` 16 float (identity 4x4, row-major),
  ``intrinsic`` 9 float ``[f, 0, W/2, 0, f, H/2, 0, 0, 1]`` (pixels of the original image), ``image_size``
  2 uint ``[W, H]``, ``frame`` 2 int ``[1, N]``, ``disparity`` 2 float (the 0.1 and 0.9 quantiles of 1/z,
  linear interpolation, as ``torch.quantile`` computes them in float32), ``color_space`` 1 uchar (0 = sRGB)
  and ``version`` 3 uchar ``[1, 5, 0]``.

The file holds ``663 + len(str(N))`` header bytes, ``56 * N`` vertex bytes and the 128-byte tail.
``vertex_only=True`` writes the vertex element alone (``356 + len(str(N))`` header bytes, no tail): several
3DGS viewers refuse elements they do not know.

Everything is computed column by column with numpy on blocks of rows (no per-row Python), and
`iter_ply_chunks` yields the file block by block so that an HTTP response never holds a second copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from app.formats.limits import check_gaussian_count
from app.formats.ply_header import parse_ply_header
from app.gaussians import SH_C0, GaussianScene, linear_to_srgb, srgb_to_linear

VERTEX_PROPERTIES: tuple[str, ...] = (
    "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)
"""The 14 float32 vertex properties, in file order."""

VERTEX_BYTES = 4 * len(VERTEX_PROPERTIES)
"""56 bytes per Gaussian."""

# (element name = property name, PLY type, numpy dtype, count) of the metadata after the vertices.
_TAIL_ELEMENTS: tuple[tuple[str, str, str, int], ...] = (
    ("extrinsic", "float", "<f4", 16),
    ("intrinsic", "float", "<f4", 9),
    ("image_size", "uint", "<u4", 2),
    ("frame", "int", "<i4", 2),
    ("disparity", "float", "<f4", 2),
    ("color_space", "uchar", "u1", 1),
    ("version", "uchar", "u1", 3),
)
TAIL_BYTES = sum(np.dtype(dt).itemsize * count for _, _, dt, count in _TAIL_ELEMENTS)
"""128 bytes of metadata after the vertex element."""

PLY_VERSION = (1, 5, 0)
COLOR_SPACE_SRGB = 0
COLOR_SPACE_LINEAR = 1

_DEFAULT_CHUNK_BYTES = 4 << 20


def ply_header(scene: GaussianScene, vertex_only: bool = False) -> bytes:
    """The ASCII header, ``end_header\\n`` included (``663 + len(str(N))`` bytes for the full layout)."""
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {scene.num_gaussians}"]
    lines += [f"property float {name}" for name in VERTEX_PROPERTIES]
    if not vertex_only:
        for name, ply_type, _, count in _TAIL_ELEMENTS:
            lines += [f"element {name} {count}", f"property {ply_type} {name}"]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def ply_num_bytes(scene: GaussianScene, vertex_only: bool = False) -> int:
    """Exact size of the file in bytes: header + 56 N (+ 128 for the metadata tail)."""
    n = scene.num_gaussians
    return len(ply_header(scene, vertex_only)) + VERTEX_BYTES * n + (0 if vertex_only else TAIL_BYTES)


def disparity_quantiles(z: np.ndarray, q: tuple[float, float] = (0.1, 0.9)) -> np.ndarray:
    """Quantiles of the disparity 1/z, computed like ``torch.quantile(1 / z, q)`` on float32.

    Linear interpolation between the two neighbouring order statistics, with the rank ``q * (N - 1)``
    and the weight computed in float32 as torch does; any NaN gives NaN, an empty input gives NaN.
    O(N) (a partial sort), where torch sorts everything.

    Args:
        z: (N,) depths in metres (any float dtype; converted to float32 first).
        q: the quantile levels in [0, 1].

    Returns:
        (len(q),) float32 disparities in 1/metres.
    """
    with np.errstate(divide="ignore"):
        disparity = np.float32(1.0) / np.asarray(z, dtype=np.float32).reshape(-1)
    n = disparity.shape[0]
    levels = np.asarray(q, dtype=np.float32)
    if n == 0 or np.isnan(disparity).any():
        return np.full(levels.shape, np.nan, dtype=np.float32)
    ranks = levels * np.float32(n - 1)  # float32, as torch multiplies a float32 q by the last index
    below = np.floor(ranks).astype(np.int64)
    above = np.minimum(np.ceil(ranks).astype(np.int64), n - 1)
    weights = ranks - below.astype(np.float32)
    ordered = np.partition(disparity, np.unique(np.concatenate([below, above])))
    lo, hi = ordered[below], ordered[above]
    with np.errstate(invalid="ignore"):
        # torch.lerp: lo + w (hi - lo) for w < 0.5, else hi - (hi - lo)(1 - w), each with one rounding.
        diff = (hi - lo).astype(np.float64)
        w = weights.astype(np.float64)
        small = lo.astype(np.float64) + w * diff
        large = hi.astype(np.float64) - diff * (1.0 - w)
        out = np.where(np.abs(weights) < 0.5, small, large).astype(np.float32)
    # lerp between equal infinities is that infinity, not NaN
    return np.where(lo == hi, lo, out).astype(np.float32)


def ply_tail(scene: GaussianScene) -> bytes:
    """The 128 metadata bytes after the vertex element (camera, frame count, disparity range, version)."""
    w, h, f = scene.image_width, scene.image_height, scene.f_px
    values = {
        "extrinsic": np.eye(4, dtype=np.float64).reshape(-1),
        "intrinsic": np.array([f, 0, w * 0.5, 0, f, h * 0.5, 0, 0, 1], dtype=np.float64),
        "image_size": np.array([w, h], dtype=np.int64),
        "frame": np.array([1, scene.num_gaussians], dtype=np.int64),
        "disparity": disparity_quantiles(scene.positions[:, 2]),
        "color_space": np.array([COLOR_SPACE_SRGB]),
        "version": np.array(PLY_VERSION),
    }
    return b"".join(values[name].astype(dt).tobytes() for name, _, dt, _ in _TAIL_ELEMENTS)


def _fill_vertex_rows(scene: GaussianScene, start: int, stop: int, out: np.ndarray) -> None:
    """Write rows [start, stop) of the vertex element into `out`, an (stop - start, 14) float32 array."""
    rows = slice(start, stop)
    out[:, 0:3] = scene.positions[rows]
    f_dc = out[:, 3:6]
    np.subtract(linear_to_srgb(scene.colors[rows]), np.float32(0.5), out=f_dc)
    np.divide(f_dc, np.float32(SH_C0), out=f_dc)
    opacity = np.asarray(scene.opacities[rows], dtype=np.float32)
    scales = np.asarray(scene.scales[rows], dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(opacity / (np.float32(1.0) - opacity), out=out[:, 6])
        np.log(scales, out=out[:, 7:10])
    out[:, 10:14] = scene.rotations[rows]


def _rows_per_chunk(chunk_bytes: int) -> int:
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    return max(1, chunk_bytes // VERTEX_BYTES)


def iter_ply_chunks(
    scene: GaussianScene, vertex_only: bool = False, chunk_bytes: int = _DEFAULT_CHUNK_BYTES
) -> Iterator[bytes | memoryview]:
    """The PLY file as consecutive pieces: the header, vertex blocks of about `chunk_bytes`, the tail.

    Each vertex block is a fresh buffer (safe to keep after the next one is produced), so memory stays
    at one block besides what the consumer holds. ``b"".join(iter_ply_chunks(scene))`` is the file.
    """
    rows_per_chunk = _rows_per_chunk(chunk_bytes)
    yield ply_header(scene, vertex_only)
    n = scene.num_gaussians
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        block = np.empty((stop - start, len(VERTEX_PROPERTIES)), dtype="<f4")
        _fill_vertex_rows(scene, start, stop, block)
        yield memoryview(block).cast("B")
    if not vertex_only:
        yield ply_tail(scene)


def encode_ply(scene: GaussianScene, vertex_only: bool = False) -> bytes:
    """The whole PLY file in memory (`ply_num_bytes` bytes)."""
    return b"".join(iter_ply_chunks(scene, vertex_only))


def _parse_ply(raw: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The elements of a binary PLY as structured arrays (views on `raw`), keyed by element name, up to the
    first element with a list property (a mesh's faces; it and the elements after it are skipped).

    Every count is checked against the file's size first (`parse_ply_header`), so nothing is allocated for a
    count the file cannot hold.

    Raises:
        ValueError: a malformed or lying header, an ASCII PLY (``binary only``), or list properties in the
            vertex element (``list properties``).
    """
    raw = memoryview(raw).cast("B")
    header = parse_ply_header(raw)
    if header.format == "ascii":
        raise ValueError("unsupported PLY format 'ascii' (binary only)")
    data: dict[str, np.ndarray] = {}
    offset = header.size
    for element in header.elements:
        if element.has_lists:
            if element.name == "vertex":
                raise ValueError("PLY list properties are not supported")
            break
        dtype = np.dtype([(p.name, header.byte_order + p.kind) for p in element.properties])
        if offset + dtype.itemsize * element.count > len(raw):
            raise ValueError(f"PLY truncated in element {element.name!r}")
        data[element.name] = np.frombuffer(raw, dtype=dtype, count=element.count, offset=offset)
        offset += dtype.itemsize * element.count
    return data


def read_ply(source: str | os.PathLike[str] | bytes | bytearray | memoryview, *,
             max_gaussians: int | None = None) -> GaussianScene:
    """Read a 3DGS PLY (this layout, or any binary PLY with the 14 vertex properties) into a scene.

    Inverts the encoding: opacity = sigmoid(logit), scales = exp(log scales), colours = sRGB -> linear of
    ``0.5 + SH_C0 * f_dc`` (no conversion when ``color_space`` says linear). The camera comes from the
    ``intrinsic`` and ``image_size`` elements when present; otherwise f_px, width and height are 0.
    Extra properties (f_rest_*, normals, ...) are ignored.

    Args:
        source: a path, or the file's bytes.
        max_gaussians: refuse more vertices (`SceneTooLargeError`); None: `MAX_GAUSSIANS`.
    """
    raw = Path(source).read_bytes() if isinstance(source, (str, os.PathLike)) else source
    data = _parse_ply(raw)
    if "vertex" not in data:
        raise ValueError("PLY has no vertex element")
    v = data["vertex"]
    check_gaussian_count(len(v), "the PLY header", max_gaussians)
    missing = [p for p in VERTEX_PROPERTIES if p not in (v.dtype.names or ())]
    if missing:
        raise ValueError(f"PLY vertex element lacks {missing}")

    def cols(names: list[str]) -> np.ndarray:
        return np.stack([v[name].astype(np.float32) for name in names], axis=1)

    sh = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    colors = np.float32(0.5) + np.float32(SH_C0) * sh
    color_space = int(data["color_space"]["color_space"][0]) if "color_space" in data else COLOR_SPACE_SRGB
    if color_space == COLOR_SPACE_SRGB:
        colors = srgb_to_linear(colors)
    logits = v["opacity"].astype(np.float32)
    with np.errstate(over="ignore"):
        opacities = (np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))).astype(np.float32)
    f_px, width, height = 0.0, 0, 0
    if "intrinsic" in data:
        f_px = float(data["intrinsic"]["intrinsic"][0])
    if "image_size" in data:
        width, height = (int(x) for x in data["image_size"]["image_size"][:2])
    with np.errstate(over="ignore"):  # log scales over 88 are infinite scales, which the renderer refuses
        scales = np.exp(cols(["scale_0", "scale_1", "scale_2"]))
    return GaussianScene(
        positions=cols(["x", "y", "z"]),
        scales=scales,
        rotations=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        colors=colors.astype(np.float32),
        opacities=opacities,
        f_px=f_px,
        image_width=width,
        image_height=height,
    )

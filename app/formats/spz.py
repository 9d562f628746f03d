"""Niantic's compressed ``.spz`` format (gzip container, version 3 by default; version 2 on request).

The file is one gzip stream of a 16-byte little-endian header followed by one section per attribute,
each holding all Gaussians in turn (point-major inside a section):

- header: magic ``0x5053474e`` ("NGSP") u32, version u32, numPoints u32, shDegree u8 (0 here),
  fractionalBits u8, flags u8 (0: not antialiased), reserved u8 (0);
- positions, 9 bytes each: x, y, z as 24-bit two's-complement fixed point, little-endian,
  ``round(coordinate * 2**fractionalBits)``; fractionalBits is 12 (1/4096 m = 0.24 mm, range ±2048 m)
  unless the scene is wider, then as many as fit (positions outside ±2**23 steps are clipped);
- alphas, 1 byte: ``round(opacity * 255)``;
- colors, 3 bytes: ``round(f_dc * 0.15 * 255 + 127.5)`` with ``f_dc = (srgb - 0.5) / SH_C0``, the SH DC
  coefficient of the sRGB colour (as in the PLY), so sRGB [0, 1] uses bytes 60..195 (a step of 0.0074);
- scales, 3 bytes: ``round((log(scale) + 10) * 16)``, log standard deviations in steps of 1/16 (±3 %);
- rotations: version 3, 4 bytes: "smallest three" of the unit quaternion in (x, y, z, w) order, a
  little-endian u32 holding the index of the largest-magnitude component in bits 30-31 and, for the other
  three components in increasing index order from bit 29 down, a sign bit and a 9-bit magnitude
  ``round(511 * |c| / sqrt(1/2))``, the quaternion being negated first so that the largest component is
  positive; version 2, 3 bytes: ``round(c * 127.5 + 127.5)`` for x, y, z with w made non-negative.
- no spherical-harmonic section (shDegree 0).

Every byte quantity is rounded half away from zero and clipped to [0, 255].

Axes: SPZ stores RUB coordinates (x right, y up, z back: OpenGL / three.js), while our scenes are in the
OpenCV camera frame RDF (x right, y down, z forward). The two differ by a 180-degree rotation about x, so
encoding maps positions (x, y, z) -> (x, -y, -z) and quaternions (w, x, y, z) -> (w, x, -y, -z); decoding
applies the same map again (it is its own inverse). Viewers that honour the SPZ convention therefore show
the photo upright, with the camera at the origin looking down -z.

Not stored: the camera (pass it to `decode_spz`). Decoding gives colours, opacities and scales within the
quantisation steps above and positions within half a fixed-point step. Rotations: version 3 within 0.002
per quaternion component (covariances within 0.5 %); version 2 stores x, y, z to 0.004 but derives w,
which is then up to ~0.1 off when small (covariances within ~25 %), hence version 3 by default.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from isal import isal_zlib

from app.formats.limits import check_deflate_ratio, check_gaussian_count, gunzip_exactly, gunzip_head
from app.formats.splat import quantize_uint8
from app.formats.threads import usable_cpus
from app.gaussians import SH_C0, GaussianScene, largest_components, linear_to_srgb, srgb_to_linear

SPZ_MAGIC = 0x5053474E
HEADER_STRUCT = struct.Struct("<IIIBBBB")
HEADER_BYTES = HEADER_STRUCT.size  # 16
COLOR_SCALE = 0.15
DEFAULT_FRACTIONAL_BITS = 12
SUPPORTED_VERSIONS = (2, 3)
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15}
_SQRT1_2 = np.float32(math.sqrt(0.5))
_MAG_MAX = 511  # 9-bit magnitudes of the smallest-three encoding
_FIXED_MAX = (1 << 23) - 1
# For each index of the largest component, the three other columns in increasing order.
_KEPT_COLUMNS = np.array([[c for c in range(4) if c != largest] for largest in range(4)], dtype=np.int64)

# RDF <-> RUB: a 180-degree rotation about x (its own inverse).
_FLIP_POSITION = np.array([1, -1, -1], dtype=np.float32)
_FLIP_QUATERNION_XYZW = np.array([1, -1, -1, 1], dtype=np.float32)


class SpzHeader(NamedTuple):
    """The 16-byte header at the start of the decompressed stream."""

    magic: int
    version: int
    num_points: int
    sh_degree: int
    fractional_bits: int
    flags: int
    reserved: int


def choose_fractional_bits(positions: np.ndarray) -> int:
    """12, or fewer when the largest finite |coordinate| (metres) would not fit in 24 signed bits."""
    low, high = (float(positions.min()), float(positions.max())) if positions.size else (0.0, 0.0)
    if math.isfinite(low) and math.isfinite(high):  # the usual case, without a pass to find the finite ones
        largest = max(-low, high)
    else:
        finite = np.abs(positions[np.isfinite(positions)])
        largest = float(finite.max()) if finite.size else 0.0
    if largest * (1 << DEFAULT_FRACTIONAL_BITS) <= _FIXED_MAX:
        return DEFAULT_FRACTIONAL_BITS
    return max(1, min(DEFAULT_FRACTIONAL_BITS, math.floor(math.log2(_FIXED_MAX / largest))))


def _pack_positions(positions: np.ndarray, fractional_bits: int, out: np.ndarray) -> None:
    """(N, 3) metres, RUB -> `out`, (N, 9) uint8: three 24-bit little-endian fixed-point numbers per row.

    Scaling by a power of two is exact in float32 and so is adding 0.5 below 2**23, the clipping range.
    """
    scaled = np.multiply(positions, np.float32(1 << fractional_bits), dtype=np.float32)
    if not np.isfinite(scaled).all():
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=_FIXED_MAX, neginf=-_FIXED_MAX - 1)
    scaled += np.float32(0.5)
    np.floor(scaled, out=scaled)
    np.clip(scaled, -_FIXED_MAX - 1, _FIXED_MAX, out=scaled)
    fixed = np.ascontiguousarray(scaled, dtype="<i4")
    out.reshape(-1, 3, 3)[:] = fixed.view(np.uint8).reshape(-1, 3, 4)[:, :, :3]


def _unpack_positions(packed: np.ndarray, fractional_bits: int) -> np.ndarray:
    """(N, 9) uint8 -> (N, 3) float32 metres."""
    b = packed.reshape(-1, 3, 3).astype(np.int32)
    fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    return (fixed.astype(np.float32) / np.float32(1 << fractional_bits)).astype(np.float32)


def _unit_quaternions_xyzw(rotations_wxyz: np.ndarray) -> np.ndarray:
    """(N, 4) (w, x, y, z) -> normalised (N, 4) float32 (x, y, z, w); degenerate rows -> identity."""
    q = np.asarray(rotations_wxyz, dtype=np.float32)[:, [1, 2, 3, 0]]
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    good = np.isfinite(norm) & (norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(good, q / np.where(good, norm, 1), np.array([0, 0, 0, 1], dtype=np.float32))
    return q.astype(np.float32)


def _pack_smallest_three(q: np.ndarray) -> np.ndarray:
    """(N, 4) unit (x, y, z, w) -> (N, 4) uint8, the version-3 "smallest three" encoding.

    Column by column (no per-row gathers): each component's 10-bit field (sign bit, 9-bit magnitude) is made
    for all four, then the three kept ones of each row are picked by the index of the largest.
    """
    columns = np.ascontiguousarray(q.T)  # (4, N)
    largest, negate, magnitudes = largest_components(columns)  # the first of equal magnitudes, as the reference
    largest = largest.astype(np.uint32)
    scaled = magnitudes / _SQRT1_2
    scaled *= np.float32(_MAG_MAX)
    scaled += np.float32(0.5)
    np.floor(scaled, out=scaled)
    np.minimum(scaled, _MAG_MAX, out=scaled)
    fields = scaled.astype(np.uint32)
    fields |= ((columns < 0) ^ negate).astype(np.uint32) << np.uint32(9)
    # Kept columns, in increasing order, for largest = 0, 1, 2, 3: (1 2 3), (0 2 3), (0 1 3), (0 1 2).
    comp = largest << np.uint32(30)
    comp |= np.where(largest == 0, fields[1], fields[0]) << np.uint32(20)
    comp |= np.where(largest <= 1, fields[2], fields[1]) << np.uint32(10)
    comp |= np.where(largest == 3, fields[2], fields[3])
    return comp.astype("<u4", copy=False).view(np.uint8).reshape(-1, 4)


def _unpack_smallest_three(packed: np.ndarray) -> np.ndarray:
    """(N, 4) uint8 -> (N, 4) float32 unit (x, y, z, w)."""
    comp = np.ascontiguousarray(packed).view("<u4").reshape(-1).astype(np.uint32)
    largest = (comp >> np.uint32(30)).astype(np.int64)
    fields = np.stack([(comp >> np.uint32(shift)) & np.uint32(0x3FF) for shift in (20, 10, 0)], axis=1)
    kept = _SQRT1_2 * (fields & np.uint32(_MAG_MAX)).astype(np.float32) / np.float32(_MAG_MAX)
    kept = np.where(fields >> np.uint32(9), -kept, kept).astype(np.float32)
    q = np.empty((comp.shape[0], 4), dtype=np.float32)
    np.put_along_axis(q, _KEPT_COLUMNS[largest], kept, axis=1)
    rest = np.sqrt(np.maximum(np.float32(0), np.float32(1) - np.square(kept).sum(axis=1, keepdims=True)))
    np.put_along_axis(q, largest[:, None], rest.astype(np.float32), axis=1)
    return q


def _pack_first_three(q: np.ndarray) -> np.ndarray:
    """(N, 4) unit (x, y, z, w) -> (N, 3) uint8, the version-2 encoding of x, y, z with w >= 0."""
    q = np.where(q[:, 3:4] < 0, -q, q)
    return quantize_uint8(q[:, :3] * np.float32(127.5) + np.float32(127.5))


def _unpack_first_three(packed: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N, 4) float32 unit (x, y, z, w)."""
    xyz = packed.astype(np.float32) / np.float32(127.5) - np.float32(1)
    w = np.sqrt(np.maximum(np.float32(0), np.float32(1) - np.square(xyz).sum(axis=1, keepdims=True)))
    return np.concatenate([xyz, w], axis=1).astype(np.float32)


def _payload_sections(scene: GaussianScene, version: int, fractional_bits: int | None
                      ) -> tuple[np.ndarray, list[tuple[slice, Callable[[], None]]]]:
    """The uncompressed stream's buffer, its header written, and for each section (the header's slice includes
    the positions) its slice and the call that fills it (the calls are independent: any order, any thread)."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"SPZ version {version} cannot be written (use one of {SUPPORTED_VERSIONS})")
    n = scene.num_gaussians
    positions = np.multiply(scene.positions, _FLIP_POSITION, dtype=np.float32)
    bits = choose_fractional_bits(positions) if fractional_bits is None else int(fractional_bits)
    if not 1 <= bits <= 23:
        raise ValueError(f"fractional_bits must be in [1, 23], got {bits}")
    rotation_bytes = 4 if version >= 3 else 3
    ends = np.cumsum([HEADER_BYTES + 9 * n, n, 3 * n, 3 * n, rotation_bytes * n]).tolist()
    out = np.empty(ends[-1], dtype=np.uint8)
    out[:HEADER_BYTES] = np.frombuffer(HEADER_STRUCT.pack(SPZ_MAGIC, version, n, 0, bits, 0, 0), np.uint8)
    slices = [slice(start, stop) for start, stop in zip([0, *ends[:-1]], ends, strict=True)]
    sections = [out[HEADER_BYTES:ends[0]], *(out[piece] for piece in slices[1:])]

    def alphas() -> None:
        sections[1][:] = quantize_uint8(np.multiply(scene.opacities, np.float32(255), dtype=np.float32))

    def colors() -> None:
        f_dc = (linear_to_srgb(scene.colors) - np.float32(0.5)) / np.float32(SH_C0)
        sections[2][:] = quantize_uint8(f_dc * np.float32(COLOR_SCALE * 255) + np.float32(127.5)).reshape(-1)

    def scales() -> None:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_scales = np.log(np.asarray(scene.scales, dtype=np.float32))
        sections[3][:] = quantize_uint8((log_scales + np.float32(10)) * np.float32(16)).reshape(-1)

    def rotations() -> None:
        q = _unit_quaternions_xyzw(scene.rotations) * _FLIP_QUATERNION_XYZW
        sections[4][:] = (_pack_smallest_three(q) if version >= 3 else _pack_first_three(q)).reshape(-1)

    fills = [lambda: _pack_positions(positions, bits, sections[0].reshape(n, 9)), alphas, colors, scales, rotations]
    return out, list(zip(slices, fills, strict=True))


def spz_payload(scene: GaussianScene, *, version: int = 3, fractional_bits: int | None = None) -> np.ndarray:
    """The uncompressed SPZ stream (header and sections) for `scene`: (20 or 19) * N + 16 uint8."""
    out, sections = _payload_sections(scene, version, fractional_bits)
    for _, fill in sections:
        fill()
    return out


GZIP_LEVEL = 2
"""ISA-L's deflate level (0-3) of our .spz files. Measured on a full-size prediction (docs/formats.md): level 2
is 0.7 % larger than zlib's level 6 (Niantic's writer's) and several times faster; level 1 is 1.5 % larger."""

DEFLATE_BLOCK = 1 << 20
"""Bytes of the stream deflated as one piece (on its own thread, from an empty window): 1 MiB costs ~0.1 % in size."""

_GZIP_HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])  # deflate, no flags, mtime 0, OS unknown


def _deflate(block: memoryview, level: int, last: bool) -> bytes:
    """Raw deflate of `block`, ending on a byte boundary (a sync flush) or, for the `last`, the final block."""
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    return compressor.compress(block) + compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH)


def _gzip_sections(data: np.ndarray, sections: list[tuple[slice, Callable[[], None]]], level: int,
                   workers: int | None) -> bytes:
    """One gzip member (RFC 1952, mtime 0) of `data`, each section filled (its call) and then deflated in
    `DEFLATE_BLOCK` pieces, all on `workers` threads (None: every CPU this process may use), filling and
    deflating overlapping. The pieces depend only on the sections, so the bytes do not depend on the threads."""
    view = memoryview(data).cast("B")
    total = len(view)
    with ThreadPoolExecutor(max_workers=max(1, workers or usable_cpus())) as pool:
        filled = [pool.submit(fill) for _, fill in sections]
        pieces: list[Future[bytes]] = []
        for (section, _), done in zip(sections, filled, strict=True):
            done.result()
            for start in range(section.start, section.stop, DEFLATE_BLOCK):
                stop = min(start + DEFLATE_BLOCK, section.stop)
                pieces.append(pool.submit(_deflate, view[start:stop], level, stop == total))
        body = [piece.result() for piece in pieces]
    trailer = struct.pack("<II", isal_zlib.crc32(view), total & 0xFFFFFFFF)
    return b"".join([_GZIP_HEADER, *body, trailer])


def encode_spz(
    scene: GaussianScene, *, version: int = 3, compresslevel: int = GZIP_LEVEL, fractional_bits: int | None = None,
    workers: int | None = None,
) -> bytes:
    """The scene as a .spz file: `spz_payload` in one gzip member (mtime 0, so the bytes are reproducible), each
    section deflated as soon as it is made, on `workers` threads.

    Args:
        scene: the Gaussians (OpenCV axes; converted to SPZ's RUB).
        version: 3 (smallest-three rotations, the default) or 2 (x, y, z bytes; older readers).
        compresslevel: ISA-L deflate level 0-3 (`GZIP_LEVEL`).
        fractional_bits: fixed-point fraction bits of positions; None picks 12 or fewer (see the module
            docstring).
        workers: threads; None uses every CPU.
    """
    if not 0 <= compresslevel <= 3:
        raise ValueError(f"compresslevel must be an ISA-L level 0-3, got {compresslevel}")
    payload, sections = _payload_sections(scene, version, fractional_bits)
    return _gzip_sections(payload, sections, compresslevel, workers)


def decode_spz(
    data: bytes | bytearray | memoryview, *, f_px: float = 0.0, image_width: int = 0, image_height: int = 0,
    max_gaussians: int | None = None,
) -> GaussianScene:
    """Parse a gzip .spz file (versions 2 and 3) back into a scene in OpenCV axes.

    Opacities are the stored bytes / 255, scales exp(byte / 16 - 10), colours sRGB -> linear of
    ``0.5 + SH_C0 * f_dc`` (not clipped: SPZ may store colours slightly outside [0, 1]); spherical-harmonic
    coefficients of degree >= 1, if any, are skipped.

    Args:
        data: the file's bytes.
        f_px, image_width, image_height: the camera, which .spz does not store.
        max_gaussians: refuse more points (`SceneTooLargeError`); None: `MAX_GAUSSIANS`.

    Nothing is decompressed beyond what the header's point count needs, and that count is checked against
    the file's size first (`app.formats.limits`).
    """
    head = gunzip_head(data, HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise ValueError("SPZ stream shorter than its 16-byte header")
    header = SpzHeader(*HEADER_STRUCT.unpack(head))
    if header.magic != SPZ_MAGIC:
        raise ValueError(f"not an SPZ stream (magic 0x{header.magic:08x})")
    if header.version not in SUPPORTED_VERSIONS:
        raise ValueError(f"SPZ version {header.version} is not supported (only {SUPPORTED_VERSIONS})")
    if header.sh_degree not in _SH_DIM:
        raise ValueError(f"SPZ shDegree {header.sh_degree} is not supported")
    n = header.num_points
    check_gaussian_count(n, "the .spz header", max_gaussians)
    rotation_bytes = 4 if header.version >= 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rotation_bytes * n, _SH_DIM[header.sh_degree] * 3 * n]
    check_deflate_ratio(HEADER_BYTES + sum(sizes), len(data), f"the .spz header ({n:,} points)")
    try:
        raw = np.frombuffer(gunzip_exactly(data, HEADER_BYTES + sum(sizes)), dtype=np.uint8)
    except ValueError as error:
        raise ValueError(f"SPZ stream of {n:,} points: {error}") from None
    sections = np.split(raw[HEADER_BYTES:HEADER_BYTES + sum(sizes)], np.cumsum(sizes)[:-1])

    positions = _unpack_positions(sections[0].reshape(n, 9), header.fractional_bits) * _FLIP_POSITION
    opacities = sections[1].astype(np.float32) / np.float32(255)
    f_dc = (sections[2].reshape(n, 3).astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(
        COLOR_SCALE)
    colors = srgb_to_linear(np.float32(0.5) + np.float32(SH_C0) * f_dc)
    scales = np.exp(sections[3].reshape(n, 3).astype(np.float32) / np.float32(16) - np.float32(10))
    if header.version >= 3:
        q = _unpack_smallest_three(sections[4].reshape(n, 4))
    else:
        q = _unpack_first_three(sections[4].reshape(n, 3))
    q = q * _FLIP_QUATERNION_XYZW
    return GaussianScene(
        positions=positions.astype(np.float32),
        scales=scales.astype(np.float32),
        rotations=np.ascontiguousarray(q[:, [3, 0, 1, 2]], dtype=np.float32),
        colors=colors.astype(np.float32),
        opacities=opacities,
        f_px=f_px,
        image_width=image_width,
        image_height=image_height,
    )

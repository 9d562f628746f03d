"""Binary glTF 2.0 (``.glb``) with Khronos's ``KHR_gaussian_splatting`` extension: the Gaussians as one point
primitive, and the photo's camera as a glTF camera node.

The extension's specification: https://github.com/KhronosGroup/glTF/tree/main/extensions/2.0/Khronos/
KHR_gaussian_splatting (followed as of commit 63770cc, April 2026, the editorial review after which the
scales are linear). The file is a 12-byte header (magic ``glTF``, version 2, total length), a JSON chunk
(padded with spaces to 4 bytes) and a BIN chunk; the BIN chunk holds one tightly packed buffer view per
attribute, in this order, 60 bytes per Gaussian in all:

- ``POSITION``: VEC3 float, metres, with the accessor's exact ``min`` / ``max`` (glTF requires them);
- ``KHR_gaussian_splatting:ROTATION``: VEC4 float, the unit quaternion in glTF's (x, y, z, w) order, rotating the
  Gaussian's principal axes into the node's space;
- ``KHR_gaussian_splatting:SCALE``: VEC3 float, the standard deviations in metres along those axes (*linear*,
  not the PLY's logarithms);
- ``KHR_gaussian_splatting:OPACITY``: SCALAR float in [0, 1] (not the PLY's logit);
- ``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0``: VEC3 float, the degree-0 SH coefficient of the sRGB colour,
  ``f_dc = (srgb - 0.5) / SH_C0``, the PLY's ``f_dc_*`` (colour space ``srgb_rec709_display``);
- ``COLOR_0``: VEC4 unsigned byte normalized, the fallback for viewers without the extension (a coloured point
  cloud): the *linear* colour (glTF's ``COLOR_0`` is linear, the spec says to decode the sRGB) and the opacity,
  ``round(255 * value)``.

Every float is stored as float32, so everything reads back as the PLY holds it (the scales and opacities up to
the rounding of one ``exp`` or sigmoid). The primitive's extension object is ``{"kernel": "ellipse",
"colorSpace": "srgb_rec709_display", "projection": "perspective", "sortingMethod": "cameraDistance"}``, its
mode ``POINTS`` (0); ``KHR_gaussian_splatting`` is in ``extensionsUsed`` only (not required: a viewer without it
shows the points).

Axes: glTF's (right-handed, +Y up, +Z forward, -X right: "LUF", which Niantic's SPZ library also names the GLB
coordinate system), the PLY's OpenCV axes (x right, y down, z forward) turned 180 degrees about z: positions
(x, y, z) are stored as (-x, -y, z), and a quaternion q = (w, x, y, z) as the product t q of that turn
t = (0, 0, 0, 1) and q, which is (x, y, z, w) = (-y, x, w, -z) in glTF's order (the Gaussian's axes turn with the
scene). PlayCanvas's splat-transform converts a PLY to ``.glb`` the same way, so both files hold the same numbers
(``COLOR_0`` aside: it writes the sRGB values there). A glTF camera looks down its local -Z, so the ``camera``
node (at the origin, turned 180 degrees about y: rotation (0, 1, 0, 0)) looks down +Z, up +Y, right -X: it views
the scene as the photo did. It is a perspective camera with ``yfov = 2 atan(H / 2 f)``, ``aspectRatio = W / H``,
``znear`` 1 cm and no ``zfar``; its ``extras`` hold ``f_px``, ``image_width`` and ``image_height`` exactly. No
camera is written for a scene without one (f_px or the size 0).

A scene of 0 Gaussians is a valid glTF holding only the camera (glTF accessors cannot be empty).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from app import __version__
from app.formats.splat import quantize_uint8
from app.gaussians import SH_C0, GaussianScene, linear_to_srgb

EXTENSION = "KHR_gaussian_splatting"
GLB_MAGIC = 0x46546C67  # b"glTF"
GLB_VERSION = 2
CHUNK_JSON = 0x4E4F534A  # b"JSON"
CHUNK_BIN = 0x004E4942  # b"BIN\0"
FLOAT = 5126
UNSIGNED_BYTE = 5121
ARRAY_BUFFER = 34962
POINTS = 0
ZNEAR_M = 0.01
"""The camera's near plane in metres (SHARP's nearest Gaussians lie tens of centimetres away)."""
SPLAT_PROPERTIES: dict[str, str] = {
    "kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective",
    "sortingMethod": "cameraDistance",
}
"""The primitive's ``KHR_gaussian_splatting`` object."""

# (semantic, accessor type, component type, normalized, bytes per Gaussian), in buffer order.
ATTRIBUTES: tuple[tuple[str, str, int, bool, int], ...] = (
    ("POSITION", "VEC3", FLOAT, False, 12),
    (f"{EXTENSION}:ROTATION", "VEC4", FLOAT, False, 16),
    (f"{EXTENSION}:SCALE", "VEC3", FLOAT, False, 12),
    (f"{EXTENSION}:OPACITY", "SCALAR", FLOAT, False, 4),
    (f"{EXTENSION}:SH_DEGREE_0_COEF_0", "VEC3", FLOAT, False, 12),
    ("COLOR_0", "VEC4", UNSIGNED_BYTE, True, 4),
)
BYTES_PER_GAUSSIAN = sum(size for *_, size in ATTRIBUTES)
"""60 bytes of BIN chunk per Gaussian."""

CAMERA_ROTATION_XYZW = [0.0, 1.0, 0.0, 0.0]
"""The camera node's rotation, 180 degrees about y: it looks down +Z, where the scene lies."""

# OpenCV (RDF) -> glTF (LUF): a 180-degree rotation about z.
_FLIP_POSITION = np.array([-1, -1, 1], dtype=np.float32)


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def gltf_camera(scene: GaussianScene) -> dict[str, Any] | None:
    """The glTF camera object of the photo's pinhole camera, or None when the scene has none."""
    f, width, height = float(scene.f_px), int(scene.image_width), int(scene.image_height)
    if not (f > 0 and width > 0 and height > 0):
        return None
    return {
        "name": "photo",
        "type": "perspective",
        "perspective": {"yfov": 2 * math.atan(height / (2 * f)), "aspectRatio": width / height, "znear": ZNEAR_M},
        "extras": {"f_px": f, "image_width": width, "image_height": height},
    }


def gltf_document(scene: GaussianScene, position_min: list[float], position_max: list[float]) -> dict[str, Any]:
    """The glTF JSON of `scene` (its BIN chunk laid out as `ATTRIBUTES` says); `position_min` / `position_max`:
    the per-axis extremes of the stored (glTF-axes) float32 positions."""
    n = scene.num_gaussians
    document: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": f"sharp-serve {__version__}"},
        "extensionsUsed": [EXTENSION],
        "scene": 0,
        "scenes": [{"name": "sharp", "nodes": []}],
        "nodes": [],
    }
    if n:
        views, accessors, attributes, offset = [], [], {}, 0
        for index, (semantic, kind, component, normalized, size) in enumerate(ATTRIBUTES):
            views.append({"buffer": 0, "byteOffset": offset, "byteLength": size * n, "target": ARRAY_BUFFER})
            accessor: dict[str, Any] = {"bufferView": index, "componentType": component, "count": n, "type": kind}
            if normalized:
                accessor["normalized"] = True
            if semantic == "POSITION":
                accessor.update(min=position_min, max=position_max)
            accessors.append(accessor)
            attributes[semantic] = index
            offset += size * n
        document.update(
            buffers=[{"byteLength": offset}], bufferViews=views, accessors=accessors,
            meshes=[{"name": "gaussians", "primitives": [
                {"attributes": attributes, "mode": POINTS, "extensions": {EXTENSION: dict(SPLAT_PROPERTIES)}}]}],
        )
        document["nodes"].append({"name": "gaussians", "mesh": 0})
    camera = gltf_camera(scene)
    if camera is not None:
        document["cameras"] = [camera]
        document["nodes"].append({"name": "camera", "camera": 0, "rotation": CAMERA_ROTATION_XYZW})
    document["scenes"][0]["nodes"] = list(range(len(document["nodes"])))
    return document


def _fill_bin(scene: GaussianScene, positions_gltf: np.ndarray, out: np.ndarray) -> None:
    """Write the BIN chunk's data (`ATTRIBUTES` order, `BYTES_PER_GAUSSIAN` * N bytes) into `out` (uint8, its
    start 4-byte aligned); `positions_gltf`: (N, 3) float32, the positions already in glTF axes."""
    n = scene.num_gaussians
    views, offset = [], 0
    for _, _, component, _, size in ATTRIBUTES:
        dtype = "<f4" if component == FLOAT else "u1"
        width = size // np.dtype(dtype).itemsize
        views.append(out[offset:offset + size * n].view(dtype).reshape(n, width))
        offset += size * n
    positions, rotations, scales, opacities, sh0, color0 = views

    positions[:] = positions_gltf
    q = np.asarray(scene.rotations, dtype=np.float32)  # (w, x, y, z) -> the turn about z times q, as (x, y, z, w)
    rotations[:, 0] = -q[:, 2]  # not np.negative(..., out=): numpy 2.4.6 gets strided float32 in and out wrong
    rotations[:, 1] = q[:, 1]
    rotations[:, 2] = q[:, 0]
    rotations[:, 3] = -q[:, 3]
    norm = np.sqrt(np.einsum("ij,ij->i", rotations, rotations))[:, None]
    good = np.isfinite(norm) & (norm > 0)
    np.divide(rotations, norm, out=rotations, where=good)
    rotations[~good[:, 0]] = (0, 0, 0, 1)  # a degenerate quaternion: no rotation
    scales[:] = scene.scales
    np.clip(np.asarray(scene.opacities, dtype=np.float32).reshape(n, 1), 0, 1, out=opacities)
    np.subtract(linear_to_srgb(scene.colors), np.float32(0.5), out=sh0)
    np.divide(sh0, np.float32(SH_C0), out=sh0)
    color0[:, :3] = quantize_uint8(np.asarray(scene.colors, dtype=np.float32) * np.float32(255))
    color0[:, 3] = quantize_uint8(opacities[:, 0] * np.float32(255))


def encode_glb(scene: GaussianScene) -> bytes:
    """The scene as a binary glTF file (see the module docstring): ``28 + JSON + 60 N`` bytes, the JSON about
    2 KB, reproducible byte for byte."""
    n = scene.num_gaussians
    positions = np.asarray(scene.positions, dtype=np.float32) * _FLIP_POSITION
    low = [float(positions[:, axis].min()) for axis in range(3)] if n else []  # column by column: 50x faster
    high = [float(positions[:, axis].max()) for axis in range(3)] if n else []
    if not all(math.isfinite(v) for v in low + high):  # min and max are NaN or infinite when any value is
        raise ValueError("a glTF file needs finite positions (its POSITION accessor's min and max)")
    text = json.dumps(gltf_document(scene, low, high), separators=(",", ":"), allow_nan=False)
    json_chunk = _pad4(text.encode("utf-8"), b" ")
    bin_bytes = BYTES_PER_GAUSSIAN * n
    total = 12 + 8 + len(json_chunk) + (8 + bin_bytes if n else 0)
    out = np.empty(total, dtype=np.uint8)
    head = struct.pack("<III", GLB_MAGIC, GLB_VERSION, total) + struct.pack("<II", len(json_chunk), CHUNK_JSON)
    out[:20] = np.frombuffer(head, dtype=np.uint8)
    out[20:20 + len(json_chunk)] = np.frombuffer(json_chunk, dtype=np.uint8)
    if n:
        start = 20 + len(json_chunk)
        out[start:start + 8] = np.frombuffer(struct.pack("<II", bin_bytes, CHUNK_BIN), dtype=np.uint8)
        _fill_bin(scene, positions, out[start + 8:])
    return out.tobytes()

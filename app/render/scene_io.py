"""Load a scene to render from a file or bytes: our PLY, any 3DGS PLY, .splat, .spz, .sog, or a frame of a .sogv.

- PLY: read by `app.formats.read_ply` (binary PLYs with the 14 vertex properties ``x y z f_dc_0..2 opacity
  scale_0..2 rot_0..3``: opacity is a logit, scales are logs, the colour is ``0.5 + SH_C0 f_dc``). Extra vertex
  properties (normals, the higher spherical-harmonic bands ``f_rest_*``, ...) and extra elements are ignored:
  the renderer shows the view-independent (degree-0) colour. Elements after one with list properties (a
  mesh's faces) are skipped. An ASCII PLY, or one with list properties in its vertex element, is read with
  `plyfile` (up to `MAX_PLYFILE_BYTES`) and its vertex element goes through the same reader.
- ``.splat`` (antimatter15, 32 bytes per Gaussian; axes as stored), ``.spz`` (Niantic, gzip) and ``.sog``
  (PlayCanvas, a zip; ours store the camera) through `app.formats.decode_splat` / `decode_spz` / `decode_sog`.
- ``.sogv`` (a clip's scenes, `app.formats.sequence`): frame `frame` (default 0), with the clip's camera.

The camera: our PLY stores the photo's focal length and size (``intrinsic`` and ``image_size`` elements).
Other files carry no camera; then `f_px` and `size` given by the caller are used, else the default
``DEFAULT_SIZE`` (1024 x 768) with the focal length of a 30 mm (35 mm-equivalent) lens, what `predict`
assumes for photos without EXIF. Given values always override the file's.

Every count a file claims is checked against its size before anything is allocated, and an .spz is never
decompressed beyond what its point count needs (`app.formats.limits`).

Every failure is a `RenderError`: ``not_a_splat`` (unreadable, truncated, a count the file cannot hold,
missing properties), ``unsupported_format``, ``too_large`` (more than `MAX_GAUSSIANS`, a decompression bomb, an
ASCII PLY over `MAX_PLYFILE_BYTES`).
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.focal import F_PX_MAX, F_PX_MIN
from app.formats import decode_sog, decode_splat, decode_spz, read_ply
from app.formats.limits import MAX_GAUSSIANS, SceneTooLargeError, check_gaussian_count
from app.formats.ply import VERTEX_PROPERTIES
from app.formats.ply_header import parse_ply_header
from app.formats.sequence import MAGIC as SEQUENCE_MAGIC
from app.formats.sequence import SequenceError, decode_sequence_frame
from app.gaussians import GaussianScene
from app.imaging import focal_length_to_px
from app.render.camera import check_size
from app.render.errors import RenderError

DEFAULT_SIZE = (1024, 768)
"""Image size (width, height) assumed for files without a camera."""
DEFAULT_FOCAL_35MM = 30.0
"""35 mm-equivalent focal length (mm) assumed for files without a camera."""
MAX_PLYFILE_BYTES = 8_000_000
"""ASCII PLYs, and PLYs with list properties in their vertex element, are read (by plyfile, a row at a time) up
to this size."""
FORMAT_NAMES = ("ply", "splat", "spz", "sog", "sogv")


def detect_format(data: bytes | memoryview, name: str | None = None) -> str:
    """``ply``, ``splat``, ``spz`` or ``sog`` from the file name's extension, else from the content."""
    if name:
        suffix = Path(name).suffix.lower().lstrip(".")
        if suffix in FORMAT_NAMES:
            return suffix
    head = bytes(data[:4])
    if head.startswith(b"ply"):
        return "ply"
    if head.startswith(b"\x1f\x8b"):
        return "spz"
    if head.startswith(b"PK\x03\x04"):
        return "sog"
    if bytes(data[:8]) == SEQUENCE_MAGIC:
        return "sogv"
    if len(data) and len(data) % 32 == 0 and not name:
        return "splat"
    raise RenderError("unsupported_format", f"{name or 'the data'} is not a PLY, .splat, .spz, .sog or .sogv file")


def _ply_via_plyfile(raw: bytes, max_gaussians: int) -> GaussianScene:
    """An ASCII PLY, or one with list properties in its vertex element: the vertex element, as binary, through
    `read_ply`. plyfile reads such files a row at a time, so only files up to `MAX_PLYFILE_BYTES` are taken, and
    only after every count in the header has been checked against the file's size."""
    from plyfile import PlyData, PlyParseError

    header = parse_ply_header(raw)  # counts against the size, before plyfile allocates for them
    if len(raw) > MAX_PLYFILE_BYTES:
        raise SceneTooLargeError(f"an ASCII PLY, or one with list properties in its vertex element, is read up to "
                                 f"{MAX_PLYFILE_BYTES // 10**6} MB (this one is {len(raw) / 1e6:.1f} MB); convert it "
                                 "to a binary PLY without lists")
    vertex_element = header.element("vertex")
    check_gaussian_count(vertex_element.count if vertex_element else 0, "the PLY header", max_gaussians)
    try:
        vertex = PlyData.read(io.BytesIO(raw))["vertex"].data
    except PlyParseError as error:
        raise ValueError(str(error)) from None
    missing = [p for p in VERTEX_PROPERTIES if p not in (vertex.dtype.names or ())]
    if missing:
        raise ValueError(f"PLY vertex element lacks {missing}")
    table = np.empty(len(vertex), dtype=[(p, "<f4") for p in VERTEX_PROPERTIES])
    for prop in VERTEX_PROPERTIES:
        table[prop] = vertex[prop]
    header_lines = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertex)}"]
    header_lines += [f"property float {p}" for p in VERTEX_PROPERTIES] + ["end_header", ""]
    return read_ply("\n".join(header_lines).encode("ascii") + table.tobytes())


def _decode(data: bytes, fmt: str, max_gaussians: int, frame: int | None = None) -> GaussianScene:
    if fmt == "sogv":
        return decode_sequence_frame(data, frame or 0, max_gaussians=max_gaussians)
    if frame is not None:
        raise RenderError("bad_option", f"--frame is for a .sogv sequence, not a {fmt.upper()} file")
    if fmt == "splat":
        return decode_splat(data, max_gaussians=max_gaussians)
    if fmt == "spz":
        return decode_spz(data, max_gaussians=max_gaussians)
    if fmt == "sog":
        return decode_sog(data, max_gaussians=max_gaussians)
    try:
        return read_ply(data, max_gaussians=max_gaussians)
    except SceneTooLargeError:
        raise
    except ValueError as error:
        if "binary only" not in str(error) and "list properties" not in str(error):
            raise
    return _ply_via_plyfile(data, max_gaussians)


def load_scene(source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, name: str | None = None,
               f_px: float | None = None, size: tuple[int, int] | None = None,
               max_gaussians: int = MAX_GAUSSIANS, frame: int | None = None) -> GaussianScene:
    """Read a scene and make sure it has a camera (see the module docstring).

    Args:
        source: a path, or the file's bytes.
        name: the file name when `source` is bytes (its extension picks the format; else the content does).
        f_px: focal length in pixels of the image size (overrides the file's).
        size: (width, height) in pixels the focal length refers to (overrides the file's).
        max_gaussians: refuse larger scenes (``too_large``).
        frame: the frame of a ``.sogv`` sequence (0-based; default 0); for another format, ``bad_option``.

    Raises:
        RenderError: see the module docstring.
        OSError: the path cannot be read.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or str(source)
        data = Path(source).read_bytes()
    else:
        data = bytes(source)
    fmt = detect_format(data, name)
    try:
        scene = _decode(data, fmt, max_gaussians, frame)
    except SequenceError as error:
        raise RenderError("not_a_splat", str(error)) from None
    except RenderError:
        raise
    except SceneTooLargeError as error:
        raise RenderError("too_large", f"{fmt.upper()} file refused: {error}") from None
    except (ValueError, OSError, EOFError, zlib.error, KeyError, IndexError) as error:
        raise RenderError("not_a_splat", f"not a readable Gaussian-splat {fmt.upper()} file: {error}") from error
    if scene.num_gaussians > max_gaussians:
        raise RenderError("too_large", f"the scene has {scene.num_gaussians:,} Gaussians (limit {max_gaussians:,})")
    return with_camera(scene, f_px=f_px, size=size)


def with_camera(scene: GaussianScene, *, f_px: float | None = None,
                size: tuple[int, int] | None = None) -> GaussianScene:
    """`scene` with its camera completed: given values first, then the scene's own, then the defaults.

    A new `size` without `f_px` for a scene that has a camera scales its focal length like `input_camera`.
    `f_px` must be in [F_PX_MIN, F_PX_MAX] (`app.focal`, as a prediction's); a file's outside it is ignored.
    """
    if f_px is not None and not (F_PX_MIN <= f_px <= F_PX_MAX):
        raise RenderError("bad_camera", f"f_px must be a number of pixels in [{F_PX_MIN:g}, {F_PX_MAX:g}], got {f_px}")
    # A file's camera is used when it is one a caller could give (a focal length of 1e-300 px overflows).
    has_camera = F_PX_MIN <= scene.f_px <= F_PX_MAX and scene.image_width > 0 and scene.image_height > 0
    if size is not None:
        check_size(*size)
        width, height = size
    elif has_camera:
        width, height = scene.image_width, scene.image_height
    else:
        width, height = DEFAULT_SIZE
    if f_px is not None:
        focal = f_px
    elif has_camera:
        focal = scene.f_px * max(width / scene.image_width, height / scene.image_height)
    else:
        focal = focal_length_to_px(DEFAULT_FOCAL_35MM, width, height)
    return replace(scene, f_px=float(focal), image_width=int(width), image_height=int(height))

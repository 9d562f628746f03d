"""Output formats for a predicted `GaussianScene`, and the registry the HTTP service and CLI expose.

- ``ply``: the reference 3DGS PLY (56 bytes per Gaussian + camera metadata), what apple/ml-sharp writes;
  streamed in blocks. Option ``vertex_only`` drops the metadata elements for picky viewers.
- ``splat``: antimatter15's 32-byte records for web viewers. Options ``sort``, ``y_up``.
- ``spz``: Niantic's gzip-compressed format, about 1/4 of the PLY (RUB axes inside, converted for you).
  Options ``version`` (3 or 2), ``compresslevel``.

JSON (`app.formats.json`) is not in the registry: it also takes request metadata and a size cap.

Usage::

    fmt = FORMATS["spz"]
    body = fmt.encode(scene)                  # bytes, or an iterator of byte blocks (ply)
    data = encode_to_bytes("ply", scene)      # always bytes
    write_file("spz", scene, "out.spz")       # atomically (temporary file, then rename)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.formats.files import write_atomically
from app.formats.ply import encode_ply, iter_ply_chunks, ply_num_bytes, read_ply, write_ply
from app.formats.splat import decode_splat, encode_splat
from app.formats.spz import decode_spz, encode_spz
from app.gaussians import GaussianScene

Encoded = bytes | Iterable[bytes | memoryview]
"""What an encoder returns: the whole file, or its consecutive pieces (to stream)."""


@dataclass(frozen=True)
class OutputFormat:
    """One downloadable format.

    Attributes:
        name: the key in `FORMATS`, as used in ``POST /predict/{format}`` and ``--format``.
        extension: the file extension with its dot, e.g. ".ply".
        media_type: the HTTP Content-Type to send.
        encode: ``encode(scene, **options)`` -> bytes or an iterable of byte blocks.
        description: one line for help texts.
        num_bytes: ``num_bytes(scene, **options)`` -> exact size, when known without encoding (for a
            Content-Length header), else None.
    """

    name: str
    extension: str
    media_type: str
    encode: Callable[..., Encoded]
    description: str
    num_bytes: Callable[..., int] | None = None


def _splat_num_bytes(scene: GaussianScene, **_options: Any) -> int:
    return 32 * scene.num_gaussians


FORMATS: dict[str, OutputFormat] = {
    "ply": OutputFormat(
        name="ply", extension=".ply", media_type="application/x-ply", encode=iter_ply_chunks,
        description="3DGS PLY as apple/ml-sharp writes it (56 B/Gaussian + camera metadata)",
        num_bytes=ply_num_bytes,
    ),
    "splat": OutputFormat(
        name="splat", extension=".splat", media_type="application/x-splat", encode=encode_splat,
        description="antimatter15 .splat for web viewers (32 B/Gaussian, 8-bit colour and rotation)",
        num_bytes=_splat_num_bytes,
    ),
    "spz": OutputFormat(
        name="spz", extension=".spz", media_type="application/x-spz", encode=encode_spz,
        description="Niantic .spz, gzip-compressed (about 1/4 of the PLY), RUB axes",
    ),
}


def get_format(name: str) -> OutputFormat:
    """The registered format called `name` (case-insensitive, a leading dot allowed).

    Raises:
        KeyError: naming the known formats.
    """
    key = name.lower().lstrip(".")
    if key not in FORMATS:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[key]


def encode_to_bytes(name: str, scene: GaussianScene, **options: Any) -> bytes:
    """Encode `scene` in the format `name` and return the whole file."""
    result = get_format(name).encode(scene, **options)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    return b"".join(result)


def write_file(name: str, scene: GaussianScene, path: str | os.PathLike[str], **options: Any) -> Path:
    """Encode `scene` as format `name` into `path`, atomically: a temporary file in the same
    directory is renamed into place only once complete, so a failure never leaves a partial file."""
    result = get_format(name).encode(scene, **options)
    return write_atomically(path, [result] if isinstance(result, (bytes, bytearray, memoryview)) else result)


__all__ = [
    "FORMATS",
    "Encoded",
    "OutputFormat",
    "decode_splat",
    "decode_spz",
    "encode_ply",
    "encode_splat",
    "encode_spz",
    "encode_to_bytes",
    "get_format",
    "iter_ply_chunks",
    "ply_num_bytes",
    "read_ply",
    "write_file",
    "write_ply",
]

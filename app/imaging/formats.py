"""Which formats we read, how a format is recognised from its bytes, and which files in a folder are images.

Everything Pillow can decode is accepted, except EPS (it runs Ghostscript on the input), MPEG (Pillow
reads only its header and returns blank pixels) and Pillow's stub formats that have no decoder (BUFR,
GRIB, HDF5, WMF). HEIC/HEIF goes through pillow_heif and is recognised by its `ftyp` box, whatever the
file is called. The format is always taken from the content, never from the file name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from PIL import Image, ImageFile

from app.imaging.errors import UnsupportedImageError

HEIF_FORMAT: str = "HEIF"
_HEIF_EXTENSIONS: tuple[str, ...] = (".heic", ".heif")

# Formats Pillow lists as openable that we refuse; see the module docstring.
_DENIED_PILLOW_FORMATS: frozenset[str] = frozenset({"EPS", "MPEG"})

_HEVC_BRANDS: frozenset[bytes] = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
)
_AVIF_BRANDS: frozenset[bytes] = frozenset({b"avif", b"avis"})
_GENERIC_HEIF_BRANDS: frozenset[bytes] = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})


def pillow_formats() -> tuple[str, ...]:
    """Pillow format names `load_image` lets Pillow identify (every registered opener we do not deny)."""
    Image.init()
    return tuple(fmt for fmt in Image.OPEN if not _is_denied_format(fmt))


def _is_denied_format(fmt: str) -> bool:
    if fmt in _DENIED_PILLOW_FORMATS:
        return True
    factory = Image.OPEN.get(fmt, (None, None))[0]
    return isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)


def supported_extensions() -> list[str]:
    """Lowercase file extensions with the dot (".jpg", ".png", ".heic", ...), sorted.

    Every extension Pillow registers for a format it can open (less the denied formats, see the module
    docstring) plus ".heic" and ".heif".
    """
    formats = pillow_formats()
    extensions = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in formats}
    extensions.update(_HEIF_EXTENSIONS)
    return sorted(extensions)


def is_supported_image_path(path: Path) -> bool:
    """Whether the file name's suffix is a supported image extension, ignoring case (".Jpg" counts)."""
    return Path(path).suffix.lower() in supported_extensions()


def find_images(path: Path) -> list[Path]:
    """The image files to process for `path`.

    A file gives `[path]` when its extension is supported and raises `UnsupportedImageError` otherwise.
    A directory is searched recursively (symlinked directories are not followed) and gives its files with
    supported extensions, sorted. A path that does not exist raises `FileNotFoundError`.
    """
    path = Path(path)
    if path.is_dir():
        extensions = set(supported_extensions())
        found = [
            Path(root) / filename
            for root, _dirs, filenames in os.walk(path)
            for filename in filenames
            if Path(filename).suffix.lower() in extensions
        ]
        return sorted(p for p in found if p.is_file())
    if path.is_file():
        if is_supported_image_path(path):
            return [path]
        raise UnsupportedImageError(
            f"{path.name!r} does not have a supported image extension "
            f"(for example .jpg, .png, .webp, .tif, .bmp, .gif, .heic)."
        )
    raise FileNotFoundError(f"No such file or directory: {str(path)!r}")


def heif_route(data: bytes) -> Literal["heif", "pillow"]:
    """Pick the decoder: pillow_heif when the ISO-BMFF `ftyp` box names an HEVC or generic HEIF brand."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return "pillow"
    box_size = int.from_bytes(data[0:4], "big")
    end = min(len(data), box_size) if box_size >= 16 else 16
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _HEVC_BRANDS:
        return "heif"
    if brands & _AVIF_BRANDS:
        # libheif here has no AV1 decoder; Pillow's own AVIF plugin reads these.
        return "pillow"
    return "heif" if brands & _GENERIC_HEIF_BRANDS else "pillow"


def known_signature(data: bytes) -> str | None:
    """The image format whose magic bytes `data` starts with, if it is one we read."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data.startswith(b"BM") and (
        len(data) < 18 or int.from_bytes(data[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)
    ):
        return "BMP"
    if data[4:8] == b"ftyp" and data[8:12] in _AVIF_BRANDS:
        return "AVIF"
    return None

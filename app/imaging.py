"""Image loading: bytes or a file in, an upright RGB uint8 array and a focal length in pixels out.

This follows the image loading of apple/ml-sharp (`sharp.utils.io.load_rgb`), keeping its results where
they are sound and departing from it where it is broken:

* Formats. Everything Pillow can decode, except EPS (it runs Ghostscript on the input), MPEG (Pillow
  reads only its header and returns blank pixels) and Pillow's stub formats that have no decoder
  (BUFR, GRIB, HDF5, WMF). HEIC/HEIF goes through `pillow_heif.open_heif(..., convert_hdr_to_8bit=True)`
  and is recognised by its `ftyp` box, whatever the file is called. The format is always taken from the
  content, never from the file name.
* EXIF. The Exif sub-IFD (0x8769) tags, named by `ExifTags.TAGS`, are merged with the IFD0 tags, named
  by `TiffTags.TAGS_V2`; IFD0 wins on duplicates, as in the reference. EXIF that cannot be parsed is
  treated as absent instead of failing the image.
* Orientation. 3, 6 and 8 are applied exactly as the reference does (180°, 90° clockwise, 90°
  counter-clockwise). Unlike the reference, which ignores them, the mirrored orientations 2, 4, 5 and 7
  are applied too, with the same result as `PIL.ImageOps.exif_transpose`. HEIF is never rotated here:
  libheif already applies the container's rotation and mirroring while decoding, and pillow_heif resets
  the EXIF Orientation to 1, so turning it again would rotate twice.
* Focal length, in mm at 35 mm-equivalent: `FocalLengthIn35mmFilm`, else `FocalLenIn35mmFilm`; if neither
  is usable (missing or below 1), `FocalLength`, multiplied by 8.4 when below 10 (the reference's crude
  guess for a phone's physical focal length); else 30 mm. Zero, negative, NaN and infinite values count
  as missing and fall through to the next option (the reference would return f_px = 0 for a zero
  `FocalLength`). Pixels: `f_px = f_mm * sqrt(W² + H²) / sqrt(36² + 24²)` with W, H after rotation.
* Pixels. Every mode becomes (H, W, 3) uint8; plain 8-bit RGB is returned bit-identical to
  `np.asarray(img)`. The reference passes palette indices and 2-channel LA through; here palettes are
  looked up, alpha is dropped without compositing (as the reference does for RGBA), gray is repeated
  into three channels, CMYK/YCbCr/LAB/HSV use Pillow's conversion, 16-bit gray (`I;16*`, and `I`, which
  is read as 16-bit data clipped to [0, 65535]) becomes round(v / 257), and float (`F`) images are
  scaled by 255 when all finite values lie in [0, 1], else min-max stretched, with NaN/inf mapped to 0.
  16-bit RGB(A) PNG/TIFF reach us already reduced to 8 bits by Pillow's decoder (the high byte), as in
  the reference. ICC profiles are not applied, also as in the reference.
* Failures raise `ImageError` subclasses with a machine-readable `code`, never a raw Pillow error:
  unknown data is `UnsupportedImageError`, data with an image signature that does not decode (truncated,
  garbled) is `CorruptImageError`, and too many pixels is `ImageTooLargeError`, decided from the header
  before any pixel is decoded. Without `max_pixels`, Pillow's `Image.MAX_IMAGE_PIXELS` is the limit,
  enforced as an error rather than Pillow's warning; Pillow itself refuses more than twice that
  whatever `max_pixels` says. Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` is never
  changed, so truncated files fail instead of loading half gray. A missing file raises the usual
  `FileNotFoundError`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageFile, TiffTags, UnidentifiedImageError

LOGGER = logging.getLogger(__name__)

FocalSource = Literal["exif", "default"]

DEFAULT_FOCAL_LENGTH_MM: float = 30.0
"""35 mm-equivalent focal length assumed when the EXIF has none (the reference's default)."""

MAX_SIDE_PX: int = 65_535
"""Longest accepted image side in pixels (the JPEG/HEIF limit); longer sides are rejected as absurd."""

_FULL_FRAME_DIAGONAL_MM: float = math.sqrt(36.0**2 + 24.0**2)
_PHONE_FOCAL_SCALE: float = 8.4
_EXIF_IFD: int = 0x8769
_HEIF_FORMAT: str = "HEIF"
_HEIF_EXTENSIONS: tuple[str, ...] = (".heic", ".heif")

# Formats Pillow lists as openable that we refuse; see the module docstring.
_DENIED_PILLOW_FORMATS: frozenset[str] = frozenset({"EPS", "MPEG"})

_HEVC_BRANDS: frozenset[bytes] = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
)
_AVIF_BRANDS: frozenset[bytes] = frozenset({b"avif", b"avis"})
_GENERIC_HEIF_BRANDS: frozenset[bytes] = frozenset({b"mif1", b"msf1", b"mif2", b"miaf"})

_ORIENTATION_NAMES: dict[int, str] = {
    2: "mirrored horizontally",
    3: "rotated 180°",
    4: "mirrored vertically",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}
_SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageError(ValueError):
    """The input could not be turned into an RGB image; `code` is machine-readable, `str(e)` is for people."""

    code: ClassVar[str] = "invalid_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedImageError(ImageError):
    """Not an image, or an image format this service does not read."""

    code: ClassVar[str] = "unsupported_image"


class CorruptImageError(ImageError):
    """Looks like a supported image but cannot be decoded (truncated, garbled, zero-sized)."""

    code: ClassVar[str] = "corrupt_image"


class ImageTooLargeError(ImageError):
    """More pixels than allowed, or a side longer than `MAX_SIDE_PX`; decided before decoding."""

    code: ClassVar[str] = "image_too_large"


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded, upright image and its intrinsics.

    Attributes:
        rgb: (H, W, 3) uint8, C-contiguous and writable, after EXIF orientation.
        f_px: Focal length in pixels for this W and H.
        f_px_source: "exif" if any EXIF focal length was used, else "default".
        focal_length_35mm: The 35 mm-equivalent focal length in mm that `f_px` was computed from.
        name: A file stem for outputs, e.g. "photo" for photo.jpg; "image" when unknown.
        format: Pillow's format name ("JPEG", "PNG", "MPO", ...), or "HEIF" for HEIC/HEIF.
    """

    rgb: np.ndarray
    f_px: float
    f_px_source: FocalSource
    focal_length_35mm: float
    name: str
    format: str

    @property
    def width(self) -> int:
        """W in pixels."""
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        """H in pixels."""
        return int(self.rgb.shape[0])


def focal_length_to_px(focal_length_35mm: float, width: int, height: int) -> float:
    """Convert a 35 mm-equivalent focal length (mm) to pixels for a W x H image.

    The image diagonal is matched to the 36 x 24 mm full-frame diagonal:
    `f_mm * sqrt(W² + H²) / sqrt(36² + 24²)`, evaluated in the reference's order of operations.
    """
    diagonal_px = math.sqrt(float(width) ** 2 + float(height) ** 2)
    return float(focal_length_35mm) * diagonal_px / _FULL_FRAME_DIAGONAL_MM


def _pillow_formats() -> tuple[str, ...]:
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
    extensions = {
        ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in _pillow_formats()
    }
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


def load_image(
    source: bytes | Path | str,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
) -> LoadedImage:
    """Decode an image, make it upright RGB uint8 and work out its focal length in pixels.

    Args:
        source: The encoded file as bytes, or a path to it (str or Path). The format is sniffed from the
            content, not from the file name.
        name: Name for outputs. Its directory and last suffix are stripped ("uploads/IMG_1.HEIC" gives
            "IMG_1"). Defaults to the path's stem, or "image" for bytes.
        max_pixels: Largest accepted W * H; checked against the header before decoding. None means
            Pillow's `Image.MAX_IMAGE_PIXELS`.

    Returns:
        The `LoadedImage`, with `rgb` of shape (H, W, 3) after EXIF orientation.

    Raises:
        UnsupportedImageError: Empty input, or not a format we read.
        CorruptImageError: A recognised format that does not decode.
        ImageTooLargeError: More than `max_pixels` pixels, or a side above `MAX_SIDE_PX`.
        FileNotFoundError: `source` is a path that does not exist.
    """
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        default_name = "image"
    else:
        data = Path(source).read_bytes()
        default_name = Path(source).stem
    out_name = _stem(name) if name is not None else (default_name or "image")

    if not data:
        raise UnsupportedImageError("The file is empty (0 bytes); expected an image.")

    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    if _heif_route(data) == "heif":
        img, fmt = _decode_heif(data, limit)
        apply_orientation = False
    else:
        img, fmt = _decode_pillow(data, limit)
        apply_orientation = True

    exif = _read_exif(img)
    rgb = _to_rgb_uint8(img)
    if apply_orientation:
        rgb = _apply_orientation(rgb, exif.get("Orientation", 1))

    height, width = rgb.shape[:2]
    focal_mm, focal_source = _focal_length_35mm(exif)
    f_px = focal_length_to_px(focal_mm, width, height)
    LOGGER.debug(
        "Loaded %s (%s) %dx%d, focal length %.3g mm (%s), f_px %.2f",
        out_name, fmt, width, height, focal_mm, focal_source, f_px,
    )
    return LoadedImage(
        rgb=rgb,
        f_px=f_px,
        f_px_source=focal_source,
        focal_length_35mm=focal_mm,
        name=out_name,
        format=fmt,
    )


def _stem(name: str) -> str:
    """The last path component of `name` (either slash) without its final suffix; "image" if empty."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    stem, dot, _suffix = base.rpartition(".")
    if dot and stem:
        base = stem
    return base or "image"


def _heif_route(data: bytes) -> Literal["heif", "pillow"]:
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


def _check_size(width: int, height: int, limit: int | None, fmt: str) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"The {fmt} image has an invalid size of {width}x{height} pixels.")
    if max(width, height) > MAX_SIDE_PX:
        raise ImageTooLargeError(
            f"The image is {width}x{height} pixels; sides longer than {MAX_SIDE_PX} pixels are not accepted."
        )
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"The image is {width}x{height} = {width * height:,} pixels, more than the limit of {limit:,}."
        )


def _decode_heif(data: bytes, limit: int | None) -> tuple[Image.Image, str]:
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        width, height = heif.size
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            f"The HEIF image could not be read; it is truncated or corrupt ({exc})."
        ) from exc
    _check_size(width, height, limit, _HEIF_FORMAT)
    try:
        img = heif.to_pillow()
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            f"The HEIF image could not be decoded; it is truncated or corrupt ({exc})."
        ) from exc
    return img, _HEIF_FORMAT


def _decode_pillow(data: bytes, limit: int | None) -> tuple[Image.Image, str]:
    """Identify with Pillow, check the header size, then decode the first frame."""
    try:
        with warnings.catch_warnings():
            # We enforce Pillow's pixel limit ourselves, as ImageTooLargeError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_pillow_formats())
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The image has too many pixels ({exc}).") from exc
    except UnidentifiedImageError as exc:
        signature = _known_signature(data)
        if signature is not None:
            raise CorruptImageError(
                f"The data starts like a {signature} file but could not be read; it is truncated or corrupt."
            ) from exc
        raise UnsupportedImageError(
            "The data is not an image in a supported format "
            "(JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF, ...)."
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImageError(f"The image header could not be read ({exc}).") from exc

    fmt = img.format or "unknown"
    width, height = img.size
    _check_size(width, height, limit, fmt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The image has too many pixels ({exc}).") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            f"The {fmt} image could not be decoded; it is truncated or corrupt ({exc})."
        ) from exc
    return img, fmt


def _known_signature(data: bytes) -> str | None:
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


def _read_exif(img: Image.Image) -> dict[str, Any]:
    """Exif sub-IFD tags by `ExifTags.TAGS` name, overwritten by IFD0 tags by `TiffTags.TAGS_V2` name."""
    try:
        ifd0 = img.getexif()
        sub_ifd = ifd0.get_ifd(_EXIF_IFD)
        merged = {ExifTags.TAGS[k]: v for k, v in sub_ifd.items() if k in ExifTags.TAGS}
        merged.update({TiffTags.TAGS_V2[k].name: v for k, v in ifd0.items() if k in TiffTags.TAGS_V2})
    except MemoryError:
        raise
    except Exception as exc:
        LOGGER.warning("Ignoring unreadable EXIF data: %s", exc)
        return {}
    return merged


def _finite_positive(value: Any) -> float | None:
    """`value` as a float if it is a finite number > 0, else None (IFDRational x/0 reads as NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _focal_length_35mm(exif: Mapping[str, Any]) -> tuple[float, FocalSource]:
    """The 35 mm-equivalent focal length in mm and where it came from; rules in the module docstring."""
    for key in ("FocalLengthIn35mmFilm", "FocalLenIn35mmFilm"):
        value = _finite_positive(exif.get(key))
        if value is not None and value >= 1.0:
            return value, "exif"
    value = _finite_positive(exif.get("FocalLength"))
    if value is not None:
        return (value * _PHONE_FOCAL_SCALE if value < 10.0 else value), "exif"
    return DEFAULT_FOCAL_LENGTH_MM, "default"


def _apply_orientation(rgb: np.ndarray, orientation: Any) -> np.ndarray:
    """Make (H, W, 3) pixels upright for EXIF Orientation 1-8; other values are ignored with a warning."""
    if orientation == 1:
        return rgb
    if orientation == 2:
        out = rgb[:, ::-1]
    elif orientation == 3:
        out = rgb[::-1, ::-1]
    elif orientation == 4:
        out = rgb[::-1, :]
    elif orientation == 5:
        out = rgb.transpose(1, 0, 2)
    elif orientation == 6:
        out = np.rot90(rgb, k=-1)
    elif orientation == 7:
        out = rgb[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        out = np.rot90(rgb, k=1)
    else:
        LOGGER.warning("Ignoring unknown EXIF orientation %r.", orientation)
        return rgb
    LOGGER.debug("Applied EXIF orientation %d (%s).", orientation, _ORIENTATION_NAMES[orientation])
    return np.ascontiguousarray(out)


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 for any Pillow mode; the per-mode rules are in the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img)
    if mode in ("RGBA", "RGBX"):
        return np.ascontiguousarray(np.asarray(img)[:, :, :3])
    if mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        # round(v / 257) without ties, since 257 is odd.
        return _gray_to_rgb(((values * 2 + 257) // 514).astype(np.uint8))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(img, dtype=np.float64)))
    if mode == "La":
        img, mode = img.convert("LA"), "LA"
    if mode in ("P", "PA"):
        # Via RGBA so Pillow does not warn about palette transparency; the colours are the palette's.
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"))[:, :, :3])
    try:
        converted = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise UnsupportedImageError(f"Images with pixel mode {mode!r} are not supported ({exc}).") from exc
    return np.array(converted)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W, 3), C-contiguous."""
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """(H, W) floats -> uint8: x255 if the finite values lie in [0, 1], else min-max; NaN/inf -> 0."""
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if not finite.any():
        return out
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif hi > lo:
        scaled = (values - lo) / (hi - lo) * 255.0
    else:
        return out
    out[finite] = np.rint(np.clip(scaled[finite], 0.0, 255.0)).astype(np.uint8)
    return out

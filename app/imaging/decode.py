"""Decoding: bytes or a file in, an upright RGB uint8 array and a focal length in pixels out.

This follows the image loading of apple/ml-sharp (`sharp.utils.io.load_rgb`), keeping its results where
they are sound and departing from it where it is broken (formats: `app.imaging.formats`; EXIF and the
focal length: `app.imaging.exif`):

* Orientation. 3, 6 and 8 are applied exactly as the reference does (180°, 90° clockwise, 90°
  counter-clockwise). Unlike the reference, which ignores them, the mirrored orientations 2, 4, 5 and 7
  are applied too. The result is `PIL.ImageOps.exif_transpose`'s, pixel for pixel, but is a numpy view
  (flips and transposes of the decoded array) instead of a transposed copy of the whole image, and takes
  the orientation from the merged EXIF as the reference does (`exif_transpose` reads IFD0 only). HEIF is
  never rotated here: libheif already applies the container's rotation and mirroring while decoding,
  and pillow_heif resets the EXIF Orientation to 1, so turning it again would rotate twice.
* Pixels. Every mode becomes (H, W, 3) uint8; plain 8-bit RGB is bit-identical to `np.asarray(img)`.
  The reference passes palette indices and 2-channel LA through; here palettes are looked up, alpha is
  dropped without compositing (as the reference does for RGBA), gray is repeated into three channels,
  CMYK/YCbCr/LAB/HSV use Pillow's conversion, 16-bit gray (`I;16*`, and `I`, which is read as 16-bit
  data clipped to [0, 65535]) becomes round(v / 257), and float (`F`) images are scaled by 255 when all
  finite values lie in [0, 1], else min-max stretched, with NaN/inf mapped to 0. 16-bit RGB(A) PNG/TIFF
  reach us already reduced to 8 bits by Pillow's decoder (the high byte), as in the reference. ICC
  profiles are not applied, also as in the reference.
* Memory. Pillow holds a decoded RGB image at 4 bytes a pixel. The 8-bit modes are converted to RGB and
  copied out a strip of rows at a time into the one (H, W, 3) array, so the peak is that plus the 3-byte
  result, not the 2 x 3 bytes more that `np.asarray(img)` (`img.tobytes()`) or a whole-image
  `img.convert("RGB")` would add. Orientation adds nothing (views).
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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pillow_heif
from PIL import Image, UnidentifiedImageError

from app.imaging.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from app.imaging.exif import FocalSource, focal_length_35mm, focal_length_to_px, read_exif
from app.imaging.formats import HEIF_FORMAT, heif_route, known_signature, pillow_formats

LOGGER = logging.getLogger(__name__)

MAX_SIDE_PX: int = 65_535
"""Longest accepted image side in pixels (the JPEG/HEIF limit); longer sides are rejected as absurd."""

_STRIP_BYTES: int = 1 << 22
"""Output bytes converted per strip of rows (4 MiB), bounding the temporary copies."""

# EXIF Orientation -> the flips/transposes of an (H, W, 3) array that make it upright (views, no copies).
_ORIENTATIONS: dict[int, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    2: ("mirrored horizontally", lambda a: a[:, ::-1]),
    3: ("rotated 180°", lambda a: a[::-1, ::-1]),
    4: ("mirrored vertically", lambda a: a[::-1]),
    5: ("transposed", lambda a: a.transpose(1, 0, 2)),
    6: ("rotated 90° clockwise", lambda a: a[::-1].transpose(1, 0, 2)),
    7: ("transversed", lambda a: a[::-1, ::-1].transpose(1, 0, 2)),
    8: ("rotated 90° counter-clockwise", lambda a: a[:, ::-1].transpose(1, 0, 2)),
}
_SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded, upright image and its intrinsics.

    Attributes:
        rgb: (H, W, 3) uint8 after EXIF orientation. For a rotated or mirrored photo this is a strided
            view of the decoded pixels, not a contiguous array; `np.ascontiguousarray` it where that
            matters (`app.predictor.preprocess.resize_for_network` takes it as it is).
        f_px: Focal length in pixels for this W and H.
        f_px_source: "exif" if an EXIF focal length was used, else "default".
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
    if heif_route(data) == "heif":
        img, fmt = _decode_heif(data, limit)
        oriented_already = True  # pillow_heif turned it (module docstring)
    else:
        img, fmt = _decode_pillow(data, limit)
        oriented_already = False

    exif = read_exif(img)
    rgb = _to_rgb_uint8(img)
    del img  # the decoded image is no longer needed; free it before anything else is allocated
    if not oriented_already:
        rgb = apply_orientation(rgb, exif.get("Orientation", 1))

    height, width = rgb.shape[:2]
    focal_mm, focal_source = focal_length_35mm(exif)
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


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding its pixels."""

    format: str
    width: int
    height: int


def probe_image(data: bytes, *, max_pixels: int | None = None) -> ImageHeader:
    """Check that `data` is an image we read, within the size limits, from its header alone (cheap: no
    pixel is decoded). The errors are `load_image`'s; a file whose header is fine but whose pixels are
    damaged passes here and fails in `load_image`."""
    if not data:
        raise UnsupportedImageError("The file is empty (0 bytes); expected an image.")
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    if heif_route(data) == "heif":
        width, height = _open_heif(data, limit).size
        return ImageHeader(HEIF_FORMAT, width, height)
    img = _open_pillow(data, limit)
    return ImageHeader(img.format or "unknown", *img.size)


def _open_heif(data: bytes, limit: int | None) -> Any:
    """The HEIF container, its size checked."""
    try:
        heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)
        width, height = heif.size
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            f"The HEIF image could not be read; it is truncated or corrupt ({exc})."
        ) from exc
    _check_size(width, height, limit, HEIF_FORMAT)
    return heif


def _decode_heif(data: bytes, limit: int | None) -> tuple[Image.Image, str]:
    heif = _open_heif(data, limit)
    try:
        img = heif.to_pillow()
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImageError(
            f"The HEIF image could not be decoded; it is truncated or corrupt ({exc})."
        ) from exc
    return img, HEIF_FORMAT


def _open_pillow(data: bytes, limit: int | None) -> Image.Image:
    """Identify with Pillow and check the header's size; no pixel decoded yet."""
    try:
        with warnings.catch_warnings():
            # We enforce Pillow's pixel limit ourselves, as ImageTooLargeError.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=pillow_formats())
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The image has too many pixels ({exc}).") from exc
    except UnidentifiedImageError as exc:
        signature = known_signature(data)
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
    _check_size(*img.size, limit, img.format or "unknown")
    return img


def _decode_pillow(data: bytes, limit: int | None) -> tuple[Image.Image, str]:
    """`_open_pillow`, then decode the first frame."""
    img = _open_pillow(data, limit)
    fmt = img.format or "unknown"
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


def apply_orientation(rgb: np.ndarray, orientation: Any) -> np.ndarray:
    """Make (H, W, 3) pixels upright for EXIF Orientation 1-8 (a view); other values are ignored with a warning.
    A clip's display matrix is turned into the same numbers (`app.video.decode.display_orientation`)."""
    if orientation == 1:
        return rgb
    try:
        description, transform = _ORIENTATIONS[orientation]
    except (KeyError, TypeError):
        LOGGER.warning("Ignoring unknown EXIF orientation %r.", orientation)
        return rgb
    LOGGER.debug("Applied EXIF orientation %d (%s).", orientation, description)
    return transform(rgb)


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 for any Pillow mode; the per-mode rules are in the module docstring."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int32), 0, 65535)
        # round(v / 257) without ties, since 257 is odd.
        return _gray_to_rgb(((values * 2 + 257) // 514).astype(np.uint8))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(img, dtype=np.float64)))
    if mode in ("P", "PA"):
        # Via RGBA so Pillow does not warn about palette transparency; the colours are the palette's.
        return _rgb_by_strips(img, lambda strip: strip.convert("RGBA"))
    if mode == "La":
        return _rgb_by_strips(img, lambda strip: strip.convert("LA").convert("RGB"))
    return _rgb_by_strips(img, lambda strip: strip if strip.mode == "RGB" else strip.convert("RGB"))


def _rgb_by_strips(img: Image.Image, to_rgb: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Convert `img` with `to_rgb` (giving RGB, or RGBA whose alpha is dropped) a strip of rows at a time."""
    width, height = img.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _STRIP_BYTES // (3 * width))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        try:
            strip = to_rgb(img.crop((0, top, width, bottom)))
        except (ValueError, OSError) as exc:
            raise UnsupportedImageError(f"Images with pixel mode {img.mode!r} are not supported ({exc}).") from exc
        channels = {"RGB": 3, "RGBA": 4}[strip.mode]
        pixels = np.frombuffer(strip.tobytes(), dtype=np.uint8).reshape(bottom - top, width, channels)
        out[top:bottom] = pixels[:, :, :3]
        del strip, pixels  # before the next strip is made
    return out


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

"""EXIF: the tags we read, the orientation, and the focal length in pixels.

* Tags. The Exif sub-IFD (0x8769) tags, named by `ExifTags.TAGS`, are merged with the IFD0 tags, named
  by `TiffTags.TAGS_V2`; IFD0 wins on duplicates, as in the reference (so an Orientation found only in
  the sub-IFD counts too). EXIF that cannot be parsed is treated as absent instead of failing the image.
* Focal length, in mm at 35 mm-equivalent, from the first usable of: `FocalLengthIn35mmFilm`,
  `FocalLenIn35mmFilm`, then `FocalLength` multiplied by 8.4 when below 10 (the reference's crude guess
  for a phone's physical focal length); else `DEFAULT_FOCAL_LENGTH_MM` (30 mm) with source "default".
  A value is usable when it is a finite number whose 35 mm equivalent lies in `FOCAL_LENGTH_35MM_RANGE`,
  1 mm to 10,000 mm; anything else (missing, zero, negative, NaN, inf, 1e20, 1e-30) counts as missing
  and the next option is tried. The reference would pass absurd values on (and return f_px = 0 for a
  zero `FocalLength`).
* Pixels: `f_px = f_mm * sqrt(W² + H²) / sqrt(36² + 24²)`, with W, H after orientation.

Why 1 mm to 10,000 mm: with the diagonal matched to full frame, 1 mm is a 175° diagonal field of view
(beyond any rectilinear lens; fisheyes are 8 mm and up, phone ultra-wides 13 mm) and 10,000 mm is
0.25° (beyond the longest consumer zooms, about 3,000 mm, and a 100x phone zoom, about 2,300 mm). Past
these bounds the value is a corrupt or made-up tag, not a lens, and using it would put the scene
millions of times too near or too far (and, at 1e20, break the prediction's arithmetic).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from PIL import ExifTags, Image, TiffTags

from app.vocabulary import FocalSource

LOGGER = logging.getLogger(__name__)

DEFAULT_FOCAL_LENGTH_MM: float = 30.0
"""35 mm-equivalent focal length assumed when the EXIF has none (the reference's default)."""

FOCAL_LENGTH_35MM_RANGE: tuple[float, float] = (1.0, 10_000.0)
"""Accepted 35 mm-equivalent focal lengths in mm, inclusive; see the module docstring."""

_FULL_FRAME_DIAGONAL_MM: float = math.sqrt(36.0**2 + 24.0**2)
_PHONE_FOCAL_SCALE: float = 8.4
_EXIF_IFD: int = 0x8769


def focal_length_to_px(focal_length_35mm: float, width: int, height: int) -> float:
    """Convert a 35 mm-equivalent focal length (mm) to pixels for a W x H image.

    The image diagonal is matched to the 36 x 24 mm full-frame diagonal:
    `f_mm * sqrt(W² + H²) / sqrt(36² + 24²)`, evaluated in the reference's order of operations.
    """
    diagonal_px = math.sqrt(float(width) ** 2 + float(height) ** 2)
    return float(focal_length_35mm) * diagonal_px / _FULL_FRAME_DIAGONAL_MM


def read_exif(img: Image.Image) -> dict[str, Any]:
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


def focal_length_35mm(exif: Mapping[str, Any]) -> tuple[float, FocalSource]:
    """The 35 mm-equivalent focal length in mm and where it came from; rules in the module docstring."""
    candidates = [(key, _finite_positive(exif.get(key)), 1.0)
                  for key in ("FocalLengthIn35mmFilm", "FocalLenIn35mmFilm")]
    physical = _finite_positive(exif.get("FocalLength"))
    if physical is not None:
        candidates.append(("FocalLength", physical, _PHONE_FOCAL_SCALE if physical < 10.0 else 1.0))
    low, high = FOCAL_LENGTH_35MM_RANGE
    for key, value, scale in candidates:
        if value is None:
            continue
        focal = value * scale
        if low <= focal <= high:
            return focal, "exif"
        LOGGER.info("Ignoring EXIF %s = %r: %.3g mm equivalent is outside %g-%g mm.", key, value, focal, low, high)
    return DEFAULT_FOCAL_LENGTH_MM, "default"


def _finite_positive(value: Any) -> float | None:
    """`value` as a float if it is a finite number > 0, else None (IFDRational x/0 reads as NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return number if math.isfinite(number) and number > 0 else None

"""Image loading: bytes or a file in, an upright RGB uint8 array and a focal length in pixels out.

`load_image` is the entry point; `probe_image` checks a file from its header alone, without decoding.
The rules live with the code that applies them:

* `app.imaging.formats`: which formats are read (everything Pillow decodes except EPS, MPEG and stub
  formats; HEIC/HEIF via pillow_heif), recognised by content, and which files in a folder are images;
* `app.imaging.exif`: the EXIF tags read, and the 35 mm-equivalent focal length (accepted from 1 mm to
  10,000 mm, else the 30 mm default) and its conversion to pixels;
* `app.imaging.decode`: decoding with its size limits, orientation, the conversion of every pixel mode
  to RGB uint8 in bounded memory, and the errors;
* `app.imaging.errors`: `ImageError` and its subclasses, each with a `code` and an HTTP `status`.
"""

from app.imaging.decode import MAX_SIDE_PX, ImageHeader, LoadedImage, apply_orientation, load_image, probe_image
from app.imaging.errors import CorruptImageError, ImageError, ImageTooLargeError, UnsupportedImageError
from app.imaging.exif import DEFAULT_FOCAL_LENGTH_MM, FOCAL_LENGTH_35MM_RANGE, FocalSource, focal_length_to_px
from app.imaging.formats import find_images, is_supported_image_path, supported_extensions

__all__ = [
    "DEFAULT_FOCAL_LENGTH_MM",
    "FOCAL_LENGTH_35MM_RANGE",
    "MAX_SIDE_PX",
    "CorruptImageError",
    "FocalSource",
    "ImageError",
    "ImageHeader",
    "ImageTooLargeError",
    "LoadedImage",
    "UnsupportedImageError",
    "apply_orientation",
    "find_images",
    "focal_length_to_px",
    "is_supported_image_path",
    "load_image",
    "probe_image",
    "supported_extensions",
]

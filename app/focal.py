"""The focal lengths a caller may ask for, checked once at each edge (HTTP form, CLI option, Modal call).

Past the edge, `app.pipeline` and the predictor take `f_px` as it comes.
"""

from __future__ import annotations

import math

from app.errors import InvalidRequestError

F_PX_MIN = 1.0
F_PX_MAX = 1e6
"""The focal lengths (pixels of the input image) a prediction accepts. 1e6 px is a 2000 mm lens on a
100-megapixel sensor; at 1 px any image wider than a few pixels spans nearly 180 degrees."""


class FocalLengthError(InvalidRequestError, ValueError):
    """A focal length out of range: a 422 `validation_error`; also a ValueError, so that a form field's
    validator reports it with the field's location like any other bad field."""


def check_f_px(f_px: float | None) -> float | None:
    """`f_px` if a user may ask for it: None (use the photo's own) or [F_PX_MIN, F_PX_MAX] pixels.

    Raises:
        FocalLengthError: naming the range.
    """
    if f_px is not None and not (math.isfinite(f_px) and F_PX_MIN <= f_px <= F_PX_MAX):
        raise FocalLengthError(f"f_px must be a number of pixels in [{F_PX_MIN:g}, {F_PX_MAX:g}], got {f_px}")
    return f_px

"""The one error type of the renderer: bad input, with a machine-readable code."""

from __future__ import annotations

from app.errors import SharpError

_STATUS = {"too_large": 413, "unsupported_format": 415}


class RenderError(SharpError, ValueError):
    """The input cannot be rendered: a file that is not a Gaussian splat, non-finite values, an empty scene,
    an output size or frame count out of range, an unknown option.

    HTTP status 413 for `too_large`, 415 for `unsupported_format`, else 422; CLI exit status 2. It never
    means a bug in the renderer.

    Attributes:
        code: a short stable identifier, e.g. ``"not_a_splat"``, ``"non_finite"``, ``"empty_scene"``,
            ``"bad_size"``, ``"bad_frames"``, ``"bad_camera"``, ``"bad_option"``, ``"unsupported_format"``.
        message: the human-readable explanation (also ``str(error)``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code, status=_STATUS.get(code, 422))

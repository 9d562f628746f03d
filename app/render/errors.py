"""The one error type of the renderer: bad input, with a machine-readable code."""

from __future__ import annotations


class RenderError(ValueError):
    """The input cannot be rendered: a file that is not a Gaussian splat, non-finite values, an empty scene,
    an output size or frame count out of range, an unknown option.

    Map it to HTTP 4xx (400 / 413 / 422) or CLI exit status 2; it never means a bug in the renderer.

    Attributes:
        code: a short stable identifier, e.g. ``"not_a_splat"``, ``"non_finite"``, ``"empty_scene"``,
            ``"bad_size"``, ``"bad_frames"``, ``"bad_camera"``, ``"bad_option"``, ``"unsupported_format"``.
        message: the human-readable explanation (also ``str(error)``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

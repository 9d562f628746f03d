"""Output formats: a `Prediction` -> the bytes of one downloadable file, and the registry of them.

Every entry point (HTTP routes, CLI, Modal functions, job worker) reaches a format through `FORMATS`
(via `app.pipeline.encode`), so adding a format is: an encoder module in this package, plus one
`OutputFormat` entry below. The HTTP routes `POST /predict/<name>` and the CLI's `--format` choices
follow the registry.

- ``ply``: the reference 3DGS PLY (56 bytes per Gaussian + camera metadata), what apple/ml-sharp writes.
- ``ply_vertex``: the same PLY with the vertex element only, for viewers that reject the extra elements.
- ``splat``: antimatter15's 32-byte records for web viewers.
- ``spz``: Niantic's gzip-compressed format, about 1/4 of the PLY (RUB axes inside, converted for you).
- ``sog``: PlayCanvas's SOG (version 2), a zip of meta.json and lossless WebP images, about 1/5 of the SPZ
  (the PLY's axes, as SuperSplat and Spark expect).
- ``json``: the arrays and the prediction's metadata (`POST /predict`); options ``max_gaussians`` and
  ``encoding``.
- ``preview`` (PNG), ``preview_jpeg`` (JPEG), ``orbit`` (MP4): renders of the scene by `app.render`, the
  input view or a short camera path around it (`POST /render`, job outputs, `predict --preview`);
  options ``size``, ``depth`` (stills), ``path`` and ``frames`` (videos). Their `kind` is ``render``.

The readers (`read_ply`, `decode_splat`, `decode_spz`, `decode_sog`) turn files back into scenes, for the renderer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import InvalidRequestError, UnknownFormatError
from app.files import write_atomically
from app.formats.json import encode_prediction_json
from app.formats.ply import encode_ply, read_ply
from app.formats.sog import decode_sog, encode_sog
from app.formats.splat import decode_splat, encode_splat
from app.formats.spz import decode_spz, encode_spz
from app.prediction import Prediction

PLY_MEDIA_TYPE = "application/octet-stream"
"""PLY files are sent as plain downloads (the API contract); the unregistered type would be application/x-ply."""


@dataclass(frozen=True)
class OutputFormat:
    """One output format.

    Attributes:
        name: the registry key, as in ``POST /predict/<name>`` and ``--format``.
        extension: the file name suffix with its dot, e.g. ".ply".
        media_type: the HTTP Content-Type.
        description: one line for help texts and the API docs.
        encode: ``encode(prediction, **options) -> bytes``, the whole file.
        options: the keyword options `encode` takes (anything else is refused).
        kind: ``scene`` (the Gaussians themselves) or ``render`` (pictures of them, costlier to make).
    """

    name: str
    extension: str
    media_type: str
    description: str
    encode: Callable[..., bytes]
    options: frozenset[str] = field(default_factory=frozenset)
    kind: Literal["scene", "render"] = "scene"

    def filename(self, stem: str) -> str:
        return f"{stem}{self.extension}"


def _ply(prediction: Prediction) -> bytes:
    return encode_ply(prediction.scene)


def _ply_vertex(prediction: Prediction) -> bytes:
    return encode_ply(prediction.scene, vertex_only=True)


def _splat(prediction: Prediction) -> bytes:
    return encode_splat(prediction.scene)


def _spz(prediction: Prediction) -> bytes:
    return encode_spz(prediction.scene)


def _sog(prediction: Prediction) -> bytes:
    return encode_sog(prediction.scene)


PREVIEW_SIZE = 512
"""Longer side in pixels of a render when no size is asked for."""


def _still(image_format: str) -> Callable[..., bytes]:
    def encode_still(prediction: Prediction, *, size: int | tuple[int, int] = PREVIEW_SIZE,
                     depth: bool = False) -> bytes:
        from app.render import render_still

        return render_still(prediction.scene, size=size, fmt=image_format, depth=depth,
                            device=prediction.model.device)

    return encode_still


def _orbit(prediction: Prediction, *, size: int | tuple[int, int] = PREVIEW_SIZE, path: str = "orbit",
           frames: int = 60) -> bytes:
    from app.render import render_video

    return render_video(prediction.scene, path=path, frames=frames, size=size, fmt="mp4",
                        device=prediction.model.device)


FORMATS: dict[str, OutputFormat] = {
    fmt.name: fmt for fmt in (
        OutputFormat("ply", ".ply", PLY_MEDIA_TYPE, "3DGS PLY as apple/ml-sharp writes it (56 B/Gaussian + "
                     "camera metadata elements)", _ply),
        OutputFormat("ply_vertex", ".ply", PLY_MEDIA_TYPE, "the same PLY with the vertex element only, for "
                     "viewers that reject the camera metadata elements", _ply_vertex),
        OutputFormat("splat", ".splat", "application/x-splat", "antimatter15 .splat for web viewers "
                     "(32 B/Gaussian, 8-bit colour and rotation)", _splat),
        OutputFormat("spz", ".spz", "application/x-spz", "Niantic .spz, gzip-compressed (about 1/4 of the "
                     "PLY), RUB axes", _spz),
        OutputFormat("sog", ".sog", "application/zip", "PlayCanvas SOG v2: a zip of lossless WebP images "
                     "(16-bit positions, 256-entry codebooks; about 1/4 of the SPZ), PLY axes", _sog),
        OutputFormat("json", ".json", "application/json", "the Gaussians as JSON arrays plus the prediction's "
                     "metadata", encode_prediction_json, frozenset({"max_gaussians", "encoding"})),
        OutputFormat("preview", ".png", "image/png", "the scene rendered from the photo's viewpoint (PNG; "
                     "depth=true: the depth map)", _still("png"), frozenset({"size", "depth"}), "render"),
        OutputFormat("preview_jpeg", ".jpg", "image/jpeg", "the same render as JPEG", _still("jpeg"),
                     frozenset({"size", "depth"}), "render"),
        OutputFormat("orbit", ".mp4", "video/mp4", "a short video of the camera moving around the photo's "
                     "viewpoint (H.264, yuv420p)", _orbit, frozenset({"size", "path", "frames"}), "render"),
    )
}


def get_format(name: str) -> OutputFormat:
    """The registered format called `name` (case-insensitive, a leading dot allowed).

    Raises:
        UnknownFormatError: naming the known formats.
    """
    key = name.lower().lstrip(".")
    if key not in FORMATS:
        raise UnknownFormatError(f"Unknown output format {name!r}; use one of: {', '.join(FORMATS)}.")
    return FORMATS[key]


def check_options(name: str, options: dict[str, Any]) -> OutputFormat:
    """The format `name`, after checking it takes every option in `options`.

    Raises:
        UnknownFormatError: no such format.
        InvalidRequestError: an option this format does not take (it would do nothing).
    """
    fmt = get_format(name)
    unknown = sorted(set(options) - fmt.options)
    if unknown:
        takes = ", ".join(sorted(fmt.options)) or "no options"
        raise InvalidRequestError(f"{', '.join(unknown)} does nothing for the {fmt.name} format (it takes {takes}).")
    return fmt


def encode(prediction: Prediction, name: str, **options: Any) -> bytes:
    """`prediction` as the file of format `name` (see `check_options` for the errors)."""
    return check_options(name, options).encode(prediction, **options)


__all__ = [
    "FORMATS",
    "PLY_MEDIA_TYPE",
    "OutputFormat",
    "check_options",
    "decode_sog",
    "decode_splat",
    "decode_spz",
    "encode",
    "get_format",
    "read_ply",
    "write_atomically",
]

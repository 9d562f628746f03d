"""The outputs a prediction can be turned into: every scene format and every render, in one registry.

It sits above both `app.formats` (the file writers) and `app.render` (the pictures), which know nothing of
it. Every entry point reaches an output through `FORMATS`, via `app.pipeline.run`: `POST /predict/<name>`
and the CLI's `--format` list the scene formats, `POST /render` and `predict --preview` the renders, and
`POST /jobs` takes any of them. Adding an output is one `OutputFormat` entry below.

- ``ply``: the reference 3DGS PLY (56 bytes per Gaussian + camera metadata), what apple/ml-sharp writes.
- ``ply_vertex``: the same PLY with the vertex element only, for viewers that reject the extra elements.
- ``splat``: antimatter15's 32-byte records for web viewers.
- ``spz``: Niantic's gzip-compressed format, about 1/4 of the PLY (RUB axes inside, converted for you).
- ``sog``: PlayCanvas's SOG (version 2), a zip of lossless WebP images, about 0.7 of the SPZ (PLY axes).
- ``sequence``: a clip's scenes as one ``.sogv`` ("SOG video", `app.formats.sequence`): the Gaussians'
  attribute planes as 10-bit H.264 streams; a photo gives a one-frame sequence.
- ``coarse``: SPZ of a coarse level of detail (`app.budget.coarse_level`: 1/64 to 1/32 of the Gaussians,
  merged on the grid), which the page asks first and shows while the full scene follows (docs/page.md).
- ``glb``: binary glTF 2.0 with Khronos's ``KHR_gaussian_splatting`` (float attributes, 60 bytes per Gaussian)
  and the photo's camera as a camera node (glTF axes: +Y up, +Z forward).
- ``json``: the arrays and the prediction's metadata (`POST /predict`); option ``encoding``.
- ``preview`` (PNG), ``preview_jpeg`` (JPEG), ``orbit`` (MP4): renders of the scene by `app.render`, the
  input view or a short camera path around it; options ``size``, ``depth`` (stills), ``path`` and ``frames``
  (videos). Their `kind` is ``render``: they cost more, so jobs make them only when asked, and a server
  draws one at a time.

File names, one rule: an output of a photo ``<stem>`` is ``<stem><suffix>`` (``coffee.vertex.ply``,
``coffee.png``), wherever it is written (CLI, HTTP download name, `remote`); a job's file, also the last part
of its URL, is ``<result_stem><suffix>`` (``result.vertex.ply``, ``preview.png``).

A splat budget (``max_gaussians``) is no output's option: `app.pipeline.run` applies it once to the
prediction, and every output, renders included, is made from the Gaussians kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.budget import coarse_level
from app.errors import InvalidRequestError, UnknownFormatError
from app.formats.glb import encode_glb
from app.formats.json import encode_prediction_json
from app.formats.ply import encode_ply
from app.formats.sequence import MEDIA_TYPE as SEQUENCE_MEDIA_TYPE
from app.formats.sequence import SUFFIX as SEQUENCE_SUFFIX
from app.formats.sequence import encode_sequence
from app.formats.sog import encode_sog
from app.formats.splat import encode_splat
from app.formats.spz import encode_spz
from app.prediction import Prediction

PLY_MEDIA_TYPE = "application/octet-stream"
"""PLY files are sent as plain downloads (the API contract); the unregistered type would be application/x-ply."""
PREVIEW_SIZE = 512
"""Longer side in pixels of a render when no size is asked for."""

Encoder = Callable[..., bytes]
"""``encode(prediction, timings_ms, **options) -> bytes``: the whole file; `timings_ms` are the stages so far
(only the JSON output writes them into its body). A render's encoder also takes ``progress(frames_done,
frames)``, called after every frame (an exception it raises stops the render there)."""

FrameProgress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class OutputFormat:
    """One output.

    Attributes:
        name: the registry key, as in ``POST /predict/<name>``, ``--format`` and a job's ``outputs``.
        suffix: the file name suffix with its dot, e.g. ".ply", ".vertex.ply".
        media_type: the HTTP Content-Type.
        description: one line for help texts and the API docs.
        encode: see `Encoder`.
        options: the keyword options `encode` takes (anything else is refused).
        kind: ``scene`` (the Gaussians themselves), ``render`` (pictures of them, costlier to make) or ``clip``
            (the Gaussians of a whole clip in one file: made when asked for, a photo giving one frame) or
            ``level`` (a coarse level of detail of the scene, `app.budget.coarse_level`: made when asked for).
        result_stem: the stem of a job's file of this output (``result``, or the render's name).
        bytes_per_gaussian, fixed_bytes: upper bound of a file's size, bytes per Gaussian kept plus a part that
            does not grow with them (headers, metadata, a render), measured at full size (`app.jobs.size`).
    """

    name: str
    suffix: str
    media_type: str
    description: str
    encode: Encoder
    options: frozenset[str] = field(default_factory=frozenset)
    kind: Literal["scene", "render", "clip", "level"] = "scene"
    result_stem: str = "result"
    bytes_per_gaussian: float = field(kw_only=True)
    fixed_bytes: int = field(kw_only=True)

    def filename(self, stem: str) -> str:
        """The file name of this output for a photo called `stem`."""
        return f"{stem}{self.suffix}"

    @property
    def result_file(self) -> str:
        """A job's file of this output, also the last part of its URL (``result.ply``, ``orbit.mp4``)."""
        return self.filename(self.result_stem)


def _ply(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_ply(prediction.scene)


def _ply_vertex(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_ply(prediction.scene, vertex_only=True)


def _splat(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_splat(prediction.scene)


def _spz(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_spz(prediction.scene)


def _coarse(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_spz(coarse_level(prediction.scene))


def _sog(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_sog(prediction.scene)


def _sequence(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    try:
        return encode_sequence([prediction.scene], fps=1.0)
    except ValueError as error:  # a budget took Gaussians off the grid
        raise InvalidRequestError(f"The sequence output: {error}.") from None


def _glb(prediction: Prediction, timings_ms: Mapping[str, float]) -> bytes:
    return encode_glb(prediction.scene)


def _json(prediction: Prediction, timings_ms: Mapping[str, float], **options: Any) -> bytes:
    return encode_prediction_json(prediction, timings_ms=timings_ms, **options)


def _still(image_format: str) -> Encoder:
    def encode_still(prediction: Prediction, timings_ms: Mapping[str, float], *,
                     size: int | tuple[int, int] = PREVIEW_SIZE, depth: bool = False,
                     progress: FrameProgress = None) -> bytes:
        from app.render.pictures import render_still  # torch: loaded when a render is made, not for the list

        image = render_still(prediction.scene, size=size, fmt=image_format, depth=depth,
                             device=prediction.model.device)
        if progress is not None:
            progress(1, 1)
        return image

    return encode_still


def _orbit(prediction: Prediction, timings_ms: Mapping[str, float], *, size: int | tuple[int, int] = PREVIEW_SIZE,
           path: str = "orbit", frames: int = 60, progress: FrameProgress = None) -> bytes:
    from app.render.pictures import render_video  # torch: loaded when a render is made, not for the list

    return render_video(prediction.scene, path=path, frames=frames, size=size, fmt="mp4",
                        device=prediction.model.device, progress=progress)


FORMATS: dict[str, OutputFormat] = {
    fmt.name: fmt for fmt in (
        OutputFormat("ply", ".ply", PLY_MEDIA_TYPE, "3DGS PLY as apple/ml-sharp writes it (56 B/Gaussian + "
                     "camera metadata elements)", _ply, bytes_per_gaussian=56, fixed_bytes=4_096),
        OutputFormat("ply_vertex", ".vertex.ply", PLY_MEDIA_TYPE, "the same PLY with the vertex element only, "
                     "for viewers that reject the camera metadata elements", _ply_vertex,
                     bytes_per_gaussian=56, fixed_bytes=4_096),
        OutputFormat("splat", ".splat", "application/x-splat", "antimatter15 .splat for web viewers "
                     "(32 B/Gaussian, 8-bit colour and rotation)", _splat, bytes_per_gaussian=32, fixed_bytes=0),
        OutputFormat("spz", ".spz", "application/x-spz", "Niantic .spz, gzip-compressed (about 1/4 of the "
                     "PLY), RUB axes", _spz, bytes_per_gaussian=20, fixed_bytes=65_536),
        OutputFormat("coarse", ".coarse.spz", "application/x-spz", "a coarse level of detail as SPZ (each 8 x 8 "
                     "block of the grid merged, moments kept, split at a depth edge: 1/64 to 1/32 of the Gaussians), "
                     "for a page to show before the full scene; made when asked for", _coarse, kind="level",
                     bytes_per_gaussian=1, fixed_bytes=65_536),
        OutputFormat("sog", ".sog", "application/zip", "PlayCanvas SOG v2: a zip of lossless WebP images "
                     "(16-bit positions, 256-entry codebooks; about 0.7 of the SPZ), PLY axes", _sog,
                     bytes_per_gaussian=24, fixed_bytes=65_536),
        OutputFormat("sequence", SEQUENCE_SUFFIX, SEQUENCE_MEDIA_TYPE, "a clip's scenes in one file (SOG video: "
                     "attribute planes as 10-bit H.264 streams, 0.1-0.2 of the per-frame SOGs); a photo: one frame",
                     _sequence, kind="clip", bytes_per_gaussian=8, fixed_bytes=65_536),
        OutputFormat("glb", ".glb", "model/gltf-binary", "binary glTF 2.0 with KHR_gaussian_splatting (float "
                     "attributes, 60 B/Gaussian) and the photo's camera as a camera node, glTF axes", _glb,
                     bytes_per_gaussian=60, fixed_bytes=16_384),
        OutputFormat("json", ".json", "application/json", "the Gaussians as JSON arrays plus the prediction's "
                     "metadata", _json, frozenset({"encoding"}), bytes_per_gaussian=200, fixed_bytes=65_536),
        OutputFormat("preview", ".png", "image/png", "the scene rendered from the photo's viewpoint (PNG; "
                     "depth=true: the depth map)", _still("png"), frozenset({"size", "depth"}), "render",
                     "preview", bytes_per_gaussian=0, fixed_bytes=1_200_000),
        OutputFormat("preview_jpeg", ".jpg", "image/jpeg", "the same render as JPEG", _still("jpeg"),
                     frozenset({"size", "depth"}), "render", "preview_jpeg", bytes_per_gaussian=0, fixed_bytes=400_000),
        OutputFormat("orbit", ".mp4", "video/mp4", "a short video of the camera moving around the photo's "
                     "viewpoint (H.264, yuv420p)", _orbit, frozenset({"size", "path", "frames"}), "render",
                     "orbit", bytes_per_gaussian=0, fixed_bytes=8_000_000),
    )
}

SCENE_FORMATS = [name for name, fmt in FORMATS.items() if fmt.kind == "scene"]
"""The Gaussians themselves: `POST /predict/<name>`, the CLI's `--format`, a job's default outputs."""
CLIP_FORMATS = [name for name, fmt in FORMATS.items() if fmt.kind == "clip"]
"""A whole clip's Gaussians in one file: the CLI's `--format` and a job's `outputs`, when asked for."""


def get_format(name: str) -> OutputFormat:
    """The registered output called `name` (case-insensitive, a leading dot allowed).

    Raises:
        UnknownFormatError: naming the known outputs.
    """
    key = name.lower().lstrip(".")
    if key not in FORMATS:
        raise UnknownFormatError(f"Unknown output format {name!r}; use one of: {', '.join(FORMATS)}.")
    return FORMATS[key]


def check_options(name: str, options: Mapping[str, Any]) -> OutputFormat:
    """The output `name`, after checking it takes every option in `options`.

    Raises:
        UnknownFormatError: no such output.
        InvalidRequestError: an option this output does not take (it would do nothing).
    """
    fmt = get_format(name)
    unknown = sorted(set(options) - fmt.options)
    if unknown:
        takes = ", ".join(sorted(fmt.options)) or "no options"
        raise InvalidRequestError(f"{', '.join(unknown)} does nothing for the {fmt.name} format (it takes {takes}).")
    return fmt


def encode(prediction: Prediction, name: str, *, timings_ms: Mapping[str, float] | None = None,
           **options: Any) -> bytes:
    """`prediction` as the file of output `name` (see `check_options` for the errors); `timings_ms`: the
    stages so far, which the JSON output records in its metadata."""
    return check_options(name, options).encode(prediction, timings_ms or {}, **options)

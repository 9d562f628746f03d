"""The one request path: decode a photo -> predict its Gaussians -> encode them into a format.

Every entry point calls these three steps, and only these: the HTTP service (`app.service`, which runs
them on its own threads and queue), the CLI (`app.cli`), the Modal functions (`modal_app.py`) and the job
worker (`app.jobs`). Each step adds its duration to `Prediction.timings_ms`, so every caller reports the
same stages: decode, preprocess, forward, postprocess, encode.

    image = decode(data, name="photo.jpg", max_pixels=settings.max_pixels)
    prediction = predict(predictor, image, f_px=None)      # f_px None: EXIF, else 30 mm equivalent
    output = encode(prediction, "spz")                      # bytes + media type + file name
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import outputs as formats
from app.forward_progress import ProgressCallback
from app.imaging import LoadedImage, load_image
from app.prediction import Prediction
from app.predictor import SharpPredictor, check_f_px


@dataclass(frozen=True)
class DecodedImage:
    """A decoded photo and how long decoding took (milliseconds)."""

    image: LoadedImage
    decode_ms: float


@dataclass(frozen=True)
class EncodedOutput:
    """One file made from a prediction: its bytes, HTTP media type and download file name."""

    format: str
    body: bytes
    media_type: str
    filename: str


def decode(source: bytes | Path, *, name: str | None = None, max_pixels: int | None = None) -> DecodedImage:
    """The photo (bytes or a file) as upright RGB with its focal length; `ImageError` if it is not usable."""
    start = time.perf_counter()
    image = load_image(source, name=name or None, max_pixels=max_pixels)
    return DecodedImage(image=image, decode_ms=(time.perf_counter() - start) * 1000.0)


def predict(predictor: SharpPredictor, decoded: DecodedImage, f_px: float | None = None,
            progress: ProgressCallback | None = None) -> Prediction:
    """The photo's Gaussians (`InvalidRequestError` for an `f_px` out of range), timings from decode on.

    `progress(stage, fraction)` is called as the stages go (see `SharpPredictor.predict`).
    """
    check_f_px(f_px)
    prediction = predictor.predict(decoded.image, f_px=f_px, progress=progress)
    prediction.timings_ms = {"decode": decoded.decode_ms, **prediction.timings_ms}
    return prediction


def encode(prediction: Prediction, format_name: str, **options: Any) -> EncodedOutput:
    """The prediction as a file of `format_name` (see `app.formats.FORMATS`); records the `encode` time.

    Raises:
        UnknownFormatError, InvalidRequestError: no such format, or an option it does not take.
    """
    fmt = formats.check_options(format_name, options)
    start = time.perf_counter()
    body = formats.encode(prediction, fmt.name, timings_ms=prediction.timings_ms, **options)
    prediction.timings_ms["encode"] = (time.perf_counter() - start) * 1000.0
    return EncodedOutput(format=fmt.name, body=body, media_type=fmt.media_type, filename=fmt.filename(prediction.name))


def run(predictor: SharpPredictor, source: bytes | Path, format_name: str, *, name: str | None = None,
        f_px: float | None = None, max_pixels: int | None = None,
        **options: Any) -> tuple[Prediction, EncodedOutput]:
    """decode -> predict -> encode in one call (the CLI and the Modal functions)."""
    formats.check_options(format_name, options)  # fail on bad options before the forward pass, not after
    check_f_px(f_px)
    prediction = predict(predictor, decode(source, name=name, max_pixels=max_pixels), f_px)
    return prediction, encode(prediction, format_name, **options)

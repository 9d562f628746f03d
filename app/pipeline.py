"""The one request path: decode a photo -> predict its Gaussians -> keep a budget of them -> encode each output.

Every entry point calls `run`, and only `run`: the HTTP service (`app.service`, which decides on which
threads and when), the CLI (`app.cli.predict`), the job worker (`app.jobs.runner`, local and Modal) and
the Modal functions. `run` records the timings once, in the result: decode, preprocess, forward,
postprocess, encode (all outputs together), in milliseconds.

    result = run(predictor, Path("coffee.jpg"), {"spz": {}, "json": {}}, max_gaussians=0.25)
    result.outputs["spz"].body, result.prediction.scene, result.timings_ms

`f_px` is taken as given: each edge checks it with `app.focal.check_f_px` when it parses its input. A
budget (`max_gaussians`, `app.budget`) is parsed by each edge too; `run` checks it against the model's
count before decoding, applies it once to the prediction, and every output is made from the kept scene.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.budget import MaxGaussians, apply_budget, budget_count
from app.imaging import LoadedImage, load_image
from app.outputs import check_options
from app.prediction import Prediction
from app.vocabulary import ProgressCallback

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports this module without it
    from app.predictor import SharpPredictor

Outputs = Mapping[str, Mapping[str, Any]]
"""The outputs wanted, in order, each with its options: ``{"ply": {}, "json": {"encoding": "base64"}}``
(names and options of `app.outputs.FORMATS`)."""

Slot = Callable[[], AbstractContextManager[object]]


@dataclass(frozen=True)
class Slots:
    """Where `run` waits for its turn: each slot is entered around its step. The defaults never wait (the
    CLI, one photo at a time); the HTTP service passes its own (see `app.service`).

    Attributes:
        decode: from decoding the photo until its turn in the model (bounds how many decoded photos are in
            memory at once: these, and the one in the model).
        model: around the prediction (one forward pass at a time on the model).
        render: around encoding an output of kind ``render`` (renders use every core).
    """

    decode: Slot = contextlib.nullcontext
    model: Slot = contextlib.nullcontext
    render: Slot = contextlib.nullcontext


@dataclass(frozen=True)
class EncodedOutput:
    """One file made from a prediction: its bytes, HTTP media type, file name and encoding time (ms)."""

    format: str
    body: bytes
    media_type: str
    filename: str
    encode_ms: float


@dataclass(frozen=True)
class RunResult:
    """What `run` made: the prediction, each output wanted (by name, in the order asked) and the timings
    in milliseconds (decode, preprocess, forward, postprocess, encode)."""

    prediction: Prediction
    outputs: dict[str, EncodedOutput]
    timings_ms: dict[str, float]


OutputSink = Callable[[EncodedOutput], None]
"""Takes each output as soon as it is encoded (a job writes it to its store), so that `run` need not hold
every output's bytes at once."""


def decode(source: bytes | Path, *, filename: str | None = None, max_pixels: int | None = None) -> LoadedImage:
    """The photo (bytes or a file) as upright RGB with its focal length; `ImageError` if it is not usable."""
    return load_image(source, name=filename or None, max_pixels=max_pixels)


Adjust = Callable[[Prediction], Prediction]
"""Changes a prediction between predict and encode (a clip's frames are scaled to agree, `app.sequence`)."""


def run(predictor: SharpPredictor, source: bytes | Path | LoadedImage | Prediction, outputs: Outputs, *,
        filename: str | None = None, f_px: float | None = None, max_gaussians: MaxGaussians | None = None,
        max_pixels: int | None = None, progress: ProgressCallback | None = None, slots: Slots = Slots(),
        sink: OutputSink | None = None, adjust: Adjust | None = None,
        timings_ms: Mapping[str, float] | None = None) -> RunResult:
    """decode -> predict -> (adjust) -> keep the budget -> encode each output.

    Args:
        predictor: the loaded model.
        source: the photo's bytes, or its path; or a photo decoded already (a clip's frame, `app.video`),
            whose decoding is then not timed here; or its prediction, made already (a clip's frame predicted
            in another container, `app.sequence.fanout`): then only adjust -> budget -> encode run here.
        outputs: see `Outputs`; every name and option is checked before anything is decoded.
        filename: the upload's name when `source` is bytes (the outputs' file stem).
        f_px: focal length in pixels of the photo (checked by the caller); None: EXIF, else 30 mm equivalent.
        max_gaussians: the budget, a count or a fraction (`app.budget.apply_budget`: neighbours merged on the
            prediction's grid); every output, renders included, is made from the Gaussians kept, and
            `result.prediction.num_predicted` says how many there were.
            None: all of them.
        max_pixels: the largest photo accepted (width x height).
        progress: `progress(stage, fraction)` as the stages go (see `ProgressCallback`).
        slots: see `Slots`.
        sink: if given, each output is handed to it once encoded and left out of the result's `outputs`
            (a full-size scene's files are tens of MB each).
        adjust: if given, the prediction is replaced by `adjust(prediction)` before anything is encoded
            (the result holds the adjusted one).
        timings_ms: the stages run already, when `source` is a prediction kept from an earlier run (a job's,
            `app.jobs.lazy`): the result's timings (and the JSON output's) start from them.

    Raises:
        UnknownFormatError, InvalidRequestError: an unknown output, or an option it does not take.
        BudgetError: a budget the model's count does not allow (0, above the count, ...).
        ImageError: the photo is not usable (see `app.imaging`).
        Whatever `progress` raises (a cancelled job or request): it is called at every block of the network
        and every frame of a render.
    """
    wanted = [(check_options(name, options), options) for name, options in outputs.items()]
    if max_gaussians is not None:
        budget_count(max_gaussians, predictor.info.num_gaussians)
    report = progress or _ignore
    timings: dict[str, float] = dict(timings_ms or {})
    if isinstance(source, Prediction):
        prediction = source
    else:
        report("decode", 0.0)
        with contextlib.ExitStack() as decoding:
            if isinstance(source, LoadedImage):
                image = source
            else:
                decoding.enter_context(slots.decode())
                with _timed(timings, "decode"):
                    image = decode(source, filename=filename, max_pixels=max_pixels)
            report("decode", 1.0)
            with slots.model():
                # The decode slot is held until the model's turn: a decoded photo waits in it, so that the
                # photos in memory are at most the decode slots' plus the one predicted (not every upload).
                decoding.close()
                prediction = predictor.predict(image, f_px=f_px, progress=progress, timings_ms=timings)
            del image
    if adjust is not None:
        prediction = adjust(prediction)
    if max_gaussians is not None:
        with _timed(timings, "budget"):
            prediction = replace(prediction, scene=apply_budget(prediction.scene, max_gaussians),
                                 num_predicted=prediction.num_predicted)
    encoded: dict[str, EncodedOutput] = {}
    encode_ms_total = 0.0
    for done, (fmt, options) in enumerate(wanted):
        report("encode", done / len(wanted))
        # A render reports every frame, so that a cancel (raised by `progress`) stops it at the next frame.
        frame_progress = {"progress": _frame_reporter(report, done, len(wanted))} if fmt.kind == "render" else {}
        with slots.render() if fmt.kind == "render" else contextlib.nullcontext():
            start = time.perf_counter()
            body = fmt.encode(prediction, timings, **options, **frame_progress)
            encode_ms = (time.perf_counter() - start) * 1000.0
        output = EncodedOutput(format=fmt.name, body=body, media_type=fmt.media_type,
                               filename=fmt.filename(prediction.name), encode_ms=encode_ms)
        del body
        encode_ms_total += encode_ms
        if sink is None:
            encoded[fmt.name] = output
        else:
            sink(output)
        del output
    report("encode", 1.0)
    timings["encode"] = encode_ms_total
    return RunResult(prediction=prediction, outputs=encoded, timings_ms=timings)


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = (time.perf_counter() - start) * 1000.0


def _frame_reporter(report: ProgressCallback, done: int, total: int) -> Callable[[int, int], None]:
    """``progress(frames_done, frames)`` of output `done` of `total`, as the encode stage's fraction."""
    def frame_done(frames_done: int, frames: int) -> None:
        report("encode", (done + frames_done / frames) / total)

    return frame_done


def _ignore(stage: str, fraction: float) -> None:
    pass

"""A clip through the pipeline: each sampled frame -> `app.pipeline.run` (predict -> [align] -> encode) ->
its files, then the manifest and the preview.

    manifest = run_sequence(predictor, Path("clip.mp4"), {"ply": {}}, sink=write, align="scale")

Every frame goes through `pipeline.run` exactly as a photo does, given the decoded frame (`app.video`)
instead of a file, with one `f_px` for all (the request's, else the 30 mm-equivalent default of the frame
size); with `align="scale"` its prediction is scaled before it is encoded (`app.sequence.align`), with
`align="none"` frame k's files are those of the photo of decoded frame k, byte for byte. Frames are decoded,
predicted, encoded and handed to `sink` one at a time: memory does not grow with the clip's length. A clip
can also be predicted in several places at once (Modal GPU containers): `elsewhere` hands over the
predictions made there, and everything after the prediction still runs here, in order
(`app.sequence.fanout`).

Files (paths relative to the sequence's folder, handed to `sink` as they are made):
    frames/000000<suffix>, ...   each output of each frame (`app.outputs` file names, stem = frame number)
    preview.mp4                  `app.sequence.preview`, at the sampled frame rate (H.264)
    sequence.sogv                the ``sequence`` output: every frame's scene in one file
                                 (`app.formats.sequence`, encoded a frame at a time), at the end
    manifest.json                `Manifest` below, last
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from app.budget import MaxGaussians, budget_count
from app.errors import InvalidRequestError
from app.formats.sequence import SUFFIX as SEQUENCE_SUFFIX
from app.formats.sequence import SequenceWriter
from app.outputs import check_options
from app.pipeline import EncodedOutput, Outputs, Slots, run
from app.render.video import encode_mp4
from app.sequence.align import ScaleChain
from app.sequence.fanout import FramePredictions
from app.video import Sampling, VideoLimits, probe_video, read_frames
from app.vocabulary import AlignMode, choices

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports this module without it
    from app.predictor import SharpPredictor

Align = AlignMode
ALIGN_MODES: tuple[Align, ...] = tuple(choices(AlignMode))
FRAMES_DIR = "frames"
MANIFEST_FILE = "manifest.json"
PREVIEW_FILE = "preview.mp4"
PREVIEW_SOURCES = ("ply", "ply_vertex", "spz", "sog", "splat")
"""A frame's outputs its picture of the preview can be rendered from afterwards, the most faithful first."""
SEQUENCE_OUTPUT = "sequence"
"""The output made once for the whole clip (`SequenceWriter` fed every frame's scene), not once a frame."""
SEQUENCE_FILE = "sequence" + SEQUENCE_SUFFIX

FileSink = Callable[[str, bytes], None]
"""`sink(path, body)`: one file of the sequence, `path` relative to its folder (`frames/000000.ply`)."""
SequenceProgress = Callable[[int, int, str, float], None]
"""`progress(frame, frames, stage, fraction)`: frame `frame` (0-based) of about `frames` (the header's
count; the manifest has the true one) is in `stage` (decode, preprocess, forward, postprocess, encode,
preview), `fraction` done. An exception it raises (a cancelled job) stops the run before the next step."""


@dataclass
class FrameRecord:
    """One line of the manifest."""

    index: int
    time_s: float
    f_px: float
    f_px_source: str
    scale: float
    num_gaussians: int
    """Gaussians in the frame's files (kept by `max_gaussians`)."""
    num_predicted: int
    """Gaussians the model predicted for the frame (before `max_gaussians`)."""
    timings_ms: dict[str, float]
    files: dict[str, str]


CLIP_REFUSED_OUTPUTS = {"orbit": "it renders a video of 60 frames for each frame of the clip; ask for preview or "
                                 "preview_jpeg (one picture a frame), or render one frame's scene with POST /render"}
"""Outputs not made for a clip, and why: work that multiplies with the clip's length far past its prediction."""


def check_clip_outputs(names: Iterable[str], max_gaussians: MaxGaussians | None = None) -> None:
    """`InvalidRequestError` naming the first of `names` a clip does not make (`CLIP_REFUSED_OUTPUTS`), or the
    sequence output asked for with a budget (it keeps SHARP's whole grid)."""
    names = list(names)
    for name in names:
        if name in CLIP_REFUSED_OUTPUTS:
            raise InvalidRequestError(f"The {name} output is not made for a clip: {CLIP_REFUSED_OUTPUTS[name]}.")
    if max_gaussians is not None and SEQUENCE_OUTPUT in names:
        raise InvalidRequestError("The sequence output keeps SHARP's grid of Gaussians, every one of them: "
                                  "ask for it without max_gaussians.")


def preview_source(outputs: Iterable[str]) -> str | None:
    """The output of `outputs` a preview can be rendered from after the run (`PREVIEW_SOURCES`), or None: none
    is a scene read back (a clip asking for glb, json, pictures or the sequence alone)."""
    names = set(outputs)
    return next((name for name in PREVIEW_SOURCES if name in names), None)


def run_sequence(predictor: SharpPredictor, source: bytes | Path, outputs: Outputs, *, sink: FileSink,
                 limits: VideoLimits, sampling: Sampling | None = None, f_px: float | None = None,
                 align: Align = "none", preview: bool = True, progress: SequenceProgress | None = None,
                 slots: Slots | None = None, on_frame: Callable[[dict[str, Any]], None] | None = None,
                 max_gaussians: MaxGaussians | None = None, elsewhere: FramePredictions | None = None,
                 preview_later: bool = False) -> dict[str, Any]:
    """Turn the frames of a clip into scenes (module docstring); returns the manifest (also handed to `sink`).

    `preview_later` (with `preview`): no picture is rendered here and `sink` gets no preview.mp4, which the
    manifest names all the same: the caller makes it afterwards from the frames' files
    (`app.sequence.preview.render_preview`, a job's lazy preview).

    `max_gaussians` is each frame's budget, as for a photo (`pipeline.run`: applied after the alignment, so
    the scale fit sees every Gaussian). `on_frame(record)` is called after each frame with its line of the
    manifest (the CLI prints it). `elsewhere`: the frames predicted in other places (`app.sequence.fanout`);
    the rest are predicted here.

    Raises:
        VideoError: the clip is not usable (`app.video`), before or while its frames are read.
        UnknownFormatError, InvalidRequestError: an output or option (`check_clip_outputs`), before any frame
            is decoded.
        BudgetError: a budget the model's count does not allow, before any frame is decoded.
        Whatever `progress` raises.
    """
    sampling, slots = sampling or Sampling(), slots or Slots()
    if align not in ALIGN_MODES:
        raise InvalidRequestError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}.")
    check_clip_outputs(outputs, max_gaussians)
    for name, options in outputs.items():
        check_options(name, options)
    if max_gaussians is not None:
        budget_count(max_gaussians, predictor.info.num_gaussians)
    info = probe_video(source, sampling, limits)
    expected = expected_frames(info.duration_s, info.frame_rate, sampling, limits)
    report = progress or _ignore
    chain = ScaleChain() if align == "scale" else None
    records: list[FrameRecord] = []
    size: list[int] = []  # the scenes' image width and height (upright), once known
    rate = sampling.fps or info.frame_rate or 30.0
    per_frame = {name: options for name, options in outputs.items() if name != SEQUENCE_OUTPUT}
    whole = SequenceWriter(rate) if SEQUENCE_OUTPUT in outputs else None
    render_here = preview and not preview_later

    def pictures() -> Iterator[np.ndarray]:
        frames = read_frames(source, sampling, limits)
        while True:
            start = time.perf_counter()
            with slots.decode():
                frame = next(frames, None)
            if frame is None:
                return
            decode_ms = (time.perf_counter() - start) * 1000.0
            total = max(expected, frame.index + 1)

            def frame_progress(stage: str, fraction: float, index: int = frame.index, total: int = total) -> None:
                report(index, total, stage, fraction)

            files: dict[str, str] = {}

            def write(output: EncodedOutput, files: dict[str, str] = files) -> None:
                path = f"{FRAMES_DIR}/{output.filename}"
                sink(path, output.body)
                files[output.format] = path

            made = None if elsewhere is None else elsewhere(
                frame.index, total, lambda: frame_progress("forward", 0.0))
            start_from, predict_ms = (frame.as_image(f_px), {}) if made is None else made
            result = run(predictor, start_from, per_frame, f_px=f_px, max_gaussians=max_gaussians,
                         progress=frame_progress, slots=slots, sink=write, adjust=chain)
            scene = result.prediction.scene
            size[:] = [scene.image_width, scene.image_height]
            timings = {"decode": decode_ms, **predict_ms, **result.timings_ms}
            if whole is not None:
                frame_progress("encode", 1.0)
                start = time.perf_counter()
                whole.add(scene)
                timings["sequence"] = (time.perf_counter() - start) * 1000.0
            records.append(FrameRecord(
                index=frame.index, time_s=round(frame.time_s, 6), f_px=scene.f_px,
                f_px_source=result.prediction.f_px_source, scale=chain.factor if chain is not None else 1.0,
                num_gaussians=scene.num_gaussians, num_predicted=result.prediction.num_predicted,
                timings_ms=timings, files=files))
            if render_here:
                frame_progress("preview", 0.0)
                start = time.perf_counter()
                with slots.render():
                    from app.sequence.preview import side_by_side  # torch: the renderer's

                    picture = side_by_side(frame.rgb, scene, predictor.device)
                timings["preview"] = (time.perf_counter() - start) * 1000.0
                frame_progress("preview", 1.0)
            if on_frame is not None:
                on_frame(dict(records[-1].__dict__))
            if render_here:
                yield picture
            del frame, start_from, made, result, scene

    if render_here:
        from app.sequence.preview import preview_fps  # torch: the renderer's

        sink(PREVIEW_FILE, encode_mp4(pictures(), fps=preview_fps(rate)))
    else:
        for _ in pictures():  # yields nothing without a preview
            pass
    if whole is not None:
        sink(SEQUENCE_FILE, whole.finish())
    manifest = _manifest(records, size, info, sampling, align, predictor, preview)
    manifest["sequence"] = SEQUENCE_FILE if whole is not None else None
    sink(MANIFEST_FILE, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def expected_frames(duration_s: float | None, frame_rate: float | None, sampling: Sampling,
                    limits: VideoLimits) -> int:
    """The header's guess of how many frames `sampling` takes (for progress; at least 1)."""
    cap = min(sampling.max_frames or limits.max_frames, limits.max_frames)
    if duration_s is None or frame_rate is None:
        return cap
    span = (min(sampling.end, duration_s) if sampling.end is not None else duration_s) - sampling.start
    per_second = min(sampling.fps or math.inf, frame_rate)
    return max(1, min(cap, math.ceil(span * per_second - 1e-3)))


def _manifest(records: list[FrameRecord], size: list[int], info: Any, sampling: Sampling, align: Align,
              predictor: SharpPredictor, preview: bool) -> dict[str, Any]:
    first = records[0]
    return {
        "num_frames": len(records),
        "image_width": size[0],
        "image_height": size[1],
        "f_px": first.f_px,
        "f_px_source": first.f_px_source,
        "align": align,
        "sampling": {"fps": sampling.fps, "start": sampling.start, "end": sampling.end,
                     "max_frames": sampling.max_frames},
        "source": {"width": info.width, "height": info.height, "duration_s": info.duration_s,
                   "frame_rate": info.frame_rate, "codec": info.codec, "container": info.container},
        "model": predictor.info.summary(),
        "preview": PREVIEW_FILE if preview else None,
        "frames": [record.__dict__ for record in records],
    }


def _ignore(frame: int, frames: int, stage: str, fraction: float) -> None:
    pass

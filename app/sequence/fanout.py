"""A clip's frames predicted in several places at once, and finished in one, in order.

The forward pass is what takes the time; everything after it (the scale alignment, the budget, each output,
the preview) needs the frames in order and is cheap. So a clip is cut into chunks of consecutive frames
(`chunks`): the place that runs `run_sequence` predicts chunk 0 itself and asks `FramePredictions` for each
later frame; the other places (Modal GPU containers, `app.jobs.modal_clip`) each run `predict_chunk` on
one chunk and hand every prediction back as a stash (`save_prediction`, an ``.npz`` of the scene's float32
arrays, lossless). `run_sequence` then passes each frame's prediction, stashed or its own, through
`app.pipeline.run` in frame order, so a clip spread over containers gives the bytes a serial run gives.

A chunk decodes the clip from its start with the same sampling and skips the frames before its own
without converting them to RGB (a decoder cannot start mid-GOP, and the sampling counts every frame;
decoding is a few ms a frame beside a forward pass of hundreds).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import orjson

from app.gaussians import GaussianScene
from app.prediction import ModelInfo, Prediction
from app.video import Sampling, VideoLimits, read_frames
from app.vocabulary import ProgressCallback

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports this module without it
    from app.predictor import SharpPredictor

Timings = dict[str, float]
"""Milliseconds per stage of one frame's prediction (preprocess, forward, postprocess)."""
SCENE_ARRAYS = ("positions", "scales", "rotations", "colors", "opacities")


class FramePredictions(Protocol):
    """Where `run_sequence` gets the frames it does not predict itself.

    `predictions(index, expected, waiting)` is called for every frame in order, on the run's thread: frame
    `index` (0-based) of about `expected` (the header's count). It returns that frame's prediction, made
    elsewhere, with its timings; or None: predict it here (a frame of chunk 0, or of a chunk that failed
    elsewhere). While it waits it calls `waiting()` about every second; an exception that raises (a
    cancel) ends the wait.
    """

    def __call__(self, index: int, expected: int, waiting: Callable[[], None]
                 ) -> tuple[Prediction, Timings] | None: ...


def chunks(expected: int, chunk_frames: int) -> list[range]:
    """The frames 0..expected-1 cut into runs of `chunk_frames` (the last may be shorter)."""
    count = max(1, math.ceil(expected / chunk_frames))
    return [range(k * chunk_frames, min(expected, (k + 1) * chunk_frames)) for k in range(count)]


def predict_chunk(predictor: SharpPredictor, source: bytes | Path, frames: range, *, sampling: Sampling,
                  limits: VideoLimits, f_px: float | None, stash: Callable[[int, Prediction, Timings], None],
                  progress: ProgressCallback | None = None) -> list[int]:
    """Predict the sampled frames of `source` whose index is in `frames`, handing each to `stash` as it is
    made; returns their indices (fewer than asked when the clip ends first).

    The frames are those `run_sequence` takes with the same `sampling`, `limits` and `f_px`, and each
    prediction is the one `run_sequence` would make of it. `progress(stage, fraction)` is the predictor's
    (an exception it raises, a cancel, stops the chunk at the network's next block).

    Raises: `VideoError` as `read_frames` does.
    """
    done: list[int] = []
    for frame in read_frames(source, sampling, limits, first=frames.start):
        if frame.index >= frames.stop:
            break
        timings: Timings = {}
        prediction = predictor.predict(frame.as_image(f_px), f_px=f_px, progress=progress, timings_ms=timings)
        stash(frame.index, prediction, timings)
        done.append(frame.index)
        del frame, prediction
    return done


def save_prediction(prediction: Prediction, timings: Timings) -> bytes:
    """The prediction and its timings as an ``.npz`` (arrays as they are, the rest as JSON): lossless."""
    scene = prediction.scene
    about = {"name": prediction.name, "f_px_source": prediction.f_px_source, "num_predicted": prediction.num_predicted,
             "model": dataclasses.asdict(prediction.model), "f_px": scene.f_px, "image_width": scene.image_width,
             "image_height": scene.image_height, "timings_ms": timings}
    buffer = io.BytesIO()
    np.savez(buffer, about=np.frombuffer(orjson.dumps(about), dtype=np.uint8),
             **{name: getattr(scene, name) for name in SCENE_ARRAYS})
    return buffer.getvalue()


def load_prediction(body: bytes) -> tuple[Prediction, Timings]:
    """What `save_prediction` wrote."""
    with np.load(io.BytesIO(body), allow_pickle=False) as stash:
        about = orjson.loads(stash["about"].tobytes())
        scene = GaussianScene(**{name: stash[name] for name in SCENE_ARRAYS}, f_px=about["f_px"],
                              image_width=about["image_width"], image_height=about["image_height"])
    prediction = Prediction(name=about["name"], scene=scene, f_px_source=about["f_px_source"],
                            model=ModelInfo(**about["model"]), num_predicted=about["num_predicted"])
    return prediction, about["timings_ms"]

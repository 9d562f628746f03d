"""`app.sequence.fanout`: the chunks, the stash round trip, and a chunk's predictions being the ones a serial
run makes (the Modal path end to end is in tests/jobs/test_jobs_modal.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from app.formats.ply import encode_ply
from app.predictor import SharpPredictor
from app.sequence import run_sequence
from app.sequence.fanout import SCENE_ARRAYS, chunks, load_prediction, predict_chunk, save_prediction
from app.video import Sampling, VideoLimits
from tests.helpers import digest, make_clip, tiny_settings


def test_chunks_cover_every_frame_once() -> None:
    assert chunks(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert chunks(8, 8) == [range(0, 8)]
    assert chunks(1, 8) == [range(0, 1)]
    for expected, size in ((7, 3), (30, 8), (9, 1)):
        assert [index for chunk in chunks(expected, size) for index in chunk] == list(range(expected))


def test_a_chunk_stashes_the_predictions_a_serial_run_encodes(predictor: SharpPredictor) -> None:
    """Frames 1-2 of a 3-frame clip predicted as a chunk, stashed and loaded back, are the predictions
    `run_sequence` makes of those frames: their PLYs are byte-equal, and the stash loses nothing."""
    clip, limits, sampling = make_clip(3, fps=10), VideoLimits.from_settings(tiny_settings()), Sampling(fps=20)
    serial: dict[str, bytes] = {}
    run_sequence(predictor, clip, {"ply": {}}, sink=serial.__setitem__, limits=limits, sampling=sampling,
                 f_px=150.0, preview=False)
    stashes: dict[int, bytes] = {}
    done = predict_chunk(predictor, clip, range(1, 3), sampling=sampling, limits=limits, f_px=150.0,
                         stash=lambda index, prediction, timings: stashes.__setitem__(
                             index, save_prediction(prediction, timings)))
    assert done == [1, 2] and sorted(stashes) == [1, 2]
    for index, body in stashes.items():
        prediction, timings = load_prediction(body)
        assert prediction.name == f"{index:06d}" and prediction.f_px_source == "request"
        assert prediction.model == predictor.info and prediction.scene.f_px == 150.0
        assert set(timings) >= {"preprocess", "forward", "postprocess"}
        assert digest(encode_ply(prediction.scene)) == digest(serial[f"frames/{index:06d}.ply"])
        again, _ = load_prediction(save_prediction(prediction, timings))
        for name in SCENE_ARRAYS:
            ours, theirs = getattr(again.scene, name), getattr(prediction.scene, name)
            assert ours.dtype == np.float32 and ours.tobytes() == theirs.tobytes()
        assert dataclasses.replace(again, scene=prediction.scene) == prediction
    assert predict_chunk(predictor, clip, range(9, 12), sampling=sampling, limits=limits, f_px=None,
                         stash=lambda *_: None) == []  # past the clip's end

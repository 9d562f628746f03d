"""`app.pipeline.run`, the one request path: outputs checked first, timings recorded once, slots entered,
progress reported through every stage; and `app.focal.check_f_px`, the one check of a focal length."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import pipeline
from app.budget import BudgetError, apply_budget
from app.budget.pyramid import grid_of
from app.errors import InvalidRequestError, UnknownFormatError
from app.focal import check_f_px
from app.formats import encode_ply, read_ply
from app.formats.spz import decode_spz
from app.imaging import CorruptImageError
from app.model.network import build_network, fill_synthetic_weights
from app.predictor import SharpPredictor

STAGES = ["decode", "preprocess", "forward", "postprocess", "encode"]


@pytest.fixture(scope="module")
def tiny() -> SharpPredictor:
    network = build_network("tiny")
    fill_synthetic_weights(network)
    return SharpPredictor(network, weights="synthetic", device="cpu")


def photo(width: int = 80, height: int = 60) -> bytes:
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_run_makes_every_output_of_one_prediction(tiny: SharpPredictor, tmp_path: Path) -> None:
    path = tmp_path / "garden.png"
    path.write_bytes(photo())
    seen: list[tuple[str, float]] = []
    result = pipeline.run(tiny, path, {"ply": {}, "ply_vertex": {}, "json": {"encoding": "base64"}},
                          progress=lambda stage, fraction: seen.append((stage, fraction)))
    assert list(result.outputs) == ["ply", "ply_vertex", "json"]
    assert result.outputs["ply"].body == encode_ply(result.prediction.scene)
    assert read_ply(result.outputs["ply_vertex"].body).num_gaussians == result.prediction.scene.num_gaussians
    assert [output.filename for output in result.outputs.values()] == [
        "garden.ply", "garden.vertex.ply", "garden.json"]
    assert list(result.timings_ms) == STAGES and all(ms > 0 for ms in result.timings_ms.values())
    assert result.timings_ms["encode"] == pytest.approx(sum(o.encode_ms for o in result.outputs.values()))
    assert list(dict.fromkeys(stage for stage, _ in seen)) == STAGES  # each stage reported, in order
    assert seen[0] == ("decode", 0.0) and seen[-1] == ("encode", 1.0)


def test_a_sink_takes_each_output_as_it_is_encoded(tiny: SharpPredictor) -> None:
    """With a sink (the job worker's way), each output goes to it once encoded and the result keeps none."""
    events: list[str] = []
    sunk: list[pipeline.EncodedOutput] = []

    def sink(output: pipeline.EncodedOutput) -> None:
        events.append(f"sink {output.format}")
        sunk.append(output)

    result = pipeline.run(tiny, photo(), {"ply": {}, "spz": {}}, filename="garden.png", sink=sink,
                          progress=lambda stage, fraction: events.append(f"{stage} {fraction:g}")
                          if stage == "encode" else None)
    assert result.outputs == {}
    assert events == ["encode 0", "sink ply", "encode 0.5", "sink spz", "encode 1"]
    assert [output.filename for output in sunk] == ["garden.ply", "garden.spz"]
    assert sunk[0].body == encode_ply(result.prediction.scene)
    assert result.timings_ms["encode"] == pytest.approx(sum(output.encode_ms for output in sunk))


@pytest.mark.parametrize(("outputs", "error"), [
    ({"obj": {}}, UnknownFormatError),
    ({"json": {"max_gaussians": 3}}, InvalidRequestError),
    ({"ply": {}, "preview": {"frames": 4}}, InvalidRequestError),
])
def test_bad_outputs_fail_before_anything_is_decoded(tiny: SharpPredictor, outputs: dict, error: type) -> None:
    """Not even a broken photo is looked at: the outputs are checked first."""
    with pytest.raises(error):
        pipeline.run(tiny, b"not an image at all", outputs)
    with pytest.raises(CorruptImageError):
        pipeline.run(tiny, photo()[:200], {"ply": {}})


def test_a_budget_is_kept_once_and_every_output_is_made_of_it(tiny: SharpPredictor) -> None:
    """The Gaussians kept are the budget rule's (merged on the prediction's grid); every output, the render too,
    has them."""
    full = pipeline.run(tiny, photo(), {"preview": {"size": 64}})
    result = pipeline.run(tiny, photo(), {"ply": {}, "spz": {}, "json": {"encoding": "base64"},
                                          "preview": {"size": 64}}, max_gaussians=0.25)
    predicted = tiny.info.num_gaussians
    assert grid_of(full.prediction.scene) == (2, 256)  # on its grid: merged
    kept = apply_budget(full.prediction.scene, 0.25)
    assert result.prediction.num_predicted == full.prediction.scene.num_gaussians == predicted
    assert result.prediction.scene.num_gaussians == kept.num_gaussians == round(predicted / 4)
    np.testing.assert_array_equal(result.prediction.scene.positions, kept.positions)
    assert read_ply(result.outputs["ply"].body).num_gaussians == kept.num_gaussians
    assert decode_spz(result.outputs["spz"].body).num_gaussians == kept.num_gaussians
    meta = json.loads(result.outputs["json"].body)["metadata"]
    assert (meta["num_gaussians"], meta["total_gaussians"]) == (kept.num_gaussians, predicted)
    assert result.outputs["preview"].body != full.outputs["preview"].body
    assert list(result.timings_ms) == [*STAGES[:-1], "budget", "encode"]


@pytest.mark.parametrize("budget", [0, -2, 1.5, math.nan, 10**9])
def test_a_budget_the_model_cannot_keep_fails_before_anything_is_decoded(tiny: SharpPredictor,
                                                                         budget: float) -> None:
    with pytest.raises(BudgetError, match=f"a count from 1 to {tiny.info.num_gaussians:,} or a fraction"):
        pipeline.run(tiny, b"not an image at all", {"ply": {}}, max_gaussians=budget)


def test_run_enters_each_slot_around_its_step(tiny: SharpPredictor) -> None:
    """decode in the decode slot, held until the model's turn (a decoded photo waits in it: issue 28), the
    prediction's stages in the model slot, a render (only) in the render slot."""
    events: list[str] = []

    def slot(name: str) -> pipeline.Slot:
        @contextlib.contextmanager
        def enter() -> Iterator[None]:
            events.append(f"enter {name}")
            yield
            events.append(f"leave {name}")
        return enter

    def progress(stage: str, fraction: float) -> None:
        if fraction == 1.0 and stage != "encode" and events[-1] != f"{stage} done":
            events.append(f"{stage} done")  # (the forward's hooks may reach 1.0 before the stage ends)

    slots = pipeline.Slots(decode=slot("decode"), model=slot("model"), render=slot("render"))
    pipeline.run(tiny, photo(), {"spz": {}, "preview": {"size": 32}}, slots=slots, progress=progress)
    assert events == ["enter decode", "decode done", "enter model", "leave decode", "preprocess done",
                      "forward done", "postprocess done", "leave model", "enter render", "leave render"]


@pytest.mark.parametrize("bad", [0.0, 0.5, -5.0, 1e6 + 1, 1e20, float("nan"), float("inf"), float("-inf")])
def test_check_f_px_refuses_what_no_lens_gives(bad: float) -> None:
    with pytest.raises(InvalidRequestError, match=r"f_px must be a number of pixels in \[1, 1e\+06\]"):
        check_f_px(bad)


@pytest.mark.parametrize("good", [None, 1.0, 500.0, 1e6])
def test_check_f_px_passes_what_it_accepts(good: float | None) -> None:
    assert check_f_px(good) == good

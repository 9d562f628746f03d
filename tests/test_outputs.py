"""The outputs registry (`app.outputs`): every output encodes its format, one file-name rule, option checks."""

from __future__ import annotations

import json

import pytest

from app.budget.coarse import COARSE_BLOCK
from app.errors import InvalidRequestError, UnknownFormatError
from app.formats import decode_sog, decode_spz, encode_glb, encode_ply, encode_splat
from app.outputs import FORMATS, SCENE_FORMATS, encode, get_format
from tests.helpers import prediction_of, random_scene


def test_registry_encoders_produce_their_formats() -> None:
    scene = random_scene(700, seed=11)
    prediction = prediction_of(scene)
    assert set(FORMATS) == {"ply", "ply_vertex", "splat", "spz", "sog", "glb", "json", "preview", "preview_jpeg",
                            "orbit", "sequence", "coarse"}
    assert SCENE_FORMATS == ["ply", "ply_vertex", "splat", "spz", "sog", "glb", "json"]
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.suffix.startswith(".") and "/" in fmt.media_type
    assert encode(prediction, "ply") == encode_ply(scene)
    assert encode(prediction, "ply_vertex") == encode_ply(scene, vertex_only=True)
    assert encode(prediction, "splat") == encode_splat(scene)
    assert decode_spz(encode(prediction, "spz")).num_gaussians == 700
    assert decode_sog(encode(prediction, "sog")).num_gaussians == 700
    # off the grid: the most important
    assert decode_spz(encode(prediction, "coarse")).num_gaussians == 700 // COARSE_BLOCK**2
    assert encode(prediction, "glb") == encode_glb(scene)
    stages = {"decode": 1.0, "preprocess": 2.0, "forward": 3.0, "postprocess": 4.0}
    body = json.loads(encode(prediction, "json", timings_ms=stages, encoding="base64"))
    assert body["metadata"]["num_gaussians"] == 700 == body["metadata"]["total_gaussians"]
    assert body["metadata"]["model"] == {"preset": "tiny", "weights": "synthetic", "device": "cpu",
                                         "dtype": "float32"}
    assert set(body["metadata"]["timings_ms"]) == {*stages, "encode"}
    assert get_format(".SPZ") is FORMATS["spz"]
    with pytest.raises(UnknownFormatError, match="ply, ply_vertex"):
        get_format("obj")
    with pytest.raises(InvalidRequestError, match="max_gaussians does nothing for the json format"):
        encode(prediction, "json", max_gaussians=3)  # a budget is the pipeline's, for every output


def test_one_file_name_rule_for_photos_and_jobs() -> None:
    """A photo's file is `<stem><suffix>` everywhere; a job's file (and URL) keeps its public name."""
    names = {name: fmt.filename("coffee") for name, fmt in FORMATS.items()}
    assert names == {"ply": "coffee.ply", "ply_vertex": "coffee.vertex.ply", "splat": "coffee.splat",
                     "spz": "coffee.spz", "sog": "coffee.sog", "glb": "coffee.glb", "json": "coffee.json",
                     "preview": "coffee.png", "preview_jpeg": "coffee.jpg", "orbit": "coffee.mp4",
                     "sequence": "coffee.sogv", "coarse": "coffee.coarse.spz"}
    results = {name: fmt.result_file for name, fmt in FORMATS.items()}
    assert results == {"ply": "result.ply", "ply_vertex": "result.vertex.ply", "splat": "result.splat",
                       "spz": "result.spz", "sog": "result.sog", "glb": "result.glb", "json": "result.json",
                       "preview": "preview.png", "preview_jpeg": "preview_jpeg.jpg", "orbit": "orbit.mp4",
                       "sequence": "result.sogv", "coarse": "result.coarse.spz"}

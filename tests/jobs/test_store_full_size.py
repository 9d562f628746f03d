"""The job store at the real size: the `tiny_full` preset (1,179,648 Gaussians, the real model's count) on a
real server on loopback. Every scene format's file stays under its projection (`app.jobs.size`), a clip job
over the cap is refused at submission with the numbers and leaves nothing, and one that fits evicts an older
finished job and stays downloadable."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.formats.spz import decode_spz
from app.http import create_app
from app.jobs.size import file_bytes, projected_bytes
from app.pipeline import run
from app.predictor import SharpPredictor
from tests.conformance import DATA_DIR
from tests.helpers import LiveServer, assert_error, events, make_clip, tiny_settings

NUM_GAUSSIANS = 1_179_648
SCENE_FORMATS = {"ply": {}, "ply_vertex": {}, "splat": {}, "spz": {}, "sog": {}, "json": {}}


@pytest.fixture(scope="module")
def predictor() -> SharpPredictor:
    return SharpPredictor.load("tiny_full", device="cpu")


def test_every_scene_format_at_full_size_stays_under_its_projection(predictor: SharpPredictor) -> None:
    result = run(predictor, (DATA_DIR / "coffee.png").read_bytes(), SCENE_FORMATS, filename="coffee.png")
    assert result.prediction.scene.num_gaussians == NUM_GAUSSIANS
    base64 = run(predictor, result.prediction, {"json": {"encoding": "base64"}}).outputs["json"]
    sizes = {name: len(output.body) for name, output in result.outputs.items()}
    print(f"bytes at {NUM_GAUSSIANS:,} Gaussians:", sizes, "json base64:", len(base64.body))
    for name, size in sizes.items():
        bound = file_bytes(name, NUM_GAUSSIANS)
        assert size <= bound, (name, size, bound)
        assert size >= 0.4 * bound, (name, size, bound)  # a bound, not a wild overestimate
    assert len(base64.body) <= file_bytes("json", NUM_GAUSSIANS, {"encoding": "base64"})
    assert sizes["ply"] >= 56 * NUM_GAUSSIANS


@pytest.fixture
def client(serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path) -> Iterator[httpx.Client]:
    # room for a 2-frame spz clip (its projection: about 48 MB with the zip) but not beside a finished spz photo
    cap = projected_bytes(["spz"], {}, NUM_GAUSSIANS, frames=2) + 2_000_000
    settings = tiny_settings(preset="tiny_full", jobs_dir=tmp_path / "jobs", jobs_max_bytes=cap)
    with serve(create_app(settings, predictor=predictor)).client(timeout=120) as client:
        yield client


def submit(client: httpx.Client, clip: bytes, **fields: str) -> httpx.Response:
    return client.post("/jobs", data=fields, files={"file": ("walk.mp4", clip, "video/mp4")})


def test_an_over_cap_clip_is_refused_and_one_that_fits_stays_downloadable(client: httpx.Client,
                                                                         tmp_path: Path) -> None:
    clip = make_clip(2, fps=10)
    refused = assert_error(submit(client, clip, outputs="ply"), 413, "job_too_large")
    for words in ("2 frames", "SHARP_JOBS_MAX_BYTES", "outputs=spz", "max_gaussians="):
        assert words in refused["message"], refused["message"]
    assert [p.name for p in (tmp_path / "jobs").iterdir() if not p.name.startswith(".")] == []

    photo = client.post("/jobs", data={"outputs": "spz"},
                        files={"file": ("coffee.png", (DATA_DIR / "coffee.png").read_bytes(), "image/png")}).json()
    photo = events(client, photo["id"])[-1]
    assert photo["status"] == "succeeded" and photo["metadata"]["num_gaussians"] == NUM_GAUSSIANS

    job = submit(client, clip)  # no outputs: the compact format; its reservation evicts the photo's files
    assert job.status_code == 202, job.text
    assert_error(client.get(photo["results"]["spz"]), 410, "job_expired")  # evicted at once, to make room
    final = events(client, job.json()["id"])[-1]
    assert final["status"] == "succeeded", final
    assert final["outputs"] == ["spz"] and final["metadata"]["num_gaussians"] == NUM_GAUSSIANS
    frame = client.get(final["results"]["frames/000001.spz"])
    assert frame.status_code == 200 and decode_spz(frame.content).num_gaussians == NUM_GAUSSIANS
    with zipfile.ZipFile(io.BytesIO(client.get(final["results"]["sequence.zip"]).content)) as archive:
        assert archive.read("frames/000001.spz") == frame.content
    assert client.get(f"/jobs/{final['id']}").json()["status"] == "succeeded"  # still there, not evicted
    stored = sum(p.stat().st_size for p in (tmp_path / "jobs").rglob("*") if p.is_file())
    assert stored <= projected_bytes(["spz"], {}, NUM_GAUSSIANS, frames=2) + 2_000_000

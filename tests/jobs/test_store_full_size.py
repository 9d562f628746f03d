"""The job store at the real size: the `tiny_full` preset (1,179,648 Gaussians, the real model's count) on a
real server on loopback. Every scene format's file stays under its projection (`app.jobs.size`), a clip job
over the cap is refused at submission with the numbers and leaves nothing, and one that fits evicts an older
finished job and stays downloadable. A photo's job with lazy outputs (`app.jobs.lazy`) keeps a prediction within
the projection reserved for it, and what it stores at its fullest stays within the store's reservation."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.formats.spz import decode_spz
from app.http import create_app
from app.jobs.job import Job
from app.jobs.size import KEPT_BYTES_PER_GAUSSIAN, KEPT_FIXED_BYTES, file_bytes, projected_bytes
from app.jobs.store import PREDICTION_FILE, STATE_FILE
from app.pipeline import run
from app.predictor import SharpPredictor
from tests.conformance import DATA_DIR
from tests.helpers import LiveServer, assert_error, events, make_clip, tiny_settings
from tests.jobs.test_jobs import wait_for

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


LAZY_OUTPUTS = ["spz", "sog", "ply", "glb"]


def test_a_lazy_job_keeps_its_prediction_and_its_files_within_the_reservation(
        serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path) -> None:
    # Encoding ahead off: the job stops at its first output, the kept prediction measured on disk; then a
    # restart (encoding ahead, the default) makes the others from it, in the background, to the stream's end.
    photo, jobs_dir = (DATA_DIR / "coffee.png").read_bytes(), tmp_path / "jobs"
    first = serve(create_app(tiny_settings(preset="tiny_full", jobs_dir=jobs_dir, jobs_encode_ahead=False),
                             predictor=predictor))
    with first.client(timeout=120) as client:
        submitted = client.post("/jobs", data={"outputs": ",".join(LAZY_OUTPUTS), "first": "spz"},
                                files={"file": ("coffee.png", photo, "image/png")})
        assert submitted.status_code == 202, submitted.text
        job = wait_for(client, submitted.json()["id"])
    first.stop()
    assert job["status"] == "succeeded" and job["metadata"]["num_gaussians"] == NUM_GAUSSIANS
    assert job["files"] == {"ply": "waiting", "spz": "ready", "sog": "waiting", "glb": "waiting"}
    print("first output's job timings (ms):", job["timings_ms"])
    directory = jobs_dir / job["id"]
    state = Job.from_dict(orjson.loads((directory / STATE_FILE).read_bytes()))
    kept = (directory / PREDICTION_FILE).stat().st_size
    assert state.kept_bytes == kept and state.pending == ["ply", "sog", "glb"]  # the registry's order
    assert kept <= KEPT_BYTES_PER_GAUSSIAN * NUM_GAUSSIANS + KEPT_FIXED_BYTES, kept
    assert state.projected_bytes == projected_bytes(LAZY_OUTPUTS, {}, NUM_GAUSSIANS)
    reserved = state.held_bytes  # what the store counts for it until its last output is made
    assert sum(p.stat().st_size for p in directory.iterdir() if p.name != STATE_FILE) <= reserved

    with serve(create_app(tiny_settings(preset="tiny_full", jobs_dir=jobs_dir), predictor=predictor)
               ).client(timeout=120) as client:
        final = events(client, job["id"])[-1]  # the stream ends once every output is made
        assert final["files"] == dict.fromkeys(LAZY_OUTPUTS, "ready")
        sizes = Job.from_dict(orjson.loads((directory / STATE_FILE).read_bytes())).results
        for name in LAZY_OUTPUTS:
            download = client.get(final["results"][name])
            assert download.status_code == 200 and len(download.content) == sizes[name], name
            assert download.headers["x-sharp-num-gaussians"] == str(NUM_GAUSSIANS)
    assert not (directory / PREDICTION_FILE).exists()
    print(f"lazy job at {NUM_GAUSSIANS:,} Gaussians, B a Gaussian:", {"prediction.npz": round(kept / NUM_GAUSSIANS, 3)},
          {name: round(size / NUM_GAUSSIANS, 3) for name, size in sizes.items()},
          f"stored at its fullest {kept + sum(sizes.values()):,} of {reserved:,} reserved")
    for name, size in sizes.items():
        assert size <= file_bytes(name, NUM_GAUSSIANS), (name, size, file_bytes(name, NUM_GAUSSIANS))
    # At its fullest (the last output written, the prediction not yet dropped; the upload already gone):
    assert kept + sum(sizes.values()) <= reserved

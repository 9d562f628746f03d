"""Clip jobs end to end: a clip made here posted to `POST /jobs` on a real server on loopback (the tiny
model), its events (frame k of n), its files and zip; bad clips as 4xx JSON; a cancel keeps nothing."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from app.formats import read_ply
from app.formats.sog_reader import decode_sog
from app.http import create_app
from app.predictor import SharpPredictor
from app.settings import Settings
from tests.helpers import LiveServer, assert_error, events, make_clip


@pytest.fixture
def client(serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path) -> Iterator[httpx.Client]:
    settings = Settings(preset="tiny", device="cpu", api_key=None, cors_origins=[], jobs_dir=tmp_path / "jobs",
                        cache_dir=tmp_path / "cache")
    with serve(create_app(settings, predictor=predictor)).client(timeout=60) as client:
        yield client


def submit(client: httpx.Client, clip: bytes, **fields: str) -> httpx.Response:
    return client.post("/jobs", data=fields, files={"file": ("walk.mp4", clip, "video/mp4")})


def test_a_clip_job_makes_each_frames_files_a_manifest_a_preview_and_a_zip(client: httpx.Client) -> None:
    response = submit(client, make_clip(3, fps=10), max_frames="2", align="scale", outputs="ply,spz")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["outputs"] == ["ply", "spz"]
    seen = events(client, job["id"])
    final = seen[-1]
    assert final["status"] == "succeeded", final
    running = [(e["frame"], e["frames"], e["stage"]) for e in seen if e["status"] == "running" and e["frame"]]
    assert (1, 2, "forward") in running and (2, 2, "forward") in running
    progress = [e["progress"] for e in seen]
    assert progress == sorted(progress)
    paths = ["frames/000000.ply", "frames/000000.spz", "frames/000001.ply", "frames/000001.spz", "preview.mp4",
             "manifest.json", "sequence.zip"]
    assert final["results"] == {path: f"/jobs/{job['id']}/{path}" for path in paths}
    assert final["frame"] == final["frames"] == 2 and final["metadata"]["num_gaussians"] == 131_072
    files = {}
    for path, url in final["results"].items():
        got = client.get(url)
        assert got.status_code == 200, (path, got.text)
        files[path] = got.content
    assert client.get(final["results"]["preview.mp4"]).headers["content-type"] == "video/mp4"
    manifest = orjson.loads(files["manifest.json"])
    assert manifest["num_frames"] == 2 and manifest["align"] == "scale"
    assert read_ply(files["frames/000001.ply"]).num_gaussians == 131_072
    with zipfile.ZipFile(io.BytesIO(files["sequence.zip"])) as archive:
        assert sorted(archive.namelist()) == sorted(paths[:-1])
        assert all(archive.read(path) == files[path] for path in paths[:-1])
    assert client.get(f"/jobs/{job['id']}/frames/000009.ply").status_code == 404
    assert client.get(f"/jobs/{job['id']}/frames/..%2fjob.json").status_code == 404


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 20, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_clips_and_options_are_4xx_json(client: httpx.Client) -> None:
    assert_error(submit(client, make_clip(4)[:600]), 400, "corrupt_video")
    assert_error(submit(client, make_clip(2), fps="0"), 422, "validation_error")  # the form's range
    assert_error(submit(client, make_clip(2), start="50"), 422, "invalid_video_selection")
    assert_error(submit(client, make_clip(2), start="0.2", end="0.1"), 422, "invalid_video_selection")
    assert_error(submit(client, make_clip(2), align="wobble"), 422, "validation_error")
    response = client.post("/jobs", data={"fps": "2"}, files={"file": ("p.png", photo(), "image/png")})
    assert_error(response, 422, "validation_error")
    assert "only applies to a video upload" in response.json()["error"]["message"]


def test_a_cancelled_clip_job_stops_and_keeps_nothing(client: httpx.Client, tmp_path: Path) -> None:
    job = submit(client, make_clip(6, fps=10)).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = client.get(f"/jobs/{job['id']}").json()
        if state["frame"] == 2:  # the first frame's files are written
            break
        time.sleep(0.05)
    assert (tmp_path / "jobs" / job["id"] / "sequence" / "frames" / "000000.spz").is_file()  # the default
    cancelled = client.delete(f"/jobs/{job['id']}").json()
    assert cancelled["status"] == "cancelled"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (tmp_path / "jobs" / job["id"] / "sequence").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # the worker stops at the next step; nothing it might still write may stay
    assert not (tmp_path / "jobs" / job["id"] / "sequence").exists()
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
    assert_error(client.get(f"/jobs/{job['id']}/manifest.json"), 409, "job_cancelled")


def test_a_clip_job_with_a_budget_keeps_exactly_it_in_every_frame(client: httpx.Client) -> None:
    response = submit(client, make_clip(2, fps=10), max_gaussians="1000", outputs="ply,sog")
    assert response.status_code == 202, response.text
    final = events(client, response.json()["id"])[-1]
    assert final["status"] == "succeeded", final
    assert final["metadata"]["num_gaussians"] == 1000 and final["metadata"]["total_gaussians"] == 131_072
    manifest = orjson.loads(client.get(final["results"]["manifest.json"]).content)
    assert [(r["num_gaussians"], r["num_predicted"]) for r in manifest["frames"]] == [(1000, 131_072)] * 2
    for path in ("frames/000000.ply", "frames/000001.ply"):
        got = client.get(final["results"][path])
        assert read_ply(got.content).num_gaussians == 1000
        assert (got.headers["x-sharp-num-gaussians"], got.headers["x-sharp-num-gaussians-predicted"]) == (
            "1000", "131072")
    assert decode_sog(client.get(final["results"]["frames/000001.sog"]).content).num_gaussians == 1000


def test_a_bad_budget_for_a_clip_is_a_422_before_it_is_queued(client: httpx.Client, tmp_path: Path) -> None:
    for value in ("131073", "0", "1.5", "nan", "many"):
        error = assert_error(submit(client, make_clip(2), max_gaussians=value), 422, "validation_error")
        assert "max_gaussians" in error["message"] and "fraction in (0, 1]" in error["message"], error
    assert not any(path.is_dir() for path in (tmp_path / "jobs").glob("*"))  # no job was made


def test_a_sequence_with_a_budget_is_a_422_before_it_is_queued(client: httpx.Client, tmp_path: Path) -> None:
    """The sequence output keeps SHARP's whole grid: with max_gaussians it is refused at submission, not when
    the job runs."""
    error = assert_error(submit(client, make_clip(2), max_gaussians="1000", outputs="sequence"), 422,
                         "validation_error")
    assert "without max_gaussians" in error["message"], error
    assert not any(path.is_dir() for path in (tmp_path / "jobs").glob("*"))  # no job was made


def test_a_job_past_its_run_time_fails_at_its_next_step(serve: Callable[[Any], LiveServer], predictor: SharpPredictor,
                                                       tmp_path: Path) -> None:
    """Issue 28: nothing bounded a job's time (a clip with a render per frame ran for hours). With
    SHARP_JOB_MAX_RUN_S, the job stops at its first step past it and fails `job_too_long`; the server goes on."""
    settings = Settings(preset="tiny", device="cpu", api_key=None, cors_origins=[], jobs_dir=tmp_path / "jobs",
                        cache_dir=tmp_path / "cache", job_max_run_s=0.5)
    with serve(create_app(settings, predictor=predictor)).client(timeout=60) as client:
        response = submit(client, make_clip(6, fps=10))
        assert response.status_code == 202, response.text
        final = events(client, response.json()["id"])[-1]
        assert final["status"] == "failed" and final["error"]["code"] == "job_too_long", final
        assert "SHARP_JOB_MAX_RUN_S" in final["error"]["message"] and (final["frame"] or 0) < 6
        assert client.get("/health").json()["in_progress"] == 0


def test_a_clip_job_with_outputs_sequence_serves_one_sogv_of_every_frame(client: httpx.Client) -> None:
    from app.formats.sequence import MEDIA_TYPE, SequenceReader

    response = submit(client, make_clip(3, fps=10), outputs="sequence")
    assert response.status_code == 202, response.text
    final = events(client, response.json()["id"])[-1]
    assert final["status"] == "succeeded", final
    assert sorted(final["results"]) == ["manifest.json", "preview.mp4", "sequence.sogv", "sequence.zip"]
    got = client.get(final["results"]["sequence.sogv"])
    assert got.status_code == 200 and got.headers["content-type"] == MEDIA_TYPE
    assert got.headers["content-disposition"] == 'attachment; filename="walk.sequence.sogv"'
    reader = SequenceReader(got.content)
    assert reader.num_frames == 3 and reader.frame(2).num_gaussians == 131_072
    manifest = orjson.loads(client.get(final["results"]["manifest.json"]).content)
    assert manifest["sequence"] == "sequence.sogv" and all(not r["files"] for r in manifest["frames"])

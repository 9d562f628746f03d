"""The jobs API end to end: real uvicorn servers on loopback, the `tiny` model, real image bytes, a real
jobs directory; the `remote` client as a subprocess."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from app.formats import decode_spz, read_ply
from app.http.schemas import JobResponse
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, assert_error, events

REPO = Path(__file__).resolve().parents[2]
TINY_GAUSSIANS = 131_072
SPLAT_BYTES = 32 * TINY_GAUSSIANS
ARRAYS = ("positions", "scales", "rotations", "opacities", "colors")


def image_bytes(seed: int = 0, width: int = 96, height: int = 64) -> bytes:
    rgb = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(start: Callable[..., LiveServer]) -> Iterator[httpx.Client]:
    with start().client() as c:
        yield c


def submit(client: httpx.Client, image: bytes | None = None, name: str = "photo.png", **data: str) -> dict:
    response = client.post("/jobs", files={"file": (name, image or image_bytes(), "image/png")}, data=data)
    assert response.status_code == 202, response.text
    job = response.json()
    JobResponse.model_validate(job)
    assert response.headers["location"] == f"/jobs/{job['id']}"
    return job


def wait_for(client: httpx.Client, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 120, stage: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses and (stage is None or job["stage"] == stage):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']}/{job['stage']} after {timeout} s")


# ---------------------------------------------------------------------------------------------- progress


def test_predictor_progress_hooks(predictor: SharpPredictor) -> None:
    """Progress climbs through the stages, the forward reports from its blocks, the hooks never change the
    result and are gone afterwards, even when the callback stops the prediction."""
    from app import pipeline

    decoded = pipeline.decode(image_bytes(9))
    seen: list[tuple[str, float]] = []
    with_progress = predictor.predict(decoded, progress=lambda stage, f: seen.append((stage, f)))
    stages = [stage for stage, _ in seen]
    assert stages[:3] == ["preprocess", "preprocess", "forward"] and stages[-2:] == ["postprocess"] * 2
    forward = [f for stage, f in seen if stage == "forward"]
    assert len(forward) > 100 and forward == sorted(forward) and forward[0] == 0.0 and forward[-1] == 1.0
    plain = predictor.predict(decoded)
    assert np.array_equal(plain.scene.positions, with_progress.scene.positions)

    class Stop(Exception):
        pass

    def stop_halfway(stage: str, fraction: float) -> None:
        if stage == "forward" and fraction > 0.5:
            raise Stop

    with pytest.raises(Stop):
        predictor.predict(decoded, progress=stop_halfway)
    assert sum(len(module._forward_hooks) for module in predictor.network.modules()) == 0


# -------------------------------------------------------------------------------------------- the path


def test_job_results_are_the_synchronous_bytes(client: httpx.Client) -> None:
    photo = image_bytes(1)
    job = submit(client, photo, name="garden.png")
    assert job["status"] in ("queued", "running")
    assert job["outputs"] == ["ply", "ply_vertex", "splat", "spz", "sog", "glb", "json"]
    assert job["results"] == {} and job["error"] is None and job["created_at"].endswith("Z")

    seen = events(client, job["id"])
    final = seen[-1]
    assert final["status"] == "succeeded" and final["stage"] == "done" and final["progress"] == 1.0
    progress = [event["progress"] for event in seen]
    assert progress == sorted(progress), progress  # never goes back
    # Every stage change is published; how many updates fall inside the forward pass depends on its speed
    # (at most 10 a second), so only its start is certain here (test_predictor_progress_hooks covers the climb).
    assert any(0.039 < p < 0.92 and e["stage"] == "forward" for p, e in zip(progress, seen, strict=True)), seen
    assert final["model"] == {"preset": "tiny", "weights": "synthetic", "device": "cpu", "dtype": "float32"}
    assert final["metadata"]["num_gaussians"] == TINY_GAUSSIANS
    assert (final["metadata"]["image_width"], final["metadata"]["image_height"]) == (96, 64)
    assert set(final["timings_ms"]) == {"decode", "preprocess", "forward", "postprocess", "encode"}
    assert final["expires_at"] > final["finished_at"] >= final["started_at"] >= final["created_at"]
    jid = job["id"]
    assert final["results"] == {"ply": f"/jobs/{jid}/result.ply", "ply_vertex": f"/jobs/{jid}/result.vertex.ply",
                                "splat": f"/jobs/{jid}/result.splat", "spz": f"/jobs/{jid}/result.spz",
                                "sog": f"/jobs/{jid}/result.sog", "glb": f"/jobs/{jid}/result.glb",
                                "json": f"/jobs/{jid}/result.json"}

    upload = {"file": ("garden.png", photo, "image/png")}
    for name, sync in (("ply", "/predict/ply"), ("splat", "/predict/splat"), ("spz", "/predict/spz"),
                       ("glb", "/predict/glb")):
        expected, got = client.post(sync, files=upload), client.get(final["results"][name])
        assert got.status_code == 200 and got.content == expected.content, name
        for header in ("content-type", "content-disposition", "x-sharp-preset", "x-sharp-weights", "x-sharp-f-px",
                       "x-sharp-f-px-source", "x-sharp-image-size", "x-sharp-num-gaussians"):
            assert got.headers[header] == expected.headers[header], header
        assert "forward;dur=" in got.headers["server-timing"]
    vertex = client.get(final["results"]["ply_vertex"])
    assert vertex.content == client.post("/predict/ply", files=upload, data={"vertex_only": "true"}).content
    assert read_ply(vertex.content).num_gaussians == TINY_GAUSSIANS

    expected_json, got_json = client.post("/predict", files=upload).json(), client.get(final["results"]["json"]).json()
    for name in ARRAYS:
        assert got_json[name] == expected_json[name], name
    drop = {"timings_ms"}
    assert {k: v for k, v in got_json["metadata"].items() if k not in drop} == \
        {k: v for k, v in expected_json["metadata"].items() if k not in drop}


def test_json_options_and_an_output_subset(client: httpx.Client) -> None:
    job = submit(client, outputs="json,spz", max_gaussians="100", encoding="base64")
    final = wait_for(client, job["id"])
    assert final["status"] == "succeeded" and sorted(final["results"]) == ["json", "spz"]
    body = client.get(final["results"]["json"]).json()
    assert body["metadata"]["encoding"] == "base64" and body["positions"]["shape"] == [100, 3]
    assert decode_spz(client.get(final["results"]["spz"]).content).num_gaussians == 100  # the budget is every output's
    assert_error(client.get(f"/jobs/{job['id']}/result.ply"), 404, "result_not_requested")


def test_twenty_jobs_queued_at_once_all_finish(client: httpx.Client) -> None:
    photos = [image_bytes(seed) for seed in (2, 3)]
    jobs = [submit(client, photos[i % 2], name=f"p{i}.png", outputs="spz") for i in range(20)]
    positions = [job["queue_position"] for job in jobs if job["status"] == "queued"]
    assert positions == sorted(positions) and len(positions) >= 18
    queued_later = client.get(f"/jobs/{jobs[-1]['id']}").json()
    assert queued_later["status"] == "queued" and queued_later["queue_position"] >= 10
    assert_error(client.get(f"/jobs/{jobs[-1]['id']}/result.spz"), 409, "job_not_finished")

    finals = [wait_for(client, job["id"], timeout=300) for job in jobs]
    assert [job["status"] for job in finals] == ["succeeded"] * 20
    files = [client.get(job["results"]["spz"]).content for job in finals]
    assert decode_spz(files[0]).num_gaussians == TINY_GAUSSIANS
    assert all(f == files[i % 2] for i, f in enumerate(files)) and files[0] != files[1]
    assert len({job["started_at"] for job in finals}) == 20


def test_cancel_queued_and_running_jobs(client: httpx.Client, tmp_path: Path) -> None:
    running = submit(client, outputs="spz")
    queued = submit(client, outputs="spz")
    wait_for(client, running["id"], ("running",), stage="forward")
    assert client.get(f"/jobs/{queued['id']}").json()["status"] == "queued"

    cancelled = client.delete(f"/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert events(client, queued["id"])[-1]["status"] == "cancelled"
    assert_error(client.get(f"/jobs/{queued['id']}/result.spz"), 409, "job_cancelled")
    assert not (tmp_path / "jobs" / queued["id"] / "input").exists()

    stopped = client.delete(f"/jobs/{running['id']}")  # stops at the next block of the forward pass
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    after = submit(client, outputs="spz")
    assert wait_for(client, after["id"])["status"] == "succeeded"
    assert client.get(f"/jobs/{running['id']}").json()["status"] == "cancelled"
    assert sorted(p.name for p in (tmp_path / "jobs" / running["id"]).iterdir()) == ["job.json"]

    # DELETE of a finished job deletes it altogether.
    assert client.delete(f"/jobs/{after['id']}").json()["status"] == "succeeded"
    assert_error(client.get(f"/jobs/{after['id']}"), 404, "job_not_found")
    assert not (tmp_path / "jobs" / after["id"]).exists()


def test_restart_keeps_finished_results_and_fails_interrupted_jobs(start: Callable[..., LiveServer],
                                                                     tmp_path: Path) -> None:
    first = start()
    with first.client() as client:
        done = submit(client, outputs="ply,spz")
        done_final = wait_for(client, done["id"])
        ply = client.get(done_final["results"]["ply"]).content
        running = submit(client, outputs="ply")
        queued = submit(client, outputs="ply")
        wait_for(client, running["id"], ("running",))
    first.stop()  # a clean shutdown records the unfinished jobs as interrupted

    # A crash records nothing: make one job look as if the process had died while running it.
    state = tmp_path / "jobs" / queued["id"] / "job.json"
    crashed = {**orjson.loads(state.read_bytes()), "status": "running", "error": None, "finished_at": None}
    state.write_bytes(orjson.dumps(crashed))

    with start().client() as client:
        assert client.get(f"/jobs/{done['id']}").json()["status"] == "succeeded"
        again = client.get(f"/jobs/{done['id']}/result.ply")
        assert again.status_code == 200 and again.content == ply
        for job in (running, queued):
            final = client.get(f"/jobs/{job['id']}").json()
            if job is running and final["status"] == "succeeded":  # it finished before the shutdown reached it
                assert client.get(final["results"]["ply"]).status_code == 200
                continue
            assert final["status"] == "failed" and final["error"]["code"] == "interrupted", final
            assert events(client, job["id"])[-1]["status"] == "failed"
            assert_error(client.get(f"/jobs/{job['id']}/result.ply"), 409, "job_failed")


def test_expired_results_answer_410(start: Callable[..., LiveServer]) -> None:
    with start(job_ttl_s=1.0).client() as client:
        job = submit(client, outputs="splat")
        final = wait_for(client, job["id"])
        assert client.get(final["results"]["splat"]).status_code == 200
        time.sleep(1.2)
        assert_error(client.get(final["results"]["splat"]), 410, "job_expired")
        assert_error(client.get(f"/jobs/{job['id']}"), 410, "job_expired")


def test_size_cap_evicts_the_oldest_finished_job(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    with start(jobs_max_bytes=int(1.5 * SPLAT_BYTES)).client() as client:
        old = wait_for(client, submit(client, outputs="splat")["id"])
        assert len(client.get(old["results"]["splat"]).content) == SPLAT_BYTES
        new = wait_for(client, submit(client, outputs="splat")["id"])
        assert_error(client.get(old["results"]["splat"]), 410, "job_expired")
        assert client.get(f"/jobs/{old['id']}").json()["error"]["message"].count("size limit") == 1
        assert client.get(new["results"]["splat"]).status_code == 200
    stored = sum(p.stat().st_size for p in (tmp_path / "jobs").rglob("result.*"))
    assert stored == SPLAT_BYTES


@pytest.mark.parametrize("path", [
    "/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/events",
    "/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/result.ply", "/jobs/abc", "/jobs/..%2F..%2Fetc/result.ply",
    "/jobs/%2e%2e/events", "/jobs/" + "a" * 300, "/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%00/result.spz",
])
def test_unknown_and_malformed_ids_are_404(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404 and response.json()["error"]["code"] in ("job_not_found", "not_found")
    assert_error(client.delete("/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), 404, "job_not_found")


def test_bad_submissions_are_refused_at_once(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = start(api_key="k" * 20, max_upload_mb=0.05)
    good = {"file": ("photo.png", image_bytes(), "image/png")}
    auth = {"Authorization": "Bearer " + "k" * 20}
    with server.client(headers=auth) as client:
        cases = [
            ({"file": ("notes.png", b"just some text", "image/png")}, {}, 415, "unsupported_image"),
            ({"file": ("photo.jpg", b"\xff\xd8\xff\xe0 truncated", "image/jpeg")}, {}, 400, "corrupt_image"),
            ({"file": ("empty.png", b"", "image/png")}, {}, 400, "empty_file"),
            ({"file": ("big.png", os.urandom(60_000), "image/png")}, {}, 413, "upload_too_large"),
            (good, {"f_px": "-1"}, 422, "validation_error"),
            (good, {"outputs": "ply,obj"}, 422, "validation_error"),
            (good, {"outputs": "ply", "encoding": "base64"}, 422, "validation_error"),
            (good, {"outputs": "ply", "max_gaussians": "1.5"}, 422, "validation_error"),
            (None, {"outputs": "ply"}, 422, "missing_file"),
        ]
        for files, data, status, code in cases:
            assert_error(client.post("/jobs", files=files, data=data), status, code)
    with server.client() as anonymous:
        assert_error(anonymous.post("/jobs", files=good), 401, "unauthorized")
        assert_error(anonymous.get("/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), 401, "unauthorized")
    assert not (tmp_path / "jobs").exists() or not [p for p in (tmp_path / "jobs").iterdir() if p.name[0] != "."]


def test_queue_limit_is_a_503_with_retry_after(start: Callable[..., LiveServer]) -> None:
    with start(jobs_max_queued=1).client() as client:
        first = submit(client, outputs="spz")
        wait_for(client, first["id"], ("running", "succeeded"))
        submit(client, outputs="spz")
        response = client.post("/jobs", files={"file": ("p.png", image_bytes(), "image/png")})
        if response.status_code != 202:  # the first may have finished and the second started meanwhile
            assert_error(response, 503, "queue_full")
            assert int(response.headers["retry-after"]) >= 1


def test_jobs_are_listed_in_the_api_info(client: httpx.Client) -> None:
    listed = {(e["method"], e["path"]) for e in client.get("/").json()["endpoints"]}
    assert {("POST", "/jobs"), ("GET", "/jobs/{job_id}"), ("GET", "/jobs/{job_id}/events"),
            ("DELETE", "/jobs/{job_id}"), ("GET", "/jobs/{job_id}/result.vertex.ply")} <= listed


# ------------------------------------------------------------------------------------------ the client


def run_remote(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SHARP_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "app", "remote", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_remote_client_downloads_the_results(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = start(jobs_max_queued=1)  # three images: the third submission gets a 503 and is retried
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed, name in ((5, "one"), (6, "two"), (7, "three")):
        (photos / f"{name}.png").write_bytes(image_bytes(seed))
    run = run_remote("-i", str(photos), "-o", str(tmp_path / "out"), "--url", server.url, "--format", "ply,spz")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "forward" in run.stderr and "retrying in" in run.stderr
    assert "HTTP Request" not in run.stderr  # httpx's request log stays quiet
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"{name}.{ext}" for name in ("one", "three", "two") for ext in ("ply", "spz")]
    with server.client() as client:
        sync = client.post("/predict/ply", files={"file": ("one.png", image_bytes(5), "image/png")}).content
    assert (tmp_path / "out" / "one.ply").read_bytes() == sync
    assert decode_spz((tmp_path / "out" / "two.spz").read_bytes()).num_gaussians == TINY_GAUSSIANS

    (photos / "bad.png").write_bytes(b"not an image at all")
    run = run_remote("-i", str(photos / "bad.png"), "-o", str(tmp_path / "out"), "--url", server.url)
    assert run.returncode == 1 and "bad.png: failed:" in run.stderr and "unsupported_image" in run.stderr
    assert "Traceback" not in run.stderr



def test_remote_client_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    (tmp_path / "one.png").write_bytes(image_bytes())
    common = ["remote", "-i", str(tmp_path / "one.png"), "-o", str(tmp_path / "out")]
    assert main([*common, "--url", "http://127.0.0.1:9", "--format", "obj"]) == 2
    assert capsys.readouterr().err.startswith("error: --format: unknown format obj")
    assert main([*common, "--url", "127.0.0.1:8000"]) == 2
    assert capsys.readouterr().err.startswith("error: --url must start with http")
    assert main([*common, "--url", "http://127.0.0.1:9"]) == 1  # nothing listens on port 9
    assert capsys.readouterr().err.startswith("error: cannot reach http://127.0.0.1:9")


def test_an_upload_is_checked_by_its_header_and_decoded_once_by_the_job(client: httpx.Client) -> None:
    """Submission reads the header only (format, size, pixel limit); pixels damaged past it fail the job,
    with the image's own error, when its worker decodes the photo."""
    photo = image_bytes()
    job = submit(client, photo[: len(photo) // 2])
    failed = wait_for(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "corrupt_image", failed

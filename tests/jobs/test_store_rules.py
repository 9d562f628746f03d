"""The job store's rules on a real folder: the cap counts what unfinished jobs reserve, eviction spares the job
that finished last, one server per folder (real `python -m app serve` processes beside a live server), a taken
port is one line, and a submission either becomes a job or leaves nothing (docs/jobs.md#the-store)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.http import create_app
from app.jobs.job import Job, new_job_id
from app.jobs.local import LocalJobQueue
from app.jobs.size import projected_bytes
from app.jobs.store import ORPHAN_AGE_S, JobStore
from app.predictor import SharpPredictor
from app.service import InferenceService
from tests.conformance import DATA_DIR
from tests.helpers import LiveServer, assert_error, events, free_port, make_clip, tiny_settings

REPO = Path(__file__).resolve().parents[2]


def finished_job(store: JobStore, size: int, finished_at: float) -> Job:
    """A succeeded job with one real `size`-byte result file in `store`."""
    job = Job(id=new_job_id(), created_at=finished_at - 1, outputs=["spz"], filename="photo.png")
    job.finish("succeeded", finished_at, store.ttl_s)
    store.save(job)
    job.results["spz"] = store.write_result(job.id, "spz", os.urandom(size))
    store.save(job)
    return job


def test_the_job_that_finished_last_keeps_its_files_though_they_pass_the_cap(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs", ttl_s=3600, max_bytes=250_000)
    now = time.time()
    older = finished_job(store, 100_000, now - 10)
    last = finished_job(store, 300_000, now)  # alone over the cap (a projection that fell short)
    expired, removed = store.sweep([older, last], now)
    assert [job.id for job in expired] == [older.id] and not removed
    assert older.expired == "evicted" and not store.result_path(older.id, "spz").exists()
    assert last.expired is None and store.read_result(last.id, "spz") is not None
    assert store.sweep([older, last], now + 1) == ([], [])  # it stays until another job finishes
    newest = finished_job(store, 10_000, now + 2)
    expired, _ = store.sweep([older, last, newest], now + 2)
    assert [job.id for job in expired] == [last.id] and newest.expired is None


def test_unfinished_jobs_reserve_their_projected_bytes(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs", ttl_s=3600, max_bytes=1_000_000)
    now = time.time()
    first, second = finished_job(store, 300_000, now - 20), finished_job(store, 300_000, now - 10)
    queued = Job(id=new_job_id(), created_at=now, outputs=["ply"], input_bytes=50_000, projected_bytes=500_000)
    store.save(queued)
    assert store.reserved_bytes([first, second, queued]) == 550_000
    expired, _ = store.sweep([first, second, queued], now)  # 300 + 300 + 550 kB: the oldest makes room
    assert [job.id for job in expired] == [first.id] and second.expired is None and queued.expired is None
    queued.status, queued.results = "running", {"frames/000000.ply": 700_000}  # wrote more than projected
    assert store.reserved_bytes([queued]) == 750_000


def test_a_job_that_fits_only_without_the_queued_ones_reservations_is_a_retryable_503(
        serve: Callable[[Any], LiveServer], tmp_path: Path) -> None:
    loading = threading.Event()  # the model never loads while the test runs: every job stays queued

    def held(settings: Any) -> SharpPredictor:
        loading.wait(60)
        raise RuntimeError("released")

    photo = (DATA_DIR / "coffee.png").read_bytes()
    one_job = len(photo) + projected_bytes(["splat"], {}, 131_072)
    settings = tiny_settings(jobs_dir=tmp_path / "jobs", jobs_max_bytes=int(1.5 * one_job))
    live = serve(create_app(settings, loader=held))
    try:
        with live.client() as client:
            files = {"file": ("coffee.png", photo, "image/png")}
            first = client.post("/jobs", data={"outputs": "splat"}, files=files)
            assert first.status_code == 202, first.text
            refused = assert_error(client.post("/jobs", data={"outputs": "splat"}, files=files), 503, "store_full")
            assert "reserve" in refused["message"] and int(client.post(
                "/jobs", data={"outputs": "splat"}, files=files).headers["retry-after"]) >= 1
            assert_error(client.post("/jobs", data={"outputs": "ply,json"}, files=files), 413, "job_too_large")
        assert [p.name for p in (tmp_path / "jobs").iterdir() if not p.name.startswith(".")] == [first.json()["id"]]
    finally:
        loading.set()


def test_start_up_removes_folders_without_a_state_file_older_than_a_minute(
        serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    old, fresh = root / new_job_id(), root / new_job_id()
    for directory in (old, fresh):
        directory.mkdir(parents=True)
        (directory / "input").write_bytes(b"an upload whose job.json was never written")
    past = time.time() - ORPHAN_AGE_S - 5
    os.utime(old, (past, past))
    (root / "notes").mkdir()  # not a job id: not ours to delete
    os.utime(root / "notes", (past, past))
    live = serve(create_app(tiny_settings(jobs_dir=root), predictor=predictor))
    with live.client() as client:
        assert client.get("/health").status_code == 200
    assert not old.exists() and fresh.is_dir() and (root / "notes").is_dir()


def test_a_refused_submission_leaves_no_folder(serve: Callable[[Any], LiveServer], predictor: SharpPredictor,
                                               tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    live = serve(create_app(tiny_settings(jobs_dir=root), predictor=predictor))
    with live.client() as client:
        response = client.post("/jobs", data={"max_frames": "100000000000000000000"},
                               files={"file": ("walk.mp4", make_clip(2), "video/mp4")})
        assert response.status_code != 202 and response.status_code < 600, response.text
        assert response.headers["content-type"].startswith("application/json")
    assert [path.name for path in root.iterdir() if not path.name.startswith(".")] == []


def test_a_submission_that_cannot_be_stored_leaves_nothing(predictor: SharpPredictor, tmp_path: Path) -> None:
    settings = tiny_settings(jobs_dir=tmp_path / "jobs")
    queue = LocalJobQueue(InferenceService(settings, predictor), settings)
    sequence = {"fps": None, "start": 0.0, "end": None, "max_frames": 10**20, "align": "none"}
    with pytest.raises(TypeError):  # orjson cannot write a 67-bit integer into job.json
        asyncio.run(queue.submit(make_clip(2), filename="walk.mp4", f_px=None, outputs=["spz"], options={},
                                 sequence=sequence))
    assert [path.name for path in (tmp_path / "jobs").iterdir() if not path.name.startswith(".")] == []


def serve_process(jobs_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`python -m app serve` on `port` and `jobs_dir`, to its end (it is expected to stop at once)."""
    env = {**os.environ, "SHARP_JOBS_DIR": str(jobs_dir), "SHARP_PRESET": "tiny", "SHARP_DEVICE": "cpu",
           "SHARP_API_KEY": ""}
    return subprocess.run([sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_second_server_on_the_folder_stops_with_one_line_and_the_first_ones_job_succeeds(
        serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    live = serve(create_app(tiny_settings(jobs_dir=root), predictor=predictor))
    with live.client() as client:
        job = client.post("/jobs", data={"max_frames": "4"},
                          files={"file": ("walk.mp4", make_clip(4), "video/mp4")}).json()
        second = serve_process(root, free_port())
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert str(root) in lines[0] and f"pid {os.getpid()}" in lines[0], lines[0]
        final = events(client, job["id"])[-1]
        assert final["status"] == "succeeded", final
        assert client.get(final["results"]["frames/000003.spz"]).status_code == 200


def test_a_taken_port_ends_with_one_line_and_touches_no_job(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    running = Job(id=new_job_id(), created_at=time.time(), outputs=["spz"], status="running", stage="forward")
    JobStore(root, ttl_s=3600, max_bytes=2**30).save(running)
    state = (root / running.id / "job.json").read_bytes()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve_process(root, taken.getsockname()[1])
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot listen on 127.0.0.1:"), result.stderr
    assert "terminate called" not in result.stderr
    assert (root / running.id / "job.json").read_bytes() == state
    assert orjson.loads(state)["status"] == "running"


def test_a_clip_jobs_result_file_is_a_404_naming_its_frames(
        serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path) -> None:
    live = serve(create_app(tiny_settings(jobs_dir=tmp_path / "jobs"), predictor=predictor))
    with live.client() as client:
        job = client.post("/jobs", files={"file": ("walk.mp4", make_clip(2), "video/mp4")}).json()
        assert job["outputs"] == ["spz"]  # no outputs named: the compact format
        final = events(client, job["id"])[-1]
        assert final["status"] == "succeeded", final
        assert sorted(final["results"]) == ["frames/000000.spz", "frames/000001.spz", "manifest.json",
                                            "preview.mp4", "sequence.zip"]
        for name in ("result.spz", "result.ply"):
            error = assert_error(client.get(f"/jobs/{job['id']}/{name}"), 404, "clip_job_files")
            assert "frames/000000" in error["message"] and "sequence.zip" in error["message"]

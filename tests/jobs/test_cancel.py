"""Cancelling jobs at the worst moments: just as the worker takes them, and while they render an orbit. Real
uvicorn servers on loopback, the tiny model, a real jobs directory."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, tiny_settings
from tests.http import hostile_inputs as h

PHOTO = h.save(h.gradient(96, 64), "PNG")


@pytest.fixture
def client(serve: Callable[[Any], LiveServer], tmp_path: Path) -> Iterator[httpx.Client]:
    settings = tiny_settings(jobs_dir=tmp_path / "jobs", cache_dir=tmp_path / "cache", jobs_max_queued=64)
    live = serve(create_app(settings, predictor=SharpPredictor.load("tiny", device="cpu")))
    with live.client(timeout=120) as c:
        yield c


def submit(client: httpx.Client, outputs: str) -> dict[str, Any]:
    response = client.post("/jobs", files={"file": ("photo.png", PHOTO)}, data={"outputs": outputs})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(client: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while not done(job := client.get(f"/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def final(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def test_a_burst_of_submit_then_cancel_always_ends_cancelled(client: httpx.Client, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Each job is cancelled as the idle worker takes it (it used to fail: its upload was deleted under it)."""
    caplog.set_level(logging.INFO, logger="app.jobs")  # caplog sees the server thread's records too
    ids = []
    for _ in range(30):
        job = submit(client, "spz")
        answer = client.delete(f"/jobs/{job['id']}")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        ids.append(job["id"])
    after = submit(client, "spz")  # the worker takes jobs in order: once this one is done, all of them are
    assert wait_for(client, after["id"], final)["status"] == "succeeded"
    jobs = [client.get(f"/jobs/{job_id}").json() for job_id in ids]
    assert [(job["status"], job["error"]) for job in jobs] == [("cancelled", None)] * 30
    for job_id in ids:
        assert [p.name for p in (tmp_path / "jobs" / job_id).iterdir()] == ["job.json"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_cancel_stops_a_job_at_the_next_frame_of_its_orbit(client: httpx.Client, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.jobs")
    job = submit(client, "orbit")
    # A frame or more rendered (encode is the last 5 % of a job: 0.95 + 0.05 x frames / 60).
    wait_for(client, job["id"], lambda j: (j["stage"] == "encode" and j["progress"] > 0.9504) or final(j))
    answer = client.delete(f"/jobs/{job['id']}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    after = submit(client, "spz")
    assert wait_for(client, after["id"], final)["status"] == "succeeded"

    assert client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
    assert [p.name for p in (tmp_path / "jobs" / job["id"]).iterdir()] == ["job.json"]
    stopped = [m for m in caplog.messages if m.startswith(f"Job {job['id']} stopped")]
    assert len(stopped) == 1, caplog.messages
    # It stopped between two frames: the encode stage (the orbit, the only output) was under way, not done.
    match = re.search(r"during encode at (\d+)%", stopped[0])
    assert match and int(match.group(1)) < 100, stopped

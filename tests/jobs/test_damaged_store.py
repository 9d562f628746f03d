"""A jobs directory holding damaged jobs: the server starts, serves the good ones, and sets the damaged ones
aside with a log line. A real uvicorn server (lifespan included) over a real jobs directory."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.http import create_app
from app.jobs.job import Job, new_job_id
from app.jobs.store import JobStore
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, tiny_settings

DAMAGED_STATES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "id-not-its-directory": lambda state: orjson.dumps({**state, "id": "../../etc"}),
    "not-json": lambda state: b"{\"id\": \"trunc",
    "a-json-list": lambda state: orjson.dumps([state]),
    "status-unknown": lambda state: orjson.dumps({**state, "status": "exploded"}),
    "created-at-a-string": lambda state: orjson.dumps({**state, "created_at": "yesterday"}),
    "results-not-sizes": lambda state: orjson.dumps({**state, "results": {"spz": "big"}}),
    "empty-file": lambda state: b"",
}


def test_damaged_jobs_are_set_aside_and_the_server_starts(serve: Callable[[Any], LiveServer], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="app.jobs")  # caplog sees the server thread's records too
    root = tmp_path / "jobs"
    store = JobStore(root, ttl_s=3600, max_bytes=2**30)
    good = Job(id=new_job_id(), created_at=time.time(), outputs=["spz"], filename="photo.png")
    good.finish("cancelled", time.time(), 3600)
    store.save(good)
    damaged = {}
    for kind, build in DAMAGED_STATES.items():
        job_id = new_job_id()
        (root / job_id).mkdir()
        (root / job_id / "job.json").write_bytes(build(orjson.loads(orjson.dumps(good.to_dict()))))
        damaged[job_id] = kind
    (root / "notes").mkdir()  # not a job id: left alone

    settings = tiny_settings(jobs_dir=root, cache_dir=tmp_path / "cache")
    predictor = SharpPredictor.load("tiny", device="cpu")
    live = serve(create_app(settings, predictor=predictor))
    with live.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get(f"/jobs/{good.id}").json()["status"] == "cancelled"
        for job_id in damaged:
            assert client.get(f"/jobs/{job_id}").status_code == 404

    names = sorted(path.name for path in root.iterdir() if path.name not in (".lock", ".holder"))
    assert names == sorted([good.id, "notes", *(f".damaged-{job_id}" for job_id in damaged)])
    for job_id, kind in damaged.items():
        assert any(job_id in m and "set aside" in m for m in caplog.messages), (kind, caplog.messages)

    live.stop()  # one server per jobs folder
    caplog.clear()  # a second start reads only the good job, quietly
    again = serve(create_app(settings, predictor=predictor))
    with again.client() as client:
        assert client.get(f"/jobs/{good.id}").json()["status"] == "cancelled"
    assert not [m for m in caplog.messages if "set aside" in m], caplog.messages

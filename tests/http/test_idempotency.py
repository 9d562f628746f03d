"""`Idempotency-Key` (`app.http.idempotency`) on `POST /jobs` and `POST /predict*`: real uvicorn servers on
loopback, the `tiny` model, real image bytes, a real jobs directory."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.predictor import SharpPredictor
from tests.helpers import LiveServer, assert_error
from tests.jobs.test_jobs import image_bytes, wait_for


def post_job(client: httpx.Client, key: str | None, image: bytes, **data: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/jobs", files={"file": ("photo.png", image, "image/png")}, data=data, headers=headers)


def job_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


def test_jobs_same_key_same_job(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    """The same key and request: one job, however often it is sent, also after a restart; another photo or
    field with that key: 422; once the job is deleted, the key is free again."""
    photo, other = image_bytes(1), image_bytes(2)
    server = start()
    with server.client() as client:
        first = post_job(client, "key-1", photo)
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        job_id = first.json()["id"]
        again = post_job(client, '"key-1"', photo)  # the draft's structured-field form: a quoted string
        assert again.status_code == 202 and again.json()["id"] == job_id
        assert again.headers["idempotent-replayed"] == "true" and again.headers["location"] == f"/jobs/{job_id}"
        error = assert_error(post_job(client, "key-1", other), 422, "idempotency_key_reused")
        assert "Idempotency-Key" in error["message"]
        assert_error(post_job(client, "key-1", photo, outputs="spz"), 422, "idempotency_key_reused")
        assert job_dirs(tmp_path / "jobs") == [job_id]
        wait_for(client, job_id)
        unkeyed = [post_job(client, None, photo).json()["id"] for _ in range(2)]
        assert len(set(unkeyed)) == 2  # without a key, every submission is a job
        for extra in unkeyed:
            client.delete(f"/jobs/{extra}")
    server.stop()
    with start().client() as client:  # the key lives as long as its job, restarts included
        replay = post_job(client, "key-1", photo)
        assert replay.json()["id"] == job_id and replay.json()["status"] == "succeeded"
        assert client.delete(f"/jobs/{job_id}").status_code == 200
        fresh = post_job(client, "key-1", other)
        assert fresh.status_code == 202 and fresh.json()["id"] != job_id
        assert_error(post_job(client, "x" * 256, photo), 400, "invalid_idempotency_key")
        assert_error(post_job(client, "two words", photo), 400, "invalid_idempotency_key")


def test_predict_same_key(start: Callable[..., LiveServer]) -> None:
    """`POST /predict/spz`: the same key and photo give the same bytes; another photo with it: 422."""
    photo = image_bytes(4)
    with start().client() as client:
        def predict(key: str, image: bytes) -> httpx.Response:
            return client.post("/predict/spz", files={"file": ("p.png", image, "image/png")},
                               headers={"Idempotency-Key": key})

        first, second = predict("k", photo), predict("k", photo)
        assert first.status_code == second.status_code == 200 and first.content == second.content
        assert_error(predict("k", image_bytes(5)), 422, "idempotency_key_reused")
        response = client.post("/predict", files={"file": ("p.png", photo, "image/png")},
                               data={"max_gaussians": "10"}, headers={"Idempotency-Key": "k"})
        assert_error(response, 422, "idempotency_key_reused")  # another route is another request


def test_key_in_flight(start: Callable[..., LiveServer], predictor: SharpPredictor,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """While a request with a key runs, another with that key gets 409 (Retry-After), one without a key or
    with another key is not refused; once the first answered, the same request goes through."""
    entered, release = threading.Event(), threading.Event()
    predict = predictor.predict

    def held_predict(*args: Any, **kwargs: Any) -> Any:  # the real network, once the test lets it run
        entered.set()
        assert release.wait(60)
        return predict(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict", held_predict)
    photo = image_bytes(6)
    with start().client() as client, ThreadPoolExecutor(1) as pool:
        def send(key: str) -> httpx.Response:
            return client.post("/predict/ply", files={"file": ("p.png", photo, "image/png")},
                               headers={"Idempotency-Key": key})

        running = pool.submit(send, "busy")
        assert entered.wait(60)
        response = send("busy")
        assert_error(response, 409, "idempotency_key_in_use")
        assert response.headers["retry-after"] == "1"
        queued = post_job(client, "another", photo)  # another key: accepted (a job waits for the model)
        assert queued.status_code == 202
        release.set()
        assert running.result(60).status_code == 200
        assert send("busy").status_code == 200


def test_schema_names_the_header(start: Callable[..., LiveServer]) -> None:
    with start().client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path in ("/jobs", "/predict", "/predict/ply", "/predict/spz"):
        parameters = paths[path]["post"]["parameters"]
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in parameters), path
        assert "409" in paths[path]["post"]["responses"]


def test_browsers_may_send_the_key(start: Callable[..., LiveServer]) -> None:
    """With CORS on, a browser's preflight for `Idempotency-Key` is allowed and the replay header is exposed."""
    origin = "https://a.example"
    with start(cors_origins=[origin]).client() as client:
        preflight = client.options("/jobs", headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "idempotency-key"})
        assert preflight.status_code == 200
        assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
        assert post_job(client, "cors-1", image_bytes(9)).status_code == 202
        response = client.post("/jobs", files={"file": ("photo.png", image_bytes(9), "image/png")},
                               headers={"Origin": origin, "Idempotency-Key": "cors-1"})
        assert response.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" in response.headers["access-control-expose-headers"].lower()

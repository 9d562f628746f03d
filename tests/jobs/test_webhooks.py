"""Signed webhooks (`app.jobs.webhooks`) end to end: a real uvicorn server with the `tiny` model, a real HTTP
receiver on loopback (allowed through SHARP_WEBHOOK_ALLOWED_HOSTS), signatures checked with the
`standardwebhooks` package (the spec's reference library), never with our own code."""

from __future__ import annotations

import base64
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, assert_error, settings_for
from tests.jobs.test_jobs import image_bytes, submit, wait_for

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST (path, headers, body) and answers each with the
    next status of `answers` (then 200); a 3xx carries `Location: /elsewhere`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.changed:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                              "body": body, "status": status})
                    receiver.changed.notify_all()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60) -> list[dict[str, Any]]:
        """The requests so far, once `done(requests)` holds."""
        with self.changed:
            assert self.changed.wait_for(lambda: done(self.requests), timeout), self.requests
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def succeeded_ok(requests: list[dict[str, Any]]) -> bool:
    return any(orjson.loads(r["body"])["type"] == "job.succeeded" and r["status"] == 200 for r in requests)


def verified(request: dict[str, Any]) -> dict[str, Any]:
    """The event, once `standardwebhooks` has checked its signature and timestamp."""
    return Webhook(SECRET).verify(request["body"], request["headers"])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def start(serve: Callable[[Any], LiveServer], predictor: SharpPredictor, tmp_path: Path
          ) -> Callable[..., LiveServer]:
    """`start(**settings) -> LiveServer`, webhooks on (loopback allowed), on `tmp_path/jobs`."""

    def make(**overrides: Any) -> LiveServer:
        values = {"webhook_secret": SECRET, "webhook_allowed_hosts": ["127.0.0.1"], **overrides}
        return serve(create_app(settings_for(tmp_path / "jobs", **values), predictor=predictor))

    return make


def test_signed_events_of_a_job(start: Callable[..., LiveServer], receiver: Receiver) -> None:
    """started, progress (at most every 0.5 s) and succeeded reach the receiver in order, each signed so that
    `standardwebhooks` verifies it, each with its own id; the job records the deliveries."""
    with start().client() as client:
        job = submit(client, webhook_url=receiver.url, webhook_events="started,progress,succeeded")
        assert job["webhook"]["url"] == receiver.url and job["webhook"]["attempts"] == 0
        requests = receiver.wait_for(succeeded_ok)
        events = [verified(request) for request in requests]
        types = [event["type"] for event in events]
        assert types[0] == "job.started" and types[-1] == "job.succeeded", types
        assert set(types[1:-1]) <= {"job.progress"}
        assert len({request["headers"]["webhook-id"] for request in requests}) == len(requests)
        assert all(request["path"] == "/hook" for request in requests)
        final = events[-1]["data"]
        assert final["id"] == job["id"] and final["status"] == "succeeded" and final["url"] == f"/jobs/{job['id']}"
        assert final["results"] == wait_for(client, job["id"])["results"]
        progress = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events
                    if e["type"] == "job.progress"]
        assert progress and all((b - a).total_seconds() >= 0.5 for a, b in itertools.pairwise(progress))
        values = [e["data"]["progress"] for e in events if e["type"] == "job.progress"]
        assert all(a < b for a, b in itertools.pairwise(values))  # each says something new
        with pytest.raises(WebhookVerificationError):  # tampering is caught by the same library
            Webhook(SECRET).verify(requests[-1]["body"].replace(b"succeeded", b"failed"), requests[-1]["headers"])
        deadline = time.monotonic() + 30
        while (record := client.get(f"/jobs/{job['id']}").json()["webhook"])["delivered"] < len(requests):
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        assert record["attempts"] == len(requests) and record["last_status"] == 200
        assert record["last_event"] == "job.succeeded" and record["last_error"] is None


def test_cancelled_and_default_events(start: Callable[..., LiveServer], receiver: Receiver) -> None:
    """Without `webhook_events`: every status change; a job cancelled while queued sends `job.cancelled`."""
    with start().client() as client:
        first = submit(client, webhook_url=receiver.url)
        second = submit(client, image_bytes(3), webhook_url=receiver.url)
        client.delete(f"/jobs/{second['id']}")
        requests = receiver.wait_for(lambda rs: sum(orjson.loads(r["body"])["type"] in
                                                    ("job.succeeded", "job.cancelled") for r in rs) == 2)
        by_job: dict[str, list[str]] = {}
        for request in requests:
            event = verified(request)
            by_job.setdefault(event["data"]["id"], []).append(event["type"])
        assert by_job[first["id"]] == ["job.started", "job.succeeded"]
        assert by_job[second["id"]][-1] == "job.cancelled" and "job.progress" not in by_job[second["id"]]


def test_refused_targets_and_settings(start: Callable[..., LiveServer], tmp_path: Path) -> None:
    """Private, loopback and link-local targets not allowed, bad URLs and events: 422, nothing queued; a
    server without a secret refuses webhooks altogether."""
    server = start(webhook_allowed_hosts=[])
    with server.client() as client:
        for url in ("http://10.1.2.3/hook", "http://127.0.0.1:9/hook", "http://localhost/hook",
                    "http://169.254.169.254/latest", "http://[::1]/hook", "http://[::ffff:192.168.0.1]/"):
            response = client.post("/jobs", files={"file": ("p.png", image_bytes(), "image/png")},
                                   data={"webhook_url": url})
            assert "SHARP_WEBHOOK_ALLOWED_HOSTS" in assert_error(response, 422, "webhook_url_refused")["message"]
        for url in ("ftp://example.com/x", "not a url"):
            response = client.post("/jobs", files={"file": ("p.png", image_bytes(), "image/png")},
                                   data={"webhook_url": url})
            assert_error(response, 422, "webhook_url_refused")
        response = client.post("/jobs", files={"file": ("p.png", image_bytes(), "image/png")},
                               data={"webhook_url": "http://10.1.2.3/", "webhook_events": "done"})
        assert_error(response, 422, "validation_error")
        assert not [p for p in (tmp_path / "jobs").iterdir() if not p.name.startswith(".")]
    server.stop()  # one server per jobs folder
    with start(webhook_secret=None).client() as client:
        response = client.post("/jobs", files={"file": ("p.png", image_bytes(), "image/png")},
                               data={"webhook_url": "https://example.com/hook"})
        assert "SHARP_WEBHOOK_SECRET" in assert_error(response, 422, "webhooks_disabled")["message"]


def test_retries_and_redirects(start: Callable[..., LiveServer], receiver: Receiver) -> None:
    """A target that answers 307, then 500, then 200 gets the same event (same id) three times; the redirect
    is not followed; the job records 3 attempts, 1 delivered."""
    receiver.answers = [307, 500]
    with start().client() as client:
        job = submit(client, webhook_url=receiver.url, webhook_events="succeeded")
        requests = receiver.wait_for(succeeded_ok)
        assert [r["status"] for r in requests] == [307, 500, 200]
        assert len({r["headers"]["webhook-id"] for r in requests}) == 1
        assert all(r["path"] == "/hook" for r in requests)  # never /elsewhere
        assert all(verified(r)["type"] == "job.succeeded" for r in requests)
        deadline = time.monotonic() + 30
        while (record := client.get(f"/jobs/{job['id']}").json()["webhook"])["delivered"] < 1:
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        assert (record["attempts"], record["last_status"], record["last_error"]) == (3, 200, None)


def test_delivery_survives_a_restart(start: Callable[..., LiveServer], receiver: Receiver, tmp_path: Path) -> None:
    """An event its target refused (503) before the server stopped is delivered by the next server on the
    same jobs folder, with the same id, and recorded in the job."""
    receiver.answers = [503] * 1000
    server = start()
    with server.client() as client:
        job = submit(client, webhook_url=receiver.url, webhook_events="succeeded")
        receiver.wait_for(lambda rs: len(rs) >= 1)
        deadline = time.monotonic() + 30
        while client.get(f"/jobs/{job['id']}").json()["webhook"]["attempts"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    server.stop()
    assert (tmp_path / "jobs" / ".webhooks" / f"{job['id']}.json").is_file()
    failed_id = receiver.requests[0]["headers"]["webhook-id"]
    with receiver.changed:
        receiver.answers.clear()
    with start().client() as client:
        requests = receiver.wait_for(succeeded_ok)
        assert {r["headers"]["webhook-id"] for r in requests} == {failed_id}
        assert verified(requests[-1])["data"]["id"] == job["id"]
        deadline = time.monotonic() + 30
        while (record := client.get(f"/jobs/{job['id']}").json()["webhook"])["delivered"] < 1:
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        assert record["attempts"] == len(requests) and record["last_status"] == 200
    assert not (tmp_path / "jobs" / ".webhooks" / f"{job['id']}.json").exists()


def test_interrupted_job_is_told_by_the_next_server(serve: Callable[[Any], LiveServer], predictor: SharpPredictor,
                                                   receiver: Receiver, tmp_path: Path) -> None:
    """A job still queued when the server stops fails `interrupted`; its `job.failed`, queued at shutdown and
    kept on disk, is sent by the next server."""
    gate = threading.Event()

    def loader(_settings: Any) -> SharpPredictor:  # a model that loads only once the test lets it
        assert gate.wait(60)
        return predictor

    settings = settings_for(tmp_path / "jobs", webhook_secret=SECRET, webhook_allowed_hosts=["127.0.0.1"])
    server = serve(create_app(settings, loader=loader))
    with server.client() as client:
        job = submit(client, webhook_url=receiver.url, webhook_events="failed")
    server.stop()
    gate.set()
    assert not receiver.requests
    assert (tmp_path / "jobs" / ".webhooks" / f"{job['id']}.json").is_file()
    with serve(create_app(settings, predictor=predictor)).client() as client:
        (request,) = receiver.wait_for(lambda rs: len(rs) == 1)
        event = verified(request)
        assert (event["type"], event["data"]["id"]) == ("job.failed", job["id"])
        assert event["data"]["error"]["code"] == "interrupted"
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "failed"

"""A server that cannot get its checkpoint (offline, nothing cached): clients are told so, with the fix, through
every retry; the log says it once, then one line a retry. Real HTTP on loopback; the loader fails as the
downloader does when the host is unreachable."""

from __future__ import annotations

import logging
import time

import pytest

from app.http import create_app
from app.service import InferenceService
from app.settings import Settings
from app.weights import CheckpointDownloadError
from tests.helpers import LiveServer, assert_error, tiny_settings
from tests.http import hostile_inputs as h

URL = "https://example.invalid/sharp_2572gikvuh.pt"


def unreachable(_settings: Settings) -> None:
    raise CheckpointDownloadError(f"Downloading {URL} failed after 4 attempt(s): ConnectError.", url=URL,
                                  unreachable=True)


def test_offline_start_says_model_unavailable_with_the_fix_through_every_retry(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = tiny_settings(preset="sharp", checkpoint_url=URL)
    service = InferenceService(settings, loader=unreachable, load_backoff_s=(0.2, 0.4))
    attempts = []
    with caplog.at_level(logging.INFO, logger="app.service"):
        server = LiveServer.start(create_app(settings, service=service))
        try:
            with server.client() as client:
                deadline = time.monotonic() + 60
                while len(attempts) < 6:  # six load attempts: a health check and a prediction between each
                    health = client.get("/health")
                    assert time.monotonic() < deadline
                    if health.json()["status"] == "loading":  # only before the first attempt has failed
                        assert not attempts
                        continue
                    body = health.json()
                    assert health.status_code == 503 and body["status"] == "error", body
                    for fix in (URL, "SHARP_CHECKPOINT", "SHARP_PRESET=tiny"):
                        assert fix in body["message"], body
                    response = client.post("/predict", files={"file": ("a.png", h.save(h.gradient(), "PNG"))})
                    error = assert_error(response, 503, "model_unavailable")
                    assert "SHARP_PRESET=tiny" in error["message"] and int(response.headers["retry-after"]) >= 1
                    tried = sum("attempt" in r.getMessage() and r.getMessage().startswith("Loading the sharp")
                                for r in caplog.records)
                    if tried > len(attempts):
                        attempts.append(tried)
                    time.sleep(0.02)
        finally:
            server.stop()
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING and "Loading the model failed" in
                r.getMessage()]
    tried = sum(r.getMessage().startswith("Loading the sharp") for r in caplog.records)
    assert [r.levelno for r in failures[:1]] == [logging.ERROR] and URL in failures[0].getMessage()
    assert all(r.levelno == logging.WARNING and "failed again" in r.getMessage() for r in failures[1:])
    assert len(failures) in (tried - 1, tried)  # one line a failed attempt (the last may be cut by the stop)
    assert all("\n" not in r.getMessage() for r in failures)

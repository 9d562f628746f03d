"""`POST /render` under load and abandonment: a render is admitted and counted like a prediction, stops when
its client hangs up, and does not hold up a shutdown. Real uvicorn servers, the tiny preset, raw sockets."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, assert_error, multipart, tiny_settings
from tests.http import hostile_inputs as h

REPO = Path(__file__).resolve().parents[2]
PHOTO = h.save(h.gradient(96, 64), "PNG")
HEAVY_RENDER = {"output": "mp4", "size": "1024", "frames": "240"}
"""Minutes of rendering on a CPU: longer than any wait below."""


def render_request(fields: dict[str, str]) -> bytes:
    body, content_type = multipart(fields, "photo.png", PHOTO)
    head = (f"POST /render HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def open_render(url: str) -> socket.socket:
    """A heavy render whose client will hang up (the caller closes the socket)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(render_request(HEAVY_RENDER))
    return sock


def wait_for_health(client: httpx.Client, deadline_s: float = 120, **expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_s
    while True:
        health = client.get("/health").json()
        if all(health[key] == value for key, value in expected.items()):
            return health
        assert time.monotonic() < deadline, (health, expected)
        time.sleep(0.05)


def test_renders_are_admitted_counted_and_stopped_when_their_clients_hang_up(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.cancel")  # caplog sees the server thread's records too
    live = LiveServer.start(create_app(tiny_settings(max_queue=1),
                                       predictor=SharpPredictor.load("tiny", device="cpu")))
    try:
        with live.client() as client:
            first = open_render(live.url)
            wait_for_health(client, in_progress=1, queue_depth=0)
            second = open_render(live.url)
            wait_for_health(client, in_progress=1, queue_depth=1)  # waits for the model or the renderer

            full = client.post("/render", files={"file": ("p.png", PHOTO)}, data={"size": "64"})
            assert_error(full, 503, "queue_full")
            assert int(full.headers["retry-after"]) >= 1

            first.close()
            second.close()
            wait_for_health(client, in_progress=0, queue_depth=0)
            stopped = [m for m in caplog.messages if m.startswith("Stopping a run nobody waits for")]
            assert len(stopped) == 2, caplog.messages

            small = client.post("/render", files={"file": ("p.png", PHOTO)}, data={"size": "64"})
            assert small.status_code == 200 and small.content.startswith(b"\x89PNG")
    finally:
        live.stop()


SERVE = """
import logging, sys
import uvicorn
from app.http import create_app
from app.http.server import uvicorn_options
from app.settings import Settings

for name in ("app.service", "app.cancel"):
    logging.getLogger(name).addHandler(logging.StreamHandler())
    logging.getLogger(name).setLevel(logging.INFO)
settings = Settings(preset="tiny", device="cpu", api_key=None, jobs_dir=sys.argv[2], cache_dir=sys.argv[3])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[1]), log_level="info",
            **uvicorn_options(shutdown_grace_s=1.0))
"""


def test_sigterm_during_a_render_shuts_down(tmp_path: Path) -> None:
    """A render in progress (its client still waiting) gets the grace period, then is stopped at its next frame;
    the server exits instead of "Waiting for background tasks" for minutes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(port), str(tmp_path / "jobs"),
                               str(tmp_path / "cache")], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=30) as client, open_render(url):
            wait_for_health(client, in_progress=1)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=90)
        log = server.stderr.read() if server.stderr else ""
        assert "Application shutdown complete" in log, log[-3000:]  # uvicorn then re-raises the SIGTERM
        assert "Cancel 1 running task(s)" in log and "Stopping a run nobody waits for any more" in log, log[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

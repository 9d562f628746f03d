"""Shutting the server down while job event streams are open: a real `uvicorn` process and a real SIGINT."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


PHOTO = _png()

SERVE_WITH_A_MODEL_THAT_NEVER_LOADS = """
import sys, threading
import uvicorn
from app.http import create_app
from app.settings import Settings

def never(settings):
    threading.Event().wait()

settings = Settings(preset="tiny", device="cpu", api_key=None, jobs_dir=sys.argv[2], cache_dir=sys.argv[3])
uvicorn.run(create_app(settings, loader=never), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def test_ctrl_c_ends_open_event_streams(tmp_path: Path) -> None:
    """A queued job's event stream stays open for as long as the queue is long (here: forever, the model never
    loads). SIGINT (Ctrl+C) must end it and let the server exit, not wait for the stream."""
    import signal
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", SERVE_WITH_A_MODEL_THAT_NEVER_LOADS, str(port),
                               str(tmp_path / "jobs"), str(tmp_path / "cache")], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        with httpx.Client(base_url=url, timeout=120) as client:
            job = client.post("/jobs", files={"file": ("photo.png", PHOTO, "image/png")}).json()
            seen = []
            with client.stream("GET", f"/jobs/{job['id']}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        seen.append(orjson.loads(line[6:]))
                        server.send_signal(signal.SIGINT)
            assert [event["status"] for event in seen] == ["queued"]  # the stream ended, the job did not
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


"""Helpers the test modules share (fixtures are in `conftest.py`): a live uvicorn server on loopback, a server
process on loopback (free port, readiness, stop; the benchmarks use these too), the tiny preset's settings, the
API's error shape, a hand-built multipart body, a Modal Volume stand-in, made-up scenes and a job's event stream."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import uvicorn
from starlette.types import ASGIApp

from app.gaussians import GaussianScene
from app.http.schemas import ErrorResponse
from app.prediction import ModelInfo, Prediction
from app.settings import Settings


def digest(data: bytes) -> str:
    """A file's SHA-256: compare large bodies by it, since a failed `==` of two large byte strings makes pytest
    diff them for minutes."""
    return hashlib.sha256(data).hexdigest()


def tiny_settings(**overrides: Any) -> Settings:
    """The tiny preset's settings, with a fresh jobs folder unless one is given (a server holds its jobs folder
    for its life: two test servers, or two test runs, must not share one)."""
    values: dict[str, Any] = {"preset": "tiny", "device": "cpu", "api_key": None, "cors_origins": [],
                              "max_queue": 8, "max_upload_mb": 25, "max_pixels": 50_000_000}
    if "jobs_dir" not in overrides:
        values["jobs_dir"] = Path(tempfile.mkdtemp(prefix="sharp-test-jobs-"))
    return Settings(**{**values, **overrides})


def settings_for(jobs_dir: Path, **overrides: Any) -> Settings:
    """The tiny preset's settings for a jobs server on `jobs_dir`, its model cache beside it (no API key, no
    CORS), with `overrides` on top."""
    values: dict[str, Any] = {"preset": "tiny", "device": "cpu", "api_key": None, "cors_origins": [],
                              "jobs_dir": jobs_dir, "cache_dir": jobs_dir.parent / "cache"}
    return Settings(**{**values, **overrides})



def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is a JSON error of the service's one shape, with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = ErrorResponse.model_validate(response.json())
    assert body.error.code == code, response.text
    assert body.error.message
    assert body.error.request_id == response.headers["x-request-id"]
    return response.json()["error"]



def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type, built by hand (to send it chunked)."""
    boundary = "sharp-serve-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"



@dataclass
class LiveServer:
    """A uvicorn server running an ASGI app (lifespan included) on a free loopback port in a thread."""

    app: ASGIApp
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @classmethod
    def start(cls, app: ASGIApp, **config: Any) -> LiveServer:
        """`config`: more `uvicorn.Config` options (by default uvicorn's own defaults)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                                               lifespan="on", **config))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return cls(app=app, url=f"http://127.0.0.1:{port}", server=server, thread=thread)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 60, **kwargs})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server process to bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout_s: float = 180.0,
               log: Path | None = None) -> None:
    """Return once `GET {url}/health` answers 200, asking every 0.2 s.

    Raises:
        RuntimeError: `process` (the server) exited first, or `timeout_s` seconds passed; the message ends with
            the server's output: the end of its piped stderr, or of the file `log`.
    """
    def output() -> str:
        if log is not None:
            return log.read_text(errors="replace")[-2000:]
        if process is not None and process.stderr is not None and process.poll() is not None:
            return process.stderr.read().decode(errors="replace")[-2000:]
        return ""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with status {process.returncode}: {output()}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready in {timeout_s:g} s: {output()}")


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Stop a server process: SIGTERM, and SIGKILL if it has not exited `timeout_s` seconds later; reaped."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class FakeVolume:
    """A Modal Volume as a container sees it: files in a directory; reload/commit counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reload(self) -> None:
        self.calls.append("reload")

    def commit(self) -> None:
        self.calls.append("commit")


def random_scene(n: int = 2000, seed: int = 0) -> GaussianScene:
    """n Gaussians with plausible SHARP-like values, random rotations, camera 600 x 400 px, f = 500 px."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    positions = np.column_stack([rng.uniform(-4, 4, n), rng.uniform(-3, 3, n), rng.uniform(0.5, 30, n)])
    return GaussianScene(
        positions=positions.astype(np.float32),
        scales=(-np.sort(-np.exp(rng.uniform(np.log(1e-3), np.log(0.3), (n, 3))), axis=1)).astype(np.float32),
        rotations=q.astype(np.float32),
        colors=rng.uniform(0, 1, (n, 3)).astype(np.float32),
        opacities=rng.uniform(0.02, 0.98, n).astype(np.float32),
        f_px=500.0, image_width=600, image_height=400,
    )


def prediction_of(scene: GaussianScene) -> Prediction:
    """`scene` as the tiny preset's prediction of a photo called `scene`."""
    model = ModelInfo(preset="tiny", weights="synthetic", checkpoint=None, device="cpu", dtype="float32",
                      num_gaussians=scene.num_gaussians, internal_resolution=512)
    return Prediction(name="scene", scene=scene, f_px_source="default", model=model)


def make_clip(frames: int = 3, *, shift_px: int = 4, size: tuple[int, int] = (160, 96), fps: int = 10,
              rotation: int = 0, mirror: bool = False, lossless: bool = False, container: str = "mp4") -> bytes:
    """An H.264 clip (yuv420p) made with PyAV from the conformance photo (coffee.png) cropped to `size`
    (width, height), each frame shifted `shift_px` pixels right of the one before (0: one frame repeated);
    `rotation`: the display matrix's counter-clockwise degrees; `mirror`: the matrix also flips left-right
    after the turn (PyAV's `set_display_rotation(hflip=True)`); `lossless`: qp 0, so that equal frames
    decode equal."""
    import io

    import av
    from PIL import Image

    from tests.conformance import DATA_DIR

    photo = np.asarray(Image.open(DATA_DIR / "coffee.png").convert("RGB"))
    width, height = size
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qp": "0"} if lossless else {"crf": "18"}
        if rotation or mirror:
            stream.set_display_rotation(rotation, hflip=mirror)
        for index in range(frames):
            left = 40 + index * shift_px
            crop = np.ascontiguousarray(photo[100:100 + height, left:left + width])
            output.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
        output.mux(stream.encode(None))
    return buffer.getvalue()


def sse_messages(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """The messages of a server-sent event stream as they arrive, each as (event type, data): the type is
    "message" unless an `event:` line names it, the data its `data:` lines joined by newlines; a message without
    data is skipped."""
    data: list[str] = []
    kind = "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line:
            if data:
                yield kind, "\n".join(data)
            data, kind = [], "message"


def events(client: httpx.Client, job_id: str, kinds: tuple[str, ...] = ("job",)) -> list[dict]:
    """Every event of the job's event stream whose type is one of `kinds` (`job`, `file`), until the server
    ends it; with more than one kind, each as ``{"event": kind, "data": ...}``."""
    seen = []
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for kind, data in sse_messages(response):
            if kind in kinds:
                body = orjson.loads(data)
                seen.append(body if len(kinds) == 1 else {"event": kind, "data": body})
    return seen

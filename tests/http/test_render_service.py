"""Rendering where users get it: `POST /render`, the job outputs `preview.png` / `orbit.mp4`, and
`python -m app predict --preview`; real HTTP on loopback with the tiny preset, real PNG and MP4 bytes."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from app.http import create_app
from app.predictor import SharpPredictor
from app.settings import Settings
from tests.helpers import LiveServer

REPO = Path(__file__).resolve().parents[2]


def photo_png(width: int = 120, height: int = 80) -> bytes:
    """Red on top, blue at the bottom."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2] = (220, 30, 30)
    pixels[height // 2:] = (30, 30, 220)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mp4_frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("render")
    settings = Settings(preset="tiny", device="cpu", api_key=None, cors_origins=[], jobs_dir=root / "jobs",
                        cache_dir=root / "cache")
    live = LiveServer.start(create_app(settings, predictor=SharpPredictor.load("tiny", device="cpu")))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client(timeout=300) as c:
        yield c


def render(client: httpx.Client, **fields: str) -> httpx.Response:
    return client.post("/render", files={"file": ("wall.png", photo_png(), "image/png")}, data=fields)


def test_render_png_jpeg_and_depth(client: httpx.Client) -> None:
    response = render(client, size="240")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == 'attachment; filename="wall.png"'
    assert response.headers["x-sharp-weights"] == "synthetic" and "encode" in response.headers["server-timing"]
    color = Image.open(io.BytesIO(response.content))
    assert (color.format, color.size) == ("PNG", (240, 160))
    jpeg = render(client, output="jpeg", size="120")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (120, 80)
    depth = render(client, size="240", depth="true")
    depth_image = np.asarray(Image.open(io.BytesIO(depth.content)))
    assert depth_image.shape[:2] == (160, 240) and depth_image.std() > 0  # a real depth map, not a flat image
    assert not np.array_equal(np.asarray(color.convert("L")), depth_image.reshape(160, 240, -1)[..., 0])


def test_render_mp4_orbit(client: httpx.Client) -> None:
    response = render(client, output="mp4", size="128", frames="12", path="orbit")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "video/mp4"
    frames = mp4_frames(response.content)
    assert (len(frames) == 12 and frames[0].shape == (86, 128, 3)) or frames[0].shape == (84, 128, 3)
    assert any(not np.array_equal(frames[0], frame) for frame in frames[1:])  # the camera moves


@pytest.mark.parametrize(("fields", "code"), [
    ({"size": "8"}, "validation_error"), ({"size": "100000"}, "validation_error"),
    ({"output": "mp4", "frames": "100000"}, "validation_error"), ({"output": "mp4", "frames": "1"}, "validation_error"),
    ({"output": "gif"}, "validation_error"), ({"path": "spiral", "output": "mp4"}, "validation_error"),
    ({"depth": "maybe"}, "validation_error"),
])
def test_render_rejects_bad_fields(client: httpx.Client, fields: dict[str, str], code: str) -> None:
    response = render(client, **fields)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert client.get("/health").status_code == 200


def test_jobs_make_a_preview_and_an_orbit_on_request(client: httpx.Client) -> None:
    response = client.post("/jobs", files={"file": ("wall.png", photo_png(), "image/png")},
                           data={"outputs": "spz,preview,orbit"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert set(job["outputs"]) == {"spz", "preview", "orbit"}
    deadline = time.monotonic() + 300
    # It succeeds with its spz; the renders follow (docs/jobs.md#lazy-outputs): wait until every file is made,
    # since a download waits SHARP_JOB_FILE_WAIT_S at most, and an orbit on a busy CPU can take longer.
    while (job := client.get(f"/jobs/{job['id']}").json())["status"] != "failed" and not (
            job["status"] == "succeeded" and set(job["files"].values()) == {"ready"}):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["results"]["preview"] == f"/jobs/{job['id']}/preview.png"
    preview = client.get(job["results"]["preview"])
    assert preview.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(preview.content)).size == (512, 342)
    orbit = client.get(job["results"]["orbit"])
    assert job["results"]["orbit"].endswith("/orbit.mp4") and len(mp4_frames(orbit.content)) == 60
    default = client.post("/jobs", files={"file": ("wall.png", photo_png(), "image/png")}).json()
    assert "preview" not in default["outputs"] and "orbit" not in default["outputs"]  # renders only when asked


def test_predict_preview_writes_a_png_beside_the_scene(tmp_path: Path) -> None:
    photo = tmp_path / "wall.png"
    photo.write_bytes(photo_png())
    result = subprocess.run([sys.executable, "-m", "app", "predict", "-i", str(photo), "-o", str(tmp_path / "out"),
                             "--preset", "tiny", "--device", "cpu", "--format", "spz", "--preview"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "preview=" in result.stdout and "encode=" in result.stdout
    preview = Image.open(tmp_path / "out" / "wall.png")
    assert preview.format == "PNG" and max(preview.size) == 512
    assert (tmp_path / "out" / "wall.spz").stat().st_size > 0

"""Every entry point runs the same `pipeline.run`: the same photo gives the same bytes from `predict` (CLI),
`POST /predict/<format>` (HTTP), and `POST /jobs` (downloaded by `remote`), under the same file names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.cli import main
from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, digest, tiny_settings

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_http_and_jobs_give_the_same_bytes(tmp_path: Path, serve: Callable[..., LiveServer]) -> None:
    photo = tmp_path / "garden.png"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(photo)
    formats = ("ply_vertex", "spz")

    # `predict` runs in this process, beside the server: it saves a second interpreter's start (processes
    # agree to the bit since `app.devices.prepare_cpu_maths`; tests/predictor/test_determinism.py).
    local = tmp_path / "local"
    for name in formats:
        assert main(["predict", "-i", str(photo), "-o", str(local), "--preset", "tiny", "--device", "cpu",
                     "--format", name]) == 0

    settings = tiny_settings(jobs_dir=tmp_path / "jobs", cache_dir=tmp_path / "cache")
    server = serve(create_app(settings, predictor=SharpPredictor.load("tiny", device="cpu")))
    with server.client() as client:
        over_http = {name: client.post(f"/predict/{name}" if name == "spz" else "/predict/ply",
                                       files={"file": (photo.name, photo.read_bytes(), "image/png")},
                                       data={"vertex_only": "true"} if name == "ply_vertex" else {})
                     for name in formats}
    remote = tmp_path / "remote"
    run = cli("remote", "-i", str(photo), "-o", str(remote), "--url", server.url, "--format", ",".join(formats))
    assert run.returncode == 0, run.stderr

    for name, file_name in zip(formats, ("garden.vertex.ply", "garden.spz"), strict=True):
        response = over_http[name]
        assert response.status_code == 200, response.text
        assert response.headers["content-disposition"] == f'attachment; filename="{file_name}"'
        assert digest((local / file_name).read_bytes()) == digest(response.content), name
        assert digest((remote / file_name).read_bytes()) == digest(response.content), name

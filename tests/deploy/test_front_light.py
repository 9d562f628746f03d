"""The CPU front runs on the light image: `modal_api.fastapi_app` is imported, started and serves with torch
made unimportable (a meta-path finder that refuses it, in a fresh interpreter), and the light image installs
pyproject's dependencies but torch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from deploy import config

ROOT = Path(__file__).resolve().parents[2]

_FRONT_WITHOUT_TORCH = """
import importlib.abc, json, sys
from pathlib import Path


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (the light image has no torch)", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
from fastapi.testclient import TestClient
from modal._utils.async_utils import synchronizer

import modal_api
from tests.modal_wire import ModalWire

root, photo = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
files = {"file": ("p.png", photo, "image/png")}
key = {"Authorization": "Bearer the-key"}
seen = {}
with ModalWire(root / "modal") as wire:
    wire.container("web")
    front = synchronizer._translate_in(modal_api.fastapi_app)._raw_f()
    with TestClient(front) as client:
        def answer(response):
            body = response.json()
            return [response.status_code, body["error"]["code"] if "error" in body else body]

        seen["health"] = answer(client.get("/health"))
        seen["page"] = client.get("/", headers={"Accept": "text/html"}).status_code
        seen["keyless"] = answer(client.post("/predict/ply", files=files))
        seen["twice"] = answer(client.post("/predict/ply", files=files, data={"f_px": ["600", "700"]}, headers=key))
        seen["not_a_format"] = answer(client.post("/render", files=files, data={"output": "gif"}, headers=key))
        seen["admitted"] = answer(client.post("/predict/ply", files=files, headers=key))
        seen["job_missing"] = answer(client.get("/jobs/" + "0" * 32, headers=key))
seen["torch"] = sorted(name for name in sys.modules if name.split(".")[0] == "torch")
print(json.dumps(seen))
"""


def test_the_front_serves_and_checks_without_torch(tmp_path: Path) -> None:
    """`/health`, the page, a key-less (401) and malformed (422) prediction are answered by the front with
    torch unimportable; a valid one is admitted and forwarded (no GPU class is deployed here, so the call
    fails: 503 `gpu_unavailable`, not a 4xx of the local checks); no torch module was ever loaded."""
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    photo = tmp_path / "p.png"
    photo.write_bytes(buffer.getvalue())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARP_", "MODAL_"))}
    env.update({"PYTHONPATH": str(ROOT), "SHARP_PRESET": "tiny", "SHARP_API_KEY": "the-key",
                "SHARP_DEVICE": "cuda", "SHARP_CACHE_DIR": str(tmp_path / "cache")})
    result = subprocess.run([sys.executable, "-c", _FRONT_WITHOUT_TORCH, str(tmp_path), str(photo)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    status, health = seen["health"]
    assert status == 200 and health["backend"] == "waiting" and health["preset"] == "tiny", health
    assert seen["page"] == 200
    assert seen["keyless"] == [401, "unauthorized"]
    assert seen["twice"] == [422, "validation_error"]
    assert seen["not_a_format"] == [422, "validation_error"]
    assert seen["admitted"] == [503, "gpu_unavailable"]
    assert seen["job_missing"] == [404, "job_not_found"]
    assert seen["torch"] == []


def test_the_light_image_installs_all_but_torch() -> None:
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    light = config.light_requirements()
    torch = next(spec for spec in dependencies if spec.startswith("torch"))
    assert [spec for spec in dependencies if spec not in light] == [torch]
    assert not any(spec.startswith("torch") for spec in light)
    assert {"fastapi", "python-multipart", "pydantic", "numpy", "pillow"} <= {
        spec.split(">")[0].split("=")[0].split("[")[0] for spec in light}

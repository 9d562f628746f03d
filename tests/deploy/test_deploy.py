"""The Modal deployment as Modal will run it, offline: the deploy's and the container's imports agree, the
deploy check passes, the CPU front forwards predictions to the GPU class's app, and no signal handler."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.formats.ply import read_ply
from deploy import config
from deploy.front import FORWARD_CHUNK_BYTES, Front, FrontService, answer
from tests.helpers import assert_error, tiny_settings

ROOT = Path(__file__).resolve().parents[2]
TINY_GAUSSIANS = 131_072

_DESCRIBE = """
import json, modal_api, modal_app
from deploy.check import describe
print(json.dumps({"modal_api": describe(modal_api), "modal_app": describe(modal_app)}))
"""
_IN_CONTAINER = """
import modal
from modal._runtime.task_lifecycle_manager import _TaskLifecycleManager
from modal_proto import api_pb2

_TaskLifecycleManager("ta-test", "fu-test", api_pb2.Function(), None, None)  # what Modal's container entrypoint makes
assert not modal.is_local()
import app, deploy
assert {app.__file__, deploy.__file__} <= {str(p) for p in __import__("pathlib").Path.cwd().rglob("__init__.py")}
""" + _DESCRIBE


def image_tree(destination: Path) -> Path:
    """What the image ships of this checkout, as a container's /root holds it: `app/` and `deploy/` as
    `add_local_python_source` adds them (`deploy.images._not_shipped` leaves the rest out) and the deploy
    files Modal mounts. No pyproject.toml, no web/, no tests."""
    from deploy.images import _not_shipped

    for package in ("app", "deploy"):
        for path in (ROOT / package).rglob("*"):
            relative = path.relative_to(ROOT)
            if path.is_file() and "__pycache__" not in relative.parts and not _not_shipped(relative):
                (destination / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination / relative)
    for name in ("modal_api.py", "modal_app.py"):
        shutil.copy2(ROOT / name, destination / name)
    return destination


def describe_in_subprocess(environ: dict[str, str], container: Path | None = None) -> dict[str, Any]:
    """Both apps' definitions (`deploy.check.describe`) imported in a fresh interpreter with only `environ`'s
    SHARP_* and MODAL_* variables: in this checkout as `modal deploy` does, or (`container`: an `image_tree`)
    as a container does, from the image's files only and with `modal.is_local()` false through the runtime's
    own switch (the task's lifecycle manager exists before the deploy file is imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARP_", "MODAL_")) and k != "PYTHONPATH"}
    env.update(environ)
    if container is not None:
        env["PYTHONPATH"] = str(container)
    result = subprocess.run([sys.executable, "-c", _IN_CONTAINER if container else _DESCRIBE],
                            cwd=container or ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


DEPLOY_ENV = {"SHARP_GPU": "H100", "SHARP_API_KEY_SECRET": "sharp-api-key", "SHARP_MEMORY_SNAPSHOT": "0",
              "SHARP_SCALEDOWN_WINDOW": "60", "SHARP_PROXY_AUTH": "1", "SHARP_MAX_CONTAINERS": "3",
              "SHARP_DTYPE": "bfloat16", "SHARP_API_KEY": "never-in-the-image"}


@pytest.mark.parametrize("deploy_env", [{}, DEPLOY_ENV], ids=["defaults", "switches"])
def test_container_import_defines_what_the_deploy_did(deploy_env: dict[str, str], tmp_path: Path) -> None:
    """A container sees the image's environment (not the laptop's) plus Modal's markers, and the Secret's
    variables, and imports the image's files with `modal.is_local()` false; Modal refuses to start a container
    whose classes have other dependencies than deployed."""
    deployed = describe_in_subprocess(deploy_env)
    container_env = {**config.container_env(deploy_env), "MODAL_IS_REMOTE": "1", "MODAL_TASK_ID": "ta-test",
                     **({"SHARP_API_KEY": "from-the-secret"} if "SHARP_API_KEY_SECRET" in deploy_env else {})}
    in_container = describe_in_subprocess(container_env, container=image_tree(tmp_path / "root"))
    assert in_container == deployed
    classes = {**deployed["modal_api"], **deployed["modal_app"]}
    assert set(deployed["modal_api"]) == {"SharpAPI.*", "SharpJobWorker.*", "SharpFrameWorker.*", "SharpJobRunner.*",
                                          "fastapi_app"}
    assert set(deployed["modal_app"]) == {"SharpModel.*", "predict_and_save_ply", "predict", "seed_weights"}
    if deploy_env:
        for tag in ("SharpAPI.*", "SharpJobWorker.*", "SharpFrameWorker.*", "SharpJobRunner.*", "SharpModel.*",
                    "fastapi_app"):
            assert "Secret:modal.Secret.from_name('sharp-api-key')" in classes[tag]["dependencies"], tag
        assert classes["SharpModel.*"]["info"]["gpus"] == [["H100", 1]]
        assert classes["SharpModel.*"]["hooks"]["ENTER_PRE_SNAPSHOT"] == []


def test_one_lifecycle_and_light_forwarders() -> None:
    import modal_api
    import modal_app
    from deploy.check import describe

    described = {**describe(modal_api), **describe(modal_app)}
    hooks = {"ENTER_PRE_SNAPSHOT": ["load_weights"], "ENTER_POST_SNAPSHOT": ["move_to_gpu"], "EXIT": ["shutdown"]}
    for tag in ("SharpAPI.*", "SharpJobWorker.*", "SharpFrameWorker.*", "SharpModel.*"):
        assert described[tag]["hooks"] == hooks and described[tag]["image"] == "gpu_image"
        assert described[tag]["info"]["gpus"] == [["A100", 1]]
    for tag in ("predict_and_save_ply", "predict"):  # no torch, bounded memory and inputs
        spec = described[tag]
        assert spec["image"] == "light_image" and spec["info"]["gpus"] == []
        assert spec["info"]["memory_mib"] is not None and spec["info"]["concurrency_info"]["max_inputs"] <= 16
    runner = described["SharpJobRunner.*"]  # photo jobs' encodes and previews: a CPU container, torch for renders
    assert runner["info"]["gpus"] == [] and runner["image"] == "gpu_image"
    assert runner["hooks"]["ENTER_PRE_SNAPSHOT"] == []
    assert {v["name"] for v in runner["info"]["volumes"].values()} == {"sharp-jobs"}
    front = described["fastapi_app"]  # the URL is served by a CPU container
    assert front["info"]["gpus"] == [] and front["info"]["memory_mib"] is not None
    assert front["image"] == "light_image"  # no torch (tests/deploy/test_front_light.py)
    assert front["info"]["web_info"]["unauthenticated"] is True
    assert {v["name"] for v in front["info"]["volumes"].values()} == {"sharp-jobs"}


def test_deploy_check_command() -> None:
    result = subprocess.run([sys.executable, "-m", "deploy", "check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("SHARP_")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy check: ok" in result.stdout and config.torch_requirement() in result.stdout


def test_deploy_check_refuses_settings_a_gpu_container_cannot_honour() -> None:
    """Baked from the deploy shell: a device the GPU containers lack, a laptop's checkpoint path, a queue
    shorter than the inputs one container takes; one `error:` line each, exit 1. A variable outside the
    allow-list is ignored with a warning, and is no error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARP_")}
    env.update({"SHARP_DEVICE": "mps", "SHARP_CHECKPOINT": "/Users/me/Downloads/sharp_2572gikvuh.pt",
                "SHARP_MAX_QUEUE": "2", "SHARP_PORT": "8080"})
    result = subprocess.run([sys.executable, "-m", "deploy", "check"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "deploy check: ok" not in result.stdout, result.stdout
    assert errors[0].startswith("error: SHARP_DEVICE='mps'") and "cuda" in errors[0]
    assert errors[1].startswith("error: SHARP_CHECKPOINT=") and "/cache" in errors[1]
    assert errors[2].startswith("error: SHARP_MAX_QUEUE=2")
    assert "SHARP_PORT" in result.stderr and "SHARP_PORT" not in result.stdout


def test_baked_settings_are_an_allow_list() -> None:
    from app.settings import Settings

    names = {f"SHARP_{name.upper()}" for name in Settings.model_fields}
    assert set(config.settings_env_names()) == names and set(config.BAKED_SETTINGS) <= names
    env = config.container_env(dict.fromkeys(names, "x") | dict.fromkeys(config.DEPLOY_SWITCHES, "y"))
    assert set(env) == {*config.BAKED_SETTINGS, *config.DEPLOY_SWITCHES, "SHARP_CACHE_DIR"}
    assert env["SHARP_CACHE_DIR"] == "/cache" and "SHARP_API_KEY" not in env and "SHARP_JOBS_DIR" not in env
    assert config.ignored_env({"SHARP_HOST": "0.0.0.0", "SHARP_PRESET": "tiny", "SHARP_API_KEY": "k",
                               "SHARP_CACHE_DIR": "/cache", "SHARP_GPU": "H100"}) == ["SHARP_HOST"]
    defaults = config.container_env({})
    assert defaults["SHARP_DEVICE"] == "cuda" and config.baked_problems(defaults) == []
    assert config.baked_problems({**defaults, "SHARP_CHECKPOINT": "/cache/mine.pt", "SHARP_DEVICE": "auto"}) == []
    (problem,) = config.baked_problems({**defaults, "SHARP_CHECKPOINT": "/cache/../etc/x.pt"})
    assert problem.startswith("SHARP_CHECKPOINT=")


def test_torch_pinned_once() -> None:
    spec = config.torch_requirement()
    assert spec.startswith("torch==")
    assert config.TESTED_TORCH_EXTRA in (ROOT / "Dockerfile").read_text()
    assert config.TESTED_TORCH_EXTRA in (ROOT / "Makefile").read_text()
    assert "torch==" not in (ROOT / "Dockerfile").read_text() + (ROOT / "Makefile").read_text()


def test_no_deploy_without_the_page_vendor_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config.require_vendor_files()  # built here (make web)
    monkeypatch.setattr(config, "VENDOR_DIR", tmp_path)
    with pytest.raises(config.VendorFilesMissingError, match="make web"):
        config.require_vendor_files()


def test_core_install_has_no_modal() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("modal") for dep in project["dependencies"])
    assert any(dep.startswith("modal") for dep in project["optional-dependencies"]["modal"])
    assert "optional-dependencies']['tested-torch']" in (ROOT / "Dockerfile").read_text()


def png_bytes() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_front_forwards_predictions_and_serves_the_rest(serve: Any, tmp_path: Path) -> None:
    """The CPU front's split, over real HTTP: `/predict/ply` answered by the GPU side's app (here in-process,
    as `SharpAPI.respond` runs it), `/health` by the front's own app; every request the local app refuses
    (no key, too large, a field twice, a budget over the count, an unknown option) is answered by the front
    with the local app's own error and never forwarded."""
    from app.http import create_app
    from app.service import InferenceService, default_loader

    settings = tiny_settings(cache_dir=tmp_path, max_upload_mb=1, api_key="k")
    gpu_service = InferenceService(settings, default_loader(settings))
    gpu_app = create_app(settings, service=gpu_service)
    forwarded: list[str] = []
    pieces: list[int] = []

    async def forward(request: Any) -> Any:  # as `SharpAPI.respond.remote_gen` hands them over
        forwarded.append(request.target)
        async for piece in answer(gpu_app, request):
            pieces.append(len(piece) if isinstance(piece, bytes) else -1)
            yield piece

    front_service = FrontService(settings)
    server = serve(Front(create_app(settings, service=front_service), forward, front_service))
    photo = {"file": ("p.png", png_bytes(), "image/png")}
    key = {"Authorization": "Bearer k"}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["backend"] == "waiting", health.text
        assert health.json()["preset"] == "tiny" and health.json()["num_gaussians"] == TINY_GAUSSIANS
        assert_error(client.post("/predict/ply", files=photo), 401, "unauthorized")
        big = client.post("/predict/ply", files={"file": ("p.png", b"\0" * (3 * 1024 * 1024), "image/png")},
                          headers=key)
        assert_error(big, 413, "upload_too_large")
        twice = client.post("/predict/ply", files=photo, data={"f_px": ["600", "700"]}, headers=key)
        assert_error(twice, 422, "validation_error")
        assert_error(client.post("/predict", files=photo, data={"max_gaussians": str(TINY_GAUSSIANS + 1)},
                                 headers=key), 422, "validation_error")
        assert_error(client.post("/render", files=photo, data={"output": "gif"}, headers=key), 422,
                     "validation_error")
        assert_error(client.post("/predict/ply", data={"f_px": "600"}, headers=key), 422, "missing_file")
        assert forwarded == []
        assert client.get("/health").json()["backend"] == "waiting"

        response = client.post("/predict/ply?f_px=600", files=photo, headers={**key, "X-Request-ID": "abc-1"})
        assert response.status_code == 200, response.text
        assert read_ply(response.content).num_gaussians == TINY_GAUSSIANS
        assert response.headers["x-request-id"] == "abc-1"  # the GPU side kept the front's id
        assert int(response.headers["content-length"]) == len(response.content)
        assert pieces[0] == -1 and max(pieces) <= FORWARD_CHUNK_BYTES and len(pieces) > 2  # head, then pieces
        assert client.get("/health").json()["backend"] == "answered"
    assert forwarded == ["/predict/ply?f_px=600"]
    gpu_service.close()


def test_the_front_streams_the_gpu_answer_through_modals_generator_client(serve: Any, tmp_path: Path) -> None:
    """`Front` with the deploy's own forward (`Function.remote_gen.aio`): the SDK's generator client code
    (`FunctionMap`, the `data_out` stream, `GeneratorDone`) against the stubbed wire, the GPU side's
    `answer` running as the generator on its own container. Every piece travels inline (under Modal's
    2 MiB item limit); the PLY arrives whole, with its length, and the front never held it."""
    import modal

    from app.http import create_app
    from app.service import InferenceService, default_loader
    from tests.modal_wire import ModalWire

    settings = tiny_settings(cache_dir=tmp_path / "cache")
    gpu_service = InferenceService(settings, default_loader(settings))
    gpu_app = create_app(settings, service=gpu_service)

    async def respond(request: Any) -> Any:  # `SharpAPI.respond`'s body
        async for piece in answer(gpu_app, request):
            yield piece

    with ModalWire(tmp_path / "modal") as wire:
        wire.container("web")
        wire.function("sharp-api", "respond", respond, wire.container("gpu"))
        forward = modal.Function.from_name("sharp-api", "respond").remote_gen.aio
        service = FrontService(settings)
        server = serve(Front(create_app(settings, service=service), forward, service))
        with httpx.Client(base_url=server.url, timeout=120) as client:
            response = client.post("/predict/ply", files={"file": ("p.png", png_bytes(), "image/png")})
            assert response.status_code == 200, response.text
            assert int(response.headers["content-length"]) == len(response.content)
            assert read_ply(response.content).num_gaussians == TINY_GAUSSIANS
            assert client.get("/health").json()["backend"] == "answered"
        server.stop()
        (call,) = wire.calls.values()
        assert len(call.items) == 1 + -(-len(response.content) // FORWARD_CHUNK_BYTES)  # the head, then pieces
        assert ("web", "FunctionCallGetDataOut") in wire.rpcs and ("web", "FunctionMap") in wire.rpcs
    gpu_service.close()


def test_front_answers_503_when_the_gpu_call_fails(serve: Any, tmp_path: Path) -> None:
    """The Modal call fails before any answer (container lost, no GPU): 503 `gpu_unavailable` with
    Retry-After, in the service's error shape, and `/health` still says no GPU container has answered."""
    from app.http import create_app

    settings = tiny_settings(cache_dir=tmp_path)

    async def forward(request: Any) -> Any:
        raise ConnectionError("the GPU container was lost")
        yield  # a generator, as `SharpAPI.respond.remote_gen`

    service = FrontService(settings)
    server = serve(Front(create_app(settings, service=service), forward, service))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        failed = client.post("/predict/spz", files={"file": ("p.png", png_bytes(), "image/png")})
        error = assert_error(failed, 503, "gpu_unavailable")
        assert "ConnectionError" in error["message"] and failed.headers["retry-after"] == "5"
        assert client.get("/health").json()["backend"] == "waiting"


_NO_GPU_ENV = {"SHARP_PRESET": "tiny", "SHARP_API_KEY": "the-key", "SHARP_DEVICE": "cuda"}


def test_the_deployed_front_calls_no_gpu_class(serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`modal_api.fastapi_app`'s own body, started with its lifespan and an API key, against Modal's wire:
    `/health`, `/` and a key-less `/predict/ply` (401) make no Modal call at all (no GPU class is asked for
    its model, none is started), and the model is described from the deploy's settings."""
    from modal._utils.async_utils import synchronizer

    import modal_api
    from tests.modal_wire import ModalWire

    for name in [name for name in os.environ if name.startswith("SHARP_")]:
        monkeypatch.delenv(name)
    for name, value in {**_NO_GPU_ENV, "SHARP_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    with ModalWire(tmp_path / "modal") as wire:
        wire.container("web")
        front = synchronizer._translate_in(modal_api.fastapi_app)._raw_f()
        server = serve(front)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            health = client.get("/health")
            assert health.status_code == 200, health.text
            assert health.json()["backend"] == "waiting" and health.json()["device"] == "cuda"
            assert client.get("/", headers={"Accept": "application/json"}).json()["model"]["preset"] == "tiny"
            refused = client.post("/predict/ply", files={"file": ("p.png", png_bytes(), "image/png")})
            assert_error(refused, 401, "unauthorized")
        server.stop()
        assert wire.rpcs == []


def test_modal_containers_install_no_signal_handler(tmp_path: Path) -> None:
    """On Modal, SIGTERM must reach Modal's handler (which runs `@modal.exit` and the final commit)."""
    from app.http import create_app

    app = create_app(tiny_settings(cache_dir=tmp_path))

    async def lifespan() -> tuple[Any, Any]:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        async with app.router.lifespan_context(app):
            return before, (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))

    before, during = asyncio.run(lifespan())
    assert during == before

"""The Modal deployment, checked offline: no Modal token, no network, no GPU.

What is checked: the definitions Modal would send at deploy time (app, class, method and function names,
GPU, volume, timeouts, scale-down window, concurrency, memory snapshots, web label and auth), read from
the Modal objects themselves; the deploy-time switches (`SHARP_GPU` & co.) in a fresh interpreter; and
the container code itself, run locally with the tiny preset on the CPU: the `@modal.enter` steps, the
FastAPI app `SharpAPI.fastapi_app` returns, driven over real HTTP, and the `SharpModel` methods.

What is not: building the image, the volume, memory snapshots and GPUs - only a real deploy shows those.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import http.server
import io
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from modal._partial_function import _find_callables_for_obj
from modal._partial_function import _PartialFunctionFlags as Flags
from modal._utils.async_utils import synchronizer
from PIL import Image

from app.formats import decode_spz
from app.formats.ply import read_ply
from app.sequence import run_sequence
from app.video import Sampling, VideoLimits, VideoSelectionError
from deploy import container
from tests.helpers import FakeVolume, digest, make_clip

ROOT = Path(__file__).resolve().parents[2]
TINY_GAUSSIANS = 131_072

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*executing locally and will not have access to the mounted Volume:UserWarning"
)


# ------------------------------------------------------------------------------------------- helpers


def service_function(cls: Any) -> Any:
    """The (internal) `_Function` that serves every method of a Modal class."""
    return synchronizer._translate_in(cls)._get_class_service_function()


def definition(function: Any) -> dict[str, Any]:
    """What modal 1.6 builds its FunctionCreate request from at deploy time.

    `Function.info()` (public, offline for locally defined functions) has the GPU, timeout, volumes,
    secrets, concurrency and web settings, but neither the autoscaler settings nor the snapshot flag:
    those only exist as variables captured by the function's loader, which is where we read them.
    """
    impl = synchronizer._translate_in(function)
    code, cells = impl._load.__code__, impl._load.__closure__
    captured = {name: cell.cell_contents for name, cell in zip(code.co_freevars, cells, strict=True)}
    return {
        "info": synchronizer._translate_out(impl).info(),
        "tag": impl._tag,
        "scaledown_window": captured["autoscaler_settings"].scaledown_window,
        "enable_memory_snapshot": captured["enable_memory_snapshot"],
        "methods": captured["method_definitions"],
        "webhook_config": captured["webhook_config"],
    }


def image_layers(image: Any, builder_version: str = "2025.06") -> list[Any]:
    """The layers of a (local, unbuilt) Modal image, base first: each layer's Dockerfile commands as
    modal 1.6 would send them to the image builder, or the Mount of a mount layer."""
    impl = synchronizer._translate_in(image)
    code, cells = impl._load.__code__, impl._load.__closure__
    captured = {name: cell.cell_contents for name, cell in zip(code.co_freevars, cells, strict=True)}
    if "mount" in captured:  # add_local_python_source(copy=False): files added at container start
        return [*image_layers(synchronizer._translate_out(captured["base_image"]), builder_version),
                captured["mount"]]
    layers: list[Any] = []
    for base in captured["base_images"].values():
        layers += image_layers(synchronizer._translate_out(base), builder_version)
    if captured["dockerfile_function"] is not None:
        layers.append(captured["dockerfile_function"](builder_version).commands)
    return layers


def png_bytes(width: int = 96, height: int = 64) -> bytes:
    rgb = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def tiny_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Container settings for a local run: tiny preset, CPU, a throwaway cache dir."""
    for name in list(os.environ):
        if name.startswith("SHARP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SHARP_PRESET", "tiny")
    monkeypatch.setenv("SHARP_DEVICE", "cpu")
    monkeypatch.setenv("SHARP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


# ----------------------------------------------------------------------------------- the definitions


def test_entrypoint_cli_options() -> None:
    """`modal run modal_app.py --image-path ... --output-path ... --f-px ...` parses (no token needed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    result = subprocess.run(
        [sys.executable, "-m", "modal", "run", "modal_app.py", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--image-path", "--output-path", "--f-px"):
        assert option in result.stdout


# ------------------------------------------------------------------------------ weights on the volume


@pytest.fixture
def checkpoint_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A small file served over HTTP on loopback, standing in for the checkpoint URL."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    import torch

    torch.save({"weight": torch.zeros(2)}, upstream / "sharp_test.pt")  # downloads must be complete zip archives
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(upstream))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/sharp_test.pt"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_checkpoint_download_is_committed_once(tmp_path: Path, checkpoint_url: str) -> None:
    from app.settings import Settings

    source = tmp_path / "upstream" / "sharp_test.pt"
    cache = tmp_path / "cache"
    settings = Settings(preset="sharp", checkpoint_url=checkpoint_url, cache_dir=cache)

    volume = FakeVolume()
    path = container.prepare_checkpoint(settings, volume, in_container=True)
    assert path == cache / "sharp_test.pt" and path.read_bytes() == source.read_bytes()
    assert volume.calls == ["reload", "commit"]  # not there: look for another container's commit, then ours

    volume.calls.clear()
    assert container.prepare_checkpoint(settings, volume, in_container=True) == path
    assert volume.calls == []  # cached: no reload, no commit

    tiny = Settings(preset="tiny", cache_dir=cache)
    assert container.prepare_checkpoint(tiny, volume, in_container=True) is None
    explicit = Settings(preset="sharp", checkpoint=cache / "missing.pt", cache_dir=cache)
    assert container.prepare_checkpoint(explicit, volume, in_container=True) == cache / "missing.pt"
    assert volume.calls == ["reload"]

    volume.calls.clear()
    (cache / "sharp_test.pt").unlink()
    container.prepare_checkpoint(settings, volume, in_container=False)  # a local run never touches the volume
    assert volume.calls == []


def test_weights_leave_the_checkpoint_file_before_the_snapshot(tmp_path: Path) -> None:
    """`load_on_cpu` copies the mmap'ed weights into ordinary memory: the snapshot holds them, and no mapping
    of the volume's file is left in it; `move_to_device` then wraps the same network for the target."""
    import torch

    from app.model import build_network
    from app.model.network import fill_synthetic_weights
    from app.settings import Settings

    network = build_network("tiny")
    fill_synthetic_weights(network)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(network.state_dict(), checkpoint)
    del network

    def mappings() -> int:
        with open("/proc/self/maps") as maps:
            return sum(str(checkpoint) in line for line in maps)

    settings = Settings(preset="tiny", checkpoint=checkpoint, device="cpu", cache_dir=tmp_path / "cache")
    predictor = container.load_on_cpu(settings, FakeVolume())
    gc.collect()
    assert predictor.info.weights == "file" and predictor.info.checkpoint == str(checkpoint)
    if Path("/proc/self/maps").exists():
        assert mappings() == 0

    moved = container.move_to_device(predictor, settings)
    assert moved.network is predictor.network and moved.info == predictor.info


# ------------------------------------------------------------------------- the container code, locally


class LocalContainer:
    """A Modal class's user code run the way its container runs it: `@modal.enter(snap=True)` hooks (before
    the memory snapshot), then `@modal.enter(snap=False)` hooks, then methods, then `@modal.exit` hooks.

    (`.local()` on an *async* method does not run the enter hooks in modal 1.6, hence this helper.)
    """

    def __init__(self, cls: Any) -> None:
        self.instance = synchronizer._translate_in(cls)._get_user_cls()()
        for flag in (Flags.ENTER_PRE_SNAPSHOT, Flags.ENTER_POST_SNAPSHOT):
            for hook in _find_callables_for_obj(self.instance, flag).values():
                hook()
        self.methods = _find_callables_for_obj(self.instance, Flags.interface_flags())

    def exit(self) -> None:
        for hook in _find_callables_for_obj(self.instance, Flags.EXIT).values():
            hook()


def test_function_api_methods_run_locally(tiny_env: Path) -> None:
    import modal_app

    container = LocalContainer(modal_app.SharpModel)
    assert sorted(container.methods) == ["predict", "predict_and_save_ply", "predict_clip"]
    assert container.instance.predictor.info.device == "cpu"
    image, clip = png_bytes(), make_clip(3)

    async def calls() -> tuple[bytes, dict[str, Any], bytes]:
        ply = await container.methods["predict_and_save_ply"](image, 600.0)
        body = await container.methods["predict"](image, None, 1000, "base64")
        scenes = await container.methods["predict_clip"](clip, ["spz"], None, None, 0.0, None, 2, "scale", 0.5)
        with pytest.raises(VideoSelectionError, match="fps"):
            await container.methods["predict_clip"](clip, ["spz"], None, -1.0)
        return ply, body, scenes

    try:
        ply, body, scenes = asyncio.run(calls())
        local: dict[str, bytes] = {}
        run_sequence(container.instance.predictor, clip, {"spz": {}}, sink=local.__setitem__,
                     limits=VideoLimits.from_settings(container.instance.settings), sampling=Sampling(max_frames=2),
                     align="scale", max_gaussians=0.5)
    finally:
        container.exit()
    with zipfile.ZipFile(io.BytesIO(scenes)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert sorted(files) == sorted(local) == ["frames/000000.spz", "frames/000001.spz", "manifest.json",
                                              "preview.mp4"]
    assert all(digest(files[name]) == digest(local[name]) for name in files if name != "manifest.json")
    assert decode_spz(files["frames/000001.spz"]).num_gaussians == TINY_GAUSSIANS // 2
    assert isinstance(ply, bytes)
    assert read_ply(ply).num_gaussians == TINY_GAUSSIANS

    assert isinstance(body, dict)
    metadata = body["metadata"]
    assert metadata["total_gaussians"] == TINY_GAUSSIANS and metadata["num_gaussians"] == 1000
    assert metadata["encoding"] == "base64" and metadata["model"]["preset"] == "tiny"
    assert body["positions"]["shape"] == [1000, 3]
    assert {"decode", "forward"} <= set(metadata["timings_ms"])


# -------------------------------------------------------------------------------- no removed Modal API


def _word(*parts: str) -> str:
    """A regex for the identifier spelled by `parts` (split so that this file never contains it whole)."""
    return r"\b" + re.escape("".join(parts)) + r"\b"


_LOOKUP = "lookup"
REMOVED_MODAL_APIS: dict[str, tuple[str, str]] = {
    # name: (pattern, a line of old code it must catch); names are split so this file never spells them
    "modal.gpu objects": (r"\bmodal\.gpu\.[A-Z]", "gpu=modal." + "gpu.A100()"),
    "container_idle" + "_timeout": (_word("container_idle", "_timeout"), "container_idle" + "_timeout=300"),
    "allow_concurrent" + "_inputs": (_word("allow_concurrent", "_inputs"), "allow_concurrent" + "_inputs=10"),
    "Function/Cls ." + _LOOKUP: (
        r"\b(?:Function|Cls)\." + _LOOKUP + r"\b", "modal.Function." + _LOOKUP + "('a', 'f')"
    ),
    "keep" + "_warm": (_word("keep", "_warm"), "keep" + "_warm=1"),
    "concurrency" + "_limit": (_word("concurrency", "_limit"), "concurrency" + "_limit=2"),
    "web" + "_endpoint": (_word("web", "_endpoint"), "@modal." + "web" + "_endpoint(method='POST')"),
}


def test_no_removed_modal_apis_in_the_repo() -> None:
    for name, (pattern, old_code) in REMOVED_MODAL_APIS.items():
        assert re.search(pattern, old_code), f"the pattern for {name} misses {old_code!r}"
    assert not re.search(REMOVED_MODAL_APIS["web" + "_endpoint"][0], "@modal.fastapi_endpoint()")

    skipped = {".venv", "venv", ".git", "node_modules", "build", "dist", "__pycache__", ".ruff_cache"}
    offenders = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [name for name in subdirs if name not in skipped]
        for path in (Path(directory, name) for name in files if name.endswith(".py")):
            text = path.read_text(encoding="utf-8", errors="replace")
            for name, (pattern, _) in REMOVED_MODAL_APIS.items():
                for match in re.finditer(pattern, text):
                    line = text.count("\n", 0, match.start()) + 1
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, "removed Modal APIs in use:\n" + "\n".join(offenders)

"""Shared fixtures: the conformance data (and the kit CI keeps beside the checkout), a real HTTP server on
loopback, the tiny predictor and a jobs server on it (helpers that tests import live in `tests/helpers.py` and
`tests/conformance.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from starlette.types import ASGIApp

from app.gaussians import GaussianScene
from tests.conformance import DATA_DIR, KIT_DIR
from tests.helpers import LiveServer, settings_for

if TYPE_CHECKING:
    from app.predictor import SharpPredictor


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The conformance data kept in the repository (`tests/data/conformance`, see `tests/conformance.py`)."""
    return DATA_DIR


@pytest.fixture(scope="session")
def conformance_kit() -> Path:
    """The original conformance kit beside the checkout (CI has it, a plain clone does not)."""
    if not KIT_DIR.is_dir():
        pytest.skip(f"conformance kit not found at {KIT_DIR}")
    return KIT_DIR


@pytest.fixture
def serve() -> Iterator[Callable[[ASGIApp], LiveServer]]:
    """`serve(app) -> LiveServer`; every server started is stopped when the test ends."""
    servers: list[LiveServer] = []

    def start(app: ASGIApp) -> LiveServer:
        servers.append(LiveServer.start(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def predictor() -> SharpPredictor:
    """The tiny preset's predictor on the CPU, one per test module (a module may define its own)."""
    from app.predictor import SharpPredictor

    return SharpPredictor.load("tiny", device="cpu")


@pytest.fixture
def start(serve: Callable[[ASGIApp], LiveServer], predictor: SharpPredictor, tmp_path: Path
          ) -> Callable[..., LiveServer]:
    """`start(**settings) -> LiveServer`: the app on `predictor` with `settings_for(tmp_path / "jobs")` and
    `settings` on top (the same jobs folder for every server of a test, so that a second one is a restart)."""
    from app.http import create_app

    def make(**overrides: Any) -> LiveServer:
        return serve(create_app(settings_for(tmp_path / "jobs", **overrides), predictor=predictor))

    return make


@pytest.fixture(scope="session")
def tiny_photo_scene() -> GaussianScene:
    """The tiny preset's real network output (131,072 Gaussians) on the conformance photo, f_px 500."""
    from app.imaging import load_image
    from app.predictor import SharpPredictor

    photo = load_image(DATA_DIR / "coffee.png")
    return SharpPredictor.load("tiny", device="cpu", progress=False).predict(photo, f_px=500.0).scene

"""Shared fixtures: the conformance kit CI keeps beside the checkout, and a real HTTP server on loopback
(helpers that tests import live in `tests/helpers.py`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from starlette.types import ASGIApp

from app.gaussians import GaussianScene
from tests.helpers import LiveServer, photo_pixels

CONFORMANCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "conformance"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    if not CONFORMANCE_DIR.is_dir():
        pytest.skip(f"conformance kit not found at {CONFORMANCE_DIR}")
    return CONFORMANCE_DIR


@pytest.fixture(scope="session")
def fill_state_dict(conformance_dir: Path) -> Callable[..., dict[str, torch.Tensor]]:
    """The kit's deterministic weight filler, `fill_state_dict(state_dict, seed)`."""
    sys.path.insert(0, str(conformance_dir))
    from fill_weights import fill_state_dict

    return fill_state_dict


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


@pytest.fixture(scope="session")
def tiny_photo_scene(tmp_path_factory: pytest.TempPathFactory) -> GaussianScene:
    """The tiny preset's real network output (131,072 Gaussians) on a PNG of `photo_pixels()`, f_px 220."""
    from PIL import Image

    from app.imaging import load_image
    from app.predictor import SharpPredictor

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(photo_pixels()).save(path)
    return SharpPredictor.load("tiny", device="cpu", progress=False).predict(load_image(path), f_px=220.0).scene

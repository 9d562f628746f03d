"""Shared fixtures: the conformance kit CI keeps beside the checkout, and a real HTTP server on loopback."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from starlette.types import ASGIApp

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


class FakeVolume:
    """A Modal Volume as a container sees it: files in a directory; reload/commit counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reload(self) -> None:
        self.calls.append("reload")

    def commit(self) -> None:
        self.calls.append("commit")

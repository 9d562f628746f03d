"""`python -m app remote`: it needs no torch (its help runs in an interpreter where `import torch` fails), and it
follows redirects."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.types import Receive, Scope, Send

from app.formats import read_ply
from app.http import create_app
from app.predictor import SharpPredictor
from tests.conformance import PHOTO
from tests.helpers import LiveServer, tiny_settings

REPO = Path(__file__).resolve().parents[2]

NO_TORCH = "import sys; sys.modules['torch'] = None; "
"""Poisons `import torch` (ImportError) before anything of the app is imported."""


def run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_remote_help_runs_without_torch() -> None:
    run = run_without_torch("import runpy; sys.argv = ['python -m app', 'remote', '--help']; "
                            "runpy.run_module('app', run_name='__main__')")
    assert run.returncode == 0, run.stderr
    assert "--url" in run.stdout and "--format" in run.stdout and "--f-px" in run.stdout


def test_the_poison_bites() -> None:
    """The same interpreter set-up does stop a module that needs torch (so the test above means something)."""
    run = run_without_torch("import app.predictor")
    assert run.returncode != 0 and "torch" in run.stderr


def test_remote_checks_its_options_without_torch(tmp_path: Path) -> None:
    run = run_without_torch("from app.cli import main; "
                            f"sys.exit(main(['remote', '-i', {str(tmp_path)!r}, '-o', {str(tmp_path)!r}, "
                            "'--url', 'http://127.0.0.1:9', '--f-px', '0']))")
    assert run.returncode == 2 and "f_px must be a number of pixels in [1, 1e+06]" in run.stderr


def test_remote_follows_redirects(serve: Callable[[Any], LiveServer], tmp_path: Path) -> None:
    """Modal answers a request that runs past 150 s with a 303 to its result: the client follows it (here
    every result download is redirected once, by a wrapper around the real app)."""
    app = create_app(tiny_settings(jobs_dir=tmp_path / "jobs"), predictor=SharpPredictor.load("tiny", device="cpu"))
    redirected: list[str] = []

    async def redirecting(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "/result." in scope["path"] and not scope["query_string"]:
            redirected.append(scope["path"])
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", f"{scope['path']}?moved=1".encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    server = serve(redirecting)
    photo = tmp_path / "photo.png"
    photo.write_bytes(PHOTO.read_bytes())
    run = subprocess.run([sys.executable, "-m", "app", "remote", "-i", str(photo), "-o", str(tmp_path / "out"),
                          "--url", server.url, "--format", "ply"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    assert redirected == [f"/jobs/{redirected[0].split('/')[2]}/result.ply"]
    assert read_ply((tmp_path / "out" / "photo.ply").read_bytes()).num_gaussians == 131_072

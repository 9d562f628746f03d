"""`python -m app remote` needs no torch: its help runs in an interpreter where `import torch` fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

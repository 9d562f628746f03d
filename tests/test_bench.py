"""Every benchmark starts the way docs/performance.md says to run it (`python -m bench.NAME`) and answers --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(path.stem for path in (REPO / "bench").glob("*.py") if path.stem not in ("__init__", "common"))


def test_the_documented_command_names_every_benchmark() -> None:
    performance = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    missing = [name for name in BENCHMARKS if f"python -m bench.{name}" not in performance]
    assert not missing, f"docs/performance.md does not say how to run {missing}"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_answers_help(name: str) -> None:
    run = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("usage:"), run.stderr

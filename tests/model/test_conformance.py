"""Full-size conformance: our pipeline against the reference's outputs on a real photo.

One forward pass of the full network (minutes on a CPU), driven end to end through the CLI
with a real checkpoint file: the kit's deterministic seed-0 weights are saved as a plain
state_dict, loaded back memory-mapped and strictly checked, then `python -m app predict`
writes the PLY that the kit's `compare_ply.py` checks (header byte for byte, rel. L2 <= 1e-4).
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from app.model import build_network

pytestmark = pytest.mark.full

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seed0_checkpoint(tmp_path_factory: pytest.TempPathFactory,
                     fill_state_dict: Callable[..., dict[str, torch.Tensor]]) -> Path:
    network = build_network("sharp", device="meta")
    state_dict = fill_state_dict(network.state_dict(), seed=0)
    path = tmp_path_factory.mktemp("checkpoint") / "sharp_seed0.pt"
    torch.save(state_dict, path)
    del state_dict, network
    gc.collect()
    return path


def test_cli_prediction_matches_reference_ply(seed0_checkpoint: Path, conformance_dir: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "app", "predict", "-i", str(conformance_dir / "coffee.png"), "-o", str(output_dir),
         "-c", str(seed0_checkpoint), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stderr
    assert "preset=sharp weights=file" in run.stdout
    assert "600x400 px, f_px=500.0 (default), 1,179,648 Gaussians" in run.stdout

    ply = output_dir / "coffee.ply"
    assert ply.stat().st_size == 66_061_086
    compare = subprocess.run(
        [sys.executable, str(conformance_dir / "compare_ply.py"), str(ply), str(conformance_dir / "coffee_s0")],
        capture_output=True, text=True, timeout=300,
    )
    print(compare.stdout)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "verdict: PASS" in compare.stdout

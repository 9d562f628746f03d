"""Conformance: our pipeline against the reference's outputs on a real photo, from the data in the repository.

The full-size test is one forward pass of the full network (minutes on a CPU), driven end to end through
the CLI with a real checkpoint file: our seed-0 synthetic weights (`tests/conformance.py`) are saved as a
plain state_dict, loaded back memory-mapped and strictly checked, then `python -m app predict` writes the
PLY that `ply_problems` compares with the reference (header byte for byte, relative L2 <= 1e-4).
Where the original kit is beside the checkout, a fast test checks that our weights are the kit's.
"""

from __future__ import annotations

import gc
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from app.model import build_network
from tests.conformance import DATA_DIR, PHOTO, fill_state_dict, ply_problems, read_manifest, synthetic_tensor

REPO = Path(__file__).resolve().parents[2]
DATA_FILES = ("sharp_state_dict.tsv", "coffee.png", "coffee_s0.json", "coffee_s0.npz")


def kit_module(kit: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"conformance_kit_{name}", kit / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_data_is_the_kits(conformance_kit: Path) -> None:
    for name in DATA_FILES:
        assert (DATA_DIR / name).read_bytes() == (conformance_kit / name).read_bytes(), name


def test_our_synthetic_weights_are_the_kits(conformance_kit: Path) -> None:
    kit = kit_module(conformance_kit, "fill_weights")
    tiny = build_network("tiny", device="meta").state_dict()
    for seed in (0, 3):
        ours, theirs = fill_state_dict(tiny, seed), kit.fill_state_dict(tiny, seed)
        assert list(ours) == list(theirs)
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
        assert kit.fingerprint(ours) == kit.fingerprint(theirs)

    # Full-size entries at their real ranks: the first and last, and the smallest of each kind.
    manifest = read_manifest()
    names = sorted(manifest)
    kinds = {
        "matrix weight": lambda n: n.endswith(".weight") and len(manifest[n]) >= 2,
        "norm weight": lambda n: n.endswith(".weight") and len(manifest[n]) == 1,
        "bias": lambda n: n.endswith(".bias"),
        "gamma": lambda n: n.endswith(".gamma"),
        "other": lambda n: n.rsplit(".", 1)[-1] not in ("weight", "bias", "gamma"),
    }
    picked = {names[0], names[-1]}
    for kind, matches in kinds.items():
        candidates = [name for name in names if matches(name)]
        assert candidates, kind
        picked.add(min(candidates, key=lambda name: torch.Size(manifest[name]).numel()))
    for name in sorted(picked):
        rank, shape = names.index(name), manifest[name]
        assert torch.equal(synthetic_tensor(name, shape, rank, 0), kit.fill_tensor(name, shape, rank, 0)), name


@pytest.fixture(scope="module")
def seed0_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    network = build_network("sharp", device="meta")
    state_dict = fill_state_dict(network.state_dict(), seed=0)
    path = tmp_path_factory.mktemp("checkpoint") / "sharp_seed0.pt"
    torch.save(state_dict, path)
    del state_dict, network
    gc.collect()
    return path


@pytest.mark.full
def test_cli_prediction_matches_reference_ply(seed0_checkpoint: Path, tmp_path: Path) -> None:
    output_dir = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "app", "predict", "-i", str(PHOTO), "-o", str(output_dir),
         "-c", str(seed0_checkpoint), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stderr
    assert "preset=sharp weights=file" in run.stdout
    assert "600x400 px, f_px=500.0 (default), 1,179,648 Gaussians" in run.stdout

    ply = output_dir / "coffee.ply"
    assert ply.stat().st_size == 66_061_086
    assert ply_problems(ply) == []

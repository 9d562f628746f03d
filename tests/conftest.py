"""Shared fixtures: paths to the conformance kit that CI keeps beside the checkout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

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

"""Our checkpoint-compatible implementation of the SHARP network, and its presets.

The presets and configurations load at once (the settings and the CLI's option lists need them, without
torch); the network's modules load with the first name that needs them (`build_network`, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

from app.model.config import SharpConfig, ViTConfig
from app.model.presets import OFFICIAL_CHECKPOINT_URL, PRESETS, Preset, PresetName, get_config, get_preset

_TORCH_EXPORTS = {
    "NetworkGaussians": "app.model.composer",
    "SharpNetwork": "app.model.network",
    "build_network": "app.model.network",
    "fill_synthetic_weights": "app.model.network",
}

__all__ = [
    "OFFICIAL_CHECKPOINT_URL",
    "PRESETS",
    "NetworkGaussians",
    "Preset",
    "PresetName",
    "SharpConfig",
    "SharpNetwork",
    "ViTConfig",
    "build_network",
    "fill_synthetic_weights",
    "get_config",
    "get_preset",
]


def __getattr__(name: str) -> Any:
    if name not in _TORCH_EXPORTS:
        raise AttributeError(f"module 'app.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_TORCH_EXPORTS[name]), name)

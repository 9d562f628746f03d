"""Our checkpoint-compatible implementation of the SHARP network, and its presets."""

from app.model.composer import NetworkGaussians
from app.model.config import SharpConfig, ViTConfig
from app.model.network import SharpNetwork, build_network, fill_synthetic_weights
from app.model.presets import OFFICIAL_CHECKPOINT_URL, PRESETS, Preset, PresetName, get_config, get_preset

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

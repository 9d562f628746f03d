"""Our checkpoint-compatible implementation of the SHARP network."""

from app.model.composer import NetworkGaussians
from app.model.config import PRESETS, SharpConfig, ViTConfig, get_config
from app.model.network import SharpNetwork, build_network

__all__ = ["PRESETS", "NetworkGaussians", "SharpConfig", "SharpNetwork", "ViTConfig", "build_network", "get_config"]

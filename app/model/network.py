"""The SHARP predictor: one image in, L x (S/2) x (S/2) Gaussians out, in one forward pass.

Module names mirror the official checkpoint's top-level prefixes:
`monodepth_model`, `depth_alignment`, `feature_model`, `prediction_head`.
"""

from __future__ import annotations

import torch
from torch import nn

from app.model.alignment import DepthAlignment
from app.model.composer import NetworkGaussians, compose_gaussians
from app.model.config import SharpConfig
from app.model.gaussian_decoder import DeltaHead, GaussianFeatureDecoder
from app.model.initializer import initialize_gaussians
from app.model.monodepth import MonodepthModel
from app.model.presets import get_config

MIN_DISPARITY = 1e-4
MAX_DISPARITY = 1e4


class SharpNetwork(nn.Module):
    """Image (B, 3, S, S) in [0, 1] + disparity factor (B,) -> Gaussians in normalised camera space.

    `disparity_factor` is f_px / W of the original image: it turns the network's disparity
    into metric depth, and so sets the scene's absolute scale.
    """

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        self.config = config
        self.monodepth_model = MonodepthModel(config)
        self.depth_alignment = DepthAlignment(config)
        self.feature_model = GaussianFeatureDecoder(config)
        self.prediction_head = DeltaHead(config)

    def forward(self, image: torch.Tensor, disparity_factor: torch.Tensor) -> NetworkGaussians:
        disparity, encoder_features = self.monodepth_model(image)
        # Under autocast the convolutions return reduced precision; the geometry stays float32.
        depth = disparity_factor[:, None, None, None] / disparity.float().clamp(MIN_DISPARITY, MAX_DISPARITY)
        init = initialize_gaussians(image, depth)
        texture, geometry = self.feature_model(init.feature_input, encoder_features)
        delta = self.prediction_head(texture, geometry).float()
        return compose_gaussians(delta, init.base, init.global_scale)


def build_network(preset: str | SharpConfig = "sharp", device: torch.device | str | None = None) -> SharpNetwork:
    """A SharpNetwork in eval mode with uninitialised weights (use `device="meta"` to skip allocation)."""
    config = preset if isinstance(preset, SharpConfig) else get_config(preset)
    with torch.device(device or "cpu"):
        network = SharpNetwork(config)
    return network.eval().requires_grad_(False)


def fill_synthetic_weights(network: nn.Module, seed: int = 0) -> None:
    """Deterministic stand-in weights (no checkpoint): N(0, 1/fan_in) for weights, small biases.

    The outputs are meaningless but finite and well-scaled, which is all tests and benchmarks need.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(network.state_dict().items()):
            noise = torch.randn(tensor.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight" and tensor.ndim >= 2:
                value = noise / max(1, tensor[0].numel()) ** 0.5
            elif leaf == "weight":  # normalisation layers
                value = 1.0 + 0.1 * noise
            elif leaf == "gamma":  # layer scale
                value = 0.1 + 0.01 * noise
            else:
                value = 0.02 * noise
            tensor.copy_(value)

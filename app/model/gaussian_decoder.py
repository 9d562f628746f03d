"""From encoder features and the image to per-pixel Gaussian deltas.

`GaussianFeatureDecoder` (checkpoint prefix `feature_model`) decodes the five depth-encoder
levels a second time, fuses them with a strided convolution of [image, disparity], and runs
two heads; `DeltaHead` (prefix `prediction_head`) maps the head features to 14 attribute
deltas per Gaussian layer.
"""

from __future__ import annotations

import torch
from torch import nn

from app.model.blocks import FeatureFusionBlock, MultiresConvDecoder, NormResidualBlock, conv1x1
from app.model.config import SharpConfig

NUM_GEOMETRY_DELTAS = 3
"""dx, dy, dz (the mean)."""
NUM_TEXTURE_DELTAS = 11
"""3 scale, 4 quaternion (w, x, y, z), 3 colour, 1 opacity."""


class SkipConv(nn.Module):
    """A 2x2 stride-2 convolution of the full-resolution network input: (B, 5, S, S) -> (B, dim, S/2, S/2)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def feature_head(dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Two GroupNorm residual units, then ReLU -> 1x1 conv -> ReLU."""
    return nn.Sequential(
        NormResidualBlock(dim, hidden_dim),
        NormResidualBlock(dim, hidden_dim),
        nn.ReLU(),
        conv1x1(dim, out_dim),
        nn.ReLU(),
    )


class GaussianFeatureDecoder(nn.Module):
    """Encoder features + (B, 5, S, S) feature input -> texture and geometry features (B, F, S/2, S/2)."""

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        dim = config.gaussian_decoder_dim
        self.decoder = MultiresConvDecoder(config.encoder_dims, dim)
        self.image_encoder = SkipConv(3 + config.num_layers, dim)
        self.fusion = FeatureFusionBlock(dim, upsample=False)
        self.texture_head = feature_head(dim, config.gaussian_head_hidden_dim, config.gaussian_feature_dim)
        self.geometry_head = feature_head(dim, config.gaussian_head_hidden_dim, config.gaussian_feature_dim)

    def forward(
        self, feature_input: torch.Tensor, encoder_features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fusion(self.decoder(encoder_features), self.image_encoder(feature_input))
        return self.texture_head(fused), self.geometry_head(fused)


class DeltaHead(nn.Module):
    """1x1 convolutions to the deltas: -> (B, 14, L, H, W), attributes in channel order
    [dx, dy, dz, ds0, ds1, ds2, dqw, dqx, dqy, dqz, dr, dg, db, dopacity]."""

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        self.num_layers = config.num_layers
        self.geometry_prediction_head = conv1x1(config.gaussian_feature_dim, NUM_GEOMETRY_DELTAS * config.num_layers)
        self.texture_prediction_head = conv1x1(config.gaussian_feature_dim, NUM_TEXTURE_DELTAS * config.num_layers)

    def forward(self, texture_features: torch.Tensor, geometry_features: torch.Tensor) -> torch.Tensor:
        # Output channel c is attribute c // L of layer c % L.
        geometry = self.geometry_prediction_head(geometry_features).unflatten(1, (NUM_GEOMETRY_DELTAS, self.num_layers))
        texture = self.texture_prediction_head(texture_features).unflatten(1, (NUM_TEXTURE_DELTAS, self.num_layers))
        return torch.cat([geometry, texture], dim=1)

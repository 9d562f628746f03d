"""The monocular depth network (Depth Pro style): SPN encoder, DPT decoder, disparity head."""

from __future__ import annotations

import torch
from torch import nn

from app.model.blocks import MultiresConvDecoder, conv1x1, conv3x3, upconv2x
from app.model.config import SharpConfig
from app.model.encoder import SlidingPyramidEncoder


class DepthPredictor(nn.Module):
    """(B, 3, S, S) image in [0, 1] -> (B, 2, S, S) non-negative disparity + the encoder features."""

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        decoder_dim = config.monodepth_decoder_dim
        head_dim, feature_dim = config.monodepth_head_dims
        self.encoder = SlidingPyramidEncoder(config)
        self.decoder = MultiresConvDecoder(config.encoder_dims, decoder_dim)
        self.head = nn.Sequential(
            conv3x3(decoder_dim, head_dim),
            upconv2x(head_dim, head_dim, bias=True),
            conv3x3(head_dim, feature_dim),
            nn.ReLU(),
            # Two output channels: one disparity per Gaussian layer.
            conv1x1(feature_dim, config.num_layers),
            nn.ReLU(),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.encoder(image * 2 - 1)
        disparity = self.head(self.decoder(features))
        return disparity, features


class MonodepthModel(nn.Module):
    """Wrapper that gives the depth network its checkpoint prefix `monodepth_predictor`."""

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        self.monodepth_predictor = DepthPredictor(config)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.monodepth_predictor(image)

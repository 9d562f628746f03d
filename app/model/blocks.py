"""Convolutional building blocks shared by the depth network and the Gaussian decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def conv3x3(in_dim: int, out_dim: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, bias=bias)


def conv1x1(in_dim: int, out_dim: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=bias)


def upconv2x(in_dim: int, out_dim: int, bias: bool = False) -> nn.ConvTranspose2d:
    """Learned 2x upsampling: a transposed convolution with kernel 2, stride 2."""
    return nn.ConvTranspose2d(in_dim, out_dim, kernel_size=2, stride=2, bias=bias)


class PreActResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions with bias (DPT's residual unit)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(nn.ReLU(), conv3x3(dim, dim), nn.ReLU(), conv3x3(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


class NormResidualBlock(nn.Module):
    """Bottleneck residual unit with GroupNorm: shortcut(x) + [GN, ReLU, conv3x3, GN, ReLU, conv3x3](x).

    The shortcut is a 1x1 convolution when the width changes, else the identity.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, num_groups: int = 8) -> None:
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.residual = nn.Sequential(
            nn.GroupNorm(num_groups, in_dim),
            nn.ReLU(),
            conv3x3(in_dim, hidden_dim),
            nn.GroupNorm(num_groups, hidden_dim),
            nn.ReLU(),
            conv3x3(hidden_dim, out_dim),
        )
        self.shortcut = conv1x1(in_dim, out_dim) if out_dim != in_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class FeatureFusionBlock(nn.Module):
    """Fuse a running feature map with a skip connection, then optionally upsample 2x.

    out = out_conv(upsample(resnet2(x + resnet1(skip)))), every tensor (B, dim, H, W).
    """

    def __init__(self, dim: int, upsample: bool) -> None:
        super().__init__()
        self.resnet1 = PreActResidualBlock(dim)
        self.resnet2 = PreActResidualBlock(dim)
        self.deconv = upconv2x(dim, dim) if upsample else nn.Identity()
        self.out_conv = conv1x1(dim, dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resnet1(skip)
        return self.out_conv(self.deconv(self.resnet2(x)))


class MultiresConvDecoder(nn.Module):
    """DPT-style decoder: project each encoder level to `dim` channels, fuse coarse to fine.

    Input: a list of feature maps, finest first, each level half the size of the previous one.
    Output: (B, dim, H0, W0) at the finest level's resolution.
    """

    def __init__(self, encoder_dims: Sequence[int], dim: int) -> None:
        super().__init__()
        first = nn.Identity() if encoder_dims[0] == dim else conv1x1(encoder_dims[0], dim, bias=False)
        self.convs = nn.ModuleList([first, *(conv3x3(d, dim, bias=False) for d in encoder_dims[1:])])
        self.fusions = nn.ModuleList(
            FeatureFusionBlock(dim, upsample=level != 0) for level in range(len(encoder_dims))
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        coarsest = len(features) - 1
        # The coarsest fusion has no incoming map: its `resnet1` is in the checkpoint but never used.
        fused = self.fusions[coarsest](self.convs[coarsest](features[coarsest]))
        for level in range(coarsest - 1, -1, -1):
            fused = self.fusions[level](fused, self.convs[level](features[level]))
        return fused

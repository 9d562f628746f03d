"""Base Gaussians from the image and the predicted depth (no parameters).

Every 2x2 pixel block of the S x S network input gets one Gaussian per depth layer, placed
on its pixel ray at the block's nearest depth, sized to cover the block, coloured with the
block's mean colour. The network then predicts deltas on top of these base values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRID_STRIDE = 2
"""Input pixels per Gaussian-grid cell along each axis."""
MAX_NORMALIZED_DEPTH = 100.0


@dataclass
class BaseGaussians:
    """Base values on the Gaussian grid, each (B, C, L, H, W) (C = 1 where broadcast).

    x_ndc, y_ndc: cell centres in normalised device coordinates, (-1, -1) = top-left corner.
    disparity: inverse of the normalised depth.
    scales: base scale divided by the disparity (the composer multiplies it back).
    colors: sRGB in [0, 1].
    """

    x_ndc: torch.Tensor
    y_ndc: torch.Tensor
    disparity: torch.Tensor
    scales: torch.Tensor
    colors: torch.Tensor


@dataclass
class Initialization:
    base: BaseGaussians
    feature_input: torch.Tensor
    """(B, 3 + L, S, S): 2 * [image, normalised disparity] - 1."""
    global_scale: torch.Tensor
    """(B,) metric scale that undoes the depth normalisation."""


def normalize_depth(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each depth map so its minimum is ~1, clamp at 100. Returns (depth, global_scale (B,))."""
    factor = 1.0 / (depth.flatten(1).min(dim=1).values + 1e-6)
    normalized = (depth * factor[:, None, None, None]).clamp(max=MAX_NORMALIZED_DEPTH)
    return normalized, 1.0 / factor


def grid_ndc(size: int, device: torch.device) -> torch.Tensor:
    """Centres of `size / GRID_STRIDE` cells across [-1, 1]: (2j + 1) * stride / size - 1."""
    centres = torch.arange(0.5 * GRID_STRIDE, size, GRID_STRIDE, device=device)
    return 2 * centres / size - 1.0


def initialize_gaussians(image: torch.Tensor, depth: torch.Tensor) -> Initialization:
    """image (B, 3, S, S) in [0, 1]; depth (B, L, S, S) in arbitrary units (disparity_factor / disparity)."""
    batch, num_layers, size, _ = depth.shape
    depth, global_scale = normalize_depth(depth)
    disparity_full = 1.0 / depth
    # The nearest surface in each block: max-pool the disparity.
    disparity = F.max_pool2d(disparity_full, GRID_STRIDE, GRID_STRIDE)[:, None]

    cells = grid_ndc(size, depth.device)
    x_ndc = cells[None, :].expand(len(cells), -1)[None, None, None].repeat(batch, 1, num_layers, 1, 1)
    y_ndc = cells[:, None].expand(-1, len(cells))[None, None, None].repeat(batch, 1, num_layers, 1, 1)
    pixel_footprint = 2 * GRID_STRIDE / float(size)
    scales = torch.ones_like(disparity) / disparity * pixel_footprint
    colors = F.avg_pool2d(image, GRID_STRIDE, GRID_STRIDE)[:, :, None].repeat(1, 1, num_layers, 1, 1)
    feature_input = 2.0 * torch.cat([image, disparity_full], dim=1) - 1.0
    return Initialization(
        base=BaseGaussians(x_ndc=x_ndc, y_ndc=y_ndc, disparity=disparity, scales=scales, colors=colors),
        feature_input=feature_input,
        global_scale=global_scale,
    )

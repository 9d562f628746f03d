"""Compose the final Gaussians from base values and predicted deltas (no parameters).

Activations per attribute (Δ = network delta):
- mean: x' = x + 0.001Δx, y' = y + 0.001Δy, 1/z = softplus(softplus⁻¹(disparity) + 0.001Δz) (+1e-3),
  position = z * (x', y', 1) in normalised camera space;
- scale: base * 10 * σ((10/9) Δs + σ⁻¹(0.1)), so Δ = 0 keeps the base size; base = footprint * z;
- quaternion: (1, 0, 0, 0) + Δq, left unnormalised;
- colour: linear(σ(σ⁻¹(clamp(base, 0.01, 0.99)) + 0.1Δc)), i.e. predicted in sRGB, returned linear;
- opacity: σ(σ⁻¹(0.5) + Δo).
Finally means and scales are multiplied by the per-image global scale (metric units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.model.initializer import BaseGaussians

DELTA_FACTOR_XY = 0.001
DELTA_FACTOR_Z = 0.001
DELTA_FACTOR_COLOR = 0.1
MAX_SCALE_FACTOR = 10.0
BASE_OPACITY = 0.5


@dataclass
class NetworkGaussians:
    """The network's output for a batch, in normalised camera space (before unprojection).

    means (B, N, 3), scales (B, N, 3), quaternions (B, N, 4) (w, x, y, z, unnormalised),
    colors (B, N, 3) linear RGB, opacities (B, N). N = L * H * W, ordered layer, row, column.
    """

    means: torch.Tensor
    scales: torch.Tensor
    quaternions: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1.0 - p))


def inverse_softplus(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x such that softplus(x) = y, written as y + log(1 - e^-y) through the sigmoid for stability."""
    y = y.clamp_min(eps)
    sig = torch.sigmoid(-y)
    return y + torch.log(-(sig / (1.0 - sig)) + 1.0)


def srgb_to_linear(srgb: torch.Tensor) -> torch.Tensor:
    """sRGB -> linear RGB (threshold 0.04045); the unused branch is evaluated on a safe value."""
    is_low = srgb <= 0.04045
    high_input = torch.where(is_low, torch.full_like(srgb, 0.04045), srgb)
    return torch.where(is_low, srgb / 12.92, ((high_input + 0.055) / 1.055) ** 2.4)


def compose_gaussians(delta: torch.Tensor, base: BaseGaussians, global_scale: torch.Tensor) -> NetworkGaussians:
    """delta (B, 14, L, H, W) + base values -> flattened Gaussians (see `NetworkGaussians`)."""
    x = base.x_ndc + DELTA_FACTOR_XY * delta[:, 0:1]
    y = base.y_ndc + DELTA_FACTOR_XY * delta[:, 1:2]
    inverse_z = F.softplus(inverse_softplus(base.disparity) + DELTA_FACTOR_Z * delta[:, 2:3])
    z = 1.0 / (inverse_z + 1e-3)
    means = torch.cat([z * x, z * y, z], dim=1)

    scale_gain = MAX_SCALE_FACTOR / (MAX_SCALE_FACTOR - 1)
    scale_offset = logit(torch.tensor(1.0 / MAX_SCALE_FACTOR)).item()
    base_scales = base.scales * base.disparity * z
    scales = base_scales * (MAX_SCALE_FACTOR * torch.sigmoid(scale_gain * delta[:, 3:6] + scale_offset))

    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], device=delta.device, dtype=delta.dtype)
    quaternions = identity[None, :, None, None, None] + delta[:, 6:10]

    color_logits = logit(base.colors.clamp(0.01, 0.99)) + DELTA_FACTOR_COLOR * delta[:, 10:13]
    colors = srgb_to_linear(torch.sigmoid(color_logits))
    opacities = torch.sigmoid(logit(torch.tensor(BASE_OPACITY)).item() + delta[:, 13])

    def flatten(t: torch.Tensor) -> torch.Tensor:  # (B, C, L, H, W) -> (B, L*H*W, C)
        return t.permute(0, 2, 3, 4, 1).flatten(1, 3)

    scale = global_scale[:, None, None]
    return NetworkGaussians(
        means=scale * flatten(means),
        scales=scale * flatten(scales),
        quaternions=flatten(quaternions),
        colors=flatten(colors),
        opacities=opacities.flatten(1, 3),
    )

"""The learned depth-alignment UNet: present in the checkpoint, never run at inference.

SHARP can align its depth to a ground-truth depth map with a small UNet. Inference from a
single photo passes no ground truth, so the UNet is skipped; we still build its parameters
(about 2.0M) so that the official checkpoint loads with `strict=True`.
"""

from __future__ import annotations

from torch import nn

from app.model.blocks import NormResidualBlock, conv1x1, conv3x3
from app.model.config import SharpConfig


class AlignmentUNetEncoder(nn.Module):
    def __init__(self, base_width: int, steps: int) -> None:
        super().__init__()
        self.conv_in = nn.Sequential(conv3x3(2, base_width), nn.GroupNorm(4, base_width))
        self.convs_down = nn.ModuleList()
        for step in range(steps):
            in_dim, out_dim = base_width * 2**step, 2 * base_width * 2**step
            self.convs_down.append(nn.Sequential(
                nn.AvgPool2d(2) if step > 0 else nn.Identity(),
                NormResidualBlock(in_dim, in_dim, out_dim, num_groups=4),
                NormResidualBlock(out_dim, in_dim, out_dim, num_groups=4),
            ))

    @staticmethod
    def output_dims(base_width: int, steps: int) -> list[int]:
        return [2 * base_width * 2**step for step in range(steps)]


class AlignmentUNetDecoder(nn.Module):
    def __init__(self, base_width: int, steps: int) -> None:
        super().__init__()
        skip_dims = AlignmentUNetEncoder.output_dims(base_width, steps)
        self.convs_up = nn.ModuleList()
        in_dim = skip_dims[-1]
        for step in range(steps):
            out_dim = base_width * 2 ** (steps - 1 - step)
            if step > 0:
                in_dim += skip_dims[steps - 1 - step]
            self.convs_up.append(nn.Sequential(
                nn.Upsample(scale_factor=2) if step > 0 else nn.Identity(),
                NormResidualBlock(in_dim, out_dim // 2, out_dim, num_groups=4),
                NormResidualBlock(out_dim, out_dim // 2, out_dim, num_groups=4),
            ))
            in_dim = out_dim
        self.conv_out = nn.Sequential(
            nn.GroupNorm(4, in_dim + base_width), nn.ReLU(), conv1x1(in_dim + base_width, base_width),
            nn.GroupNorm(4, base_width),
        )


class ScaleMapEstimator(nn.Module):
    """UNet mapping (predicted, target) depth to a per-pixel scale map (weights only)."""

    def __init__(self, base_width: int, steps: int) -> None:
        super().__init__()
        self.encoder = AlignmentUNetEncoder(base_width, steps)
        self.decoder = AlignmentUNetDecoder(base_width, steps)
        self.conv_out = conv1x1(base_width, 1)

    def forward(self, *_: object) -> None:
        raise NotImplementedError("depth alignment needs a ground-truth depth map; SHARP inference skips it")


class DepthAlignment(nn.Module):
    """Checkpoint prefix `depth_alignment`: holds the unused `scale_map_estimator`."""

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        self.scale_map_estimator = ScaleMapEstimator(config.alignment_base_width, config.alignment_steps)

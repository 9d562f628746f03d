"""Sliding Pyramid Network: multi-resolution features from two ViTs (the Depth Pro encoder).

For an S x S input (S = 4 tiles, 1536 px for the official model) the encoder
1. builds a pyramid x0 = S, x1 = S/2, x2 = S/4 (bilinear, align_corners=False, no antialias);
2. cuts x0 into 5x5 overlapping tiles (overlap 1/4) and x1 into 3x3 tiles (overlap 1/2),
   row-major, and encodes the 25 + 9 tiles and x2 in one batch with `patch_encoder`;
3. stitches the tile features back together, cropping the overlaps;
4. encodes x2 a second time with `image_encoder` and fuses both low-resolution views;
5. projects and upsamples five levels with 1x1 convolutions and learned 2x upsampling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from app.model.blocks import conv1x1, upconv2x
from app.model.config import SharpConfig
from app.model.vit import VisionTransformer


def split_tiles(image: torch.Tensor, tile_size: int, overlap: float) -> torch.Tensor:
    """Cut (B, C, S, S) into overlapping square tiles, row-major.

    Returns (T*B, C, tile_size, tile_size), tile-major: all batch items of tile 0, then tile 1, ...
    """
    stride = int(tile_size * (1 - overlap))
    steps = math.ceil((image.shape[-1] - tile_size) / stride) + 1
    origins = [step * stride for step in range(steps)]
    tiles = [image[..., y : y + tile_size, x : x + tile_size] for y in origins for x in origins]
    return torch.cat(tiles, dim=0)


def merge_tiles(tiles: torch.Tensor, batch_size: int, padding: int) -> torch.Tensor:
    """Inverse of `split_tiles` on feature maps: crop `padding` cells from interior tile sides, stitch.

    (T*B, C, g, g) with T = n*n tiles -> (B, C, H, W).
    """
    steps = math.isqrt(tiles.shape[0] // batch_size)
    rows = []
    for row in range(steps):
        top = padding if row > 0 else 0
        bottom = -padding if row < steps - 1 else None
        cells = []
        for col in range(steps):
            left = padding if col > 0 else 0
            right = -padding if col < steps - 1 and padding else None
            index = row * steps + col
            cells.append(tiles[index * batch_size : (index + 1) * batch_size, :, top:bottom, left:right])
        rows.append(torch.cat(cells, dim=-1))
    return torch.cat(rows, dim=-2)


def project_upsample(in_dim: int, out_dim: int, num_upsamples: int, mid_dim: int | None = None) -> nn.Sequential:
    """1x1 projection (no bias) followed by `num_upsamples` learned 2x upsamplings (no bias)."""
    mid_dim = out_dim if mid_dim is None else mid_dim
    layers: list[nn.Module] = [conv1x1(in_dim, mid_dim, bias=False)]
    layers += [upconv2x(mid_dim if i == 0 else out_dim, out_dim) for i in range(num_upsamples)]
    return nn.Sequential(*layers)


class SlidingPyramidEncoder(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> five feature maps, finest first.

    Shapes for the official model (S = 1536): 256@768, 256@384, 512@192, 1024@96, 1024@48.
    """

    def __init__(self, config: SharpConfig) -> None:
        super().__init__()
        self.config = config
        embed_dim = config.vit.embed_dim
        dims = config.encoder_dims
        self.patch_encoder = VisionTransformer(config.vit)
        self.image_encoder = VisionTransformer(config.vit)
        self.upsample_latent0 = project_upsample(embed_dim, dims[0], 3, mid_dim=dims[1])
        self.upsample_latent1 = project_upsample(embed_dim, dims[1], 2)
        self.upsample0 = project_upsample(embed_dim, dims[2], 1)
        self.upsample1 = project_upsample(embed_dim, dims[3], 1)
        self.upsample2 = project_upsample(embed_dim, dims[4], 1)
        self.upsample_lowres = upconv2x(embed_dim, dims[4], bias=True)
        self.fuse_lowres = conv1x1(2 * dims[4], dims[4])

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        batch = image.shape[0]
        tile = self.config.vit.img_size
        padding = self.config.merge_padding
        half = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
        quarter = F.interpolate(image, scale_factor=0.25, mode="bilinear", align_corners=False)

        tiles_full = split_tiles(image, tile, overlap=0.25)
        tiles_half = split_tiles(half, tile, overlap=0.5)
        num_full, num_half = tiles_full.shape[0], tiles_half.shape[0]
        encoded, kept = self.patch_encoder(
            torch.cat([tiles_full, tiles_half, quarter], dim=0), keep_blocks=self.config.latent_block_ids
        )
        latent0, latent1 = (
            merge_tiles(self.patch_encoder.tokens_to_map(kept[block][:num_full]), batch, padding)
            for block in self.config.latent_block_ids
        )
        full_features = merge_tiles(encoded[:num_full], batch, padding)
        half_features = merge_tiles(encoded[num_full : num_full + num_half], batch, 2 * padding)
        quarter_features = encoded[num_full + num_half :]
        lowres_features, _ = self.image_encoder(quarter)

        quarter_features = self.upsample2(quarter_features)
        lowres_features = self.upsample_lowres(lowres_features)
        return [
            self.upsample_latent0(latent0),
            self.upsample_latent1(latent1),
            self.upsample0(full_features),
            self.upsample1(half_features),
            self.fuse_lowres(torch.cat([quarter_features, lowres_features], dim=1)),
        ]

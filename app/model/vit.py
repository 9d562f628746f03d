"""The Vision Transformer backbone (DINOv2-L layout, patch 16, 384x384 input).

Parameter names follow timm's `VisionTransformer`, so the official checkpoint's keys
(`blocks.N.attn.qkv.weight`, `ls1.gamma`, ...) load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from app.model.config import ViTConfig


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, 3, S, S) -> (B, (S/p)^2, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and scale 1/sqrt(head_dim)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class LayerScale(nn.Module):
    """Learned per-channel residual gain."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.ls1(self.attn(self.norm1(tokens)))
        return tokens + self.ls2(self.mlp(self.norm2(tokens)))


class VisionTransformer(nn.Module):
    """ViT encoder returning a feature map and the raw tokens of selected blocks.

    The classifier `head` exists only so that the checkpoint loads strictly; it is never run.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, config.num_classes)

    def forward(
        self, image: torch.Tensor, keep_blocks: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Encode (B, 3, S, S) images, S = img_size.

        Returns:
            features: (B, C, S/p, S/p), the final-norm tokens without the class token.
            kept: block index -> (B, 1 + (S/p)^2, C) raw block output (class token first, before the norm).
        """
        tokens = self.patch_embed(image)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        kept: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in keep_blocks:
                kept[index] = tokens
        return self.tokens_to_map(self.norm(tokens)), kept

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + g*g, C) tokens -> (B, C, g, g) feature map, class token dropped."""
        grid = self.config.grid_size
        return tokens[:, 1:].reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

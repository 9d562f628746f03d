"""Configuration of the SHARP network: the full-size preset and a reduced one for tests.

Both presets (`app.model.presets`) build the very same modules; `tiny` only shrinks widths, depths and the
internal resolution so that a forward pass takes well under a second on a CPU. Its
outputs mean nothing: it exists to exercise the real code paths quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ViTConfig:
    """A plain ViT with class token, learned position embedding and LayerScale (DINOv2-L style)."""

    img_size: int = 384
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 21841
    """Width of the classifier head: stored in the checkpoint, never run."""

    @property
    def grid_size(self) -> int:
        """Tokens per side of one image: img_size / patch_size."""
        return self.img_size // self.patch_size


@dataclass(frozen=True)
class SharpConfig:
    """Hyper-parameters of the whole predictor.

    The internal resolution is four ViT tiles wide (1536 px for the official model); the
    Gaussians live on a grid of half that resolution, two layers deep.
    """

    name: str
    vit: ViTConfig = field(default_factory=ViTConfig)
    latent_block_ids: tuple[int, int] = (5, 11)
    """ViT blocks whose raw (pre-norm) tokens feed the two highest-resolution encoder levels."""
    encoder_dims: tuple[int, int, int, int, int] = (256, 256, 512, 1024, 1024)
    monodepth_decoder_dim: int = 256
    monodepth_head_dims: tuple[int, int] = (128, 32)
    gaussian_decoder_dim: int = 128
    gaussian_head_hidden_dim: int = 64
    gaussian_feature_dim: int = 32
    alignment_base_width: int = 16
    alignment_steps: int = 4
    num_layers: int = 2
    """Gaussian layers per pixel of the Gaussian grid (the model predicts two depth layers)."""

    @property
    def internal_resolution(self) -> int:
        """Side of the square image the network sees, in pixels (1536 for the official model)."""
        return 4 * self.vit.img_size

    @property
    def merge_padding(self) -> int:
        """Tokens cropped from each interior side of a tile when stitching the 5x5 grid (3 of 24)."""
        return self.vit.grid_size // 8

    @property
    def gaussian_grid_size(self) -> int:
        """Side of the Gaussian grid: half the internal resolution."""
        return self.internal_resolution // 2

    @property
    def num_gaussians(self) -> int:
        return self.num_layers * self.gaussian_grid_size**2

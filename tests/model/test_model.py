"""The network's structure against the official manifest, and its parts at reduced size."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from app.model import build_network, get_config
from app.model.composer import inverse_softplus, srgb_to_linear
from app.model.encoder import merge_tiles, split_tiles
from app.model.network import fill_synthetic_weights
from tests.conformance import read_manifest


def test_state_dict_matches_official_manifest(conformance_dir: Path) -> None:
    manifest = read_manifest(conformance_dir / "sharp_state_dict.tsv")
    network = build_network("sharp", device="meta")
    ours = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    assert {name: shape for name, shape in ours.items() if manifest[name] != shape} == {}
    assert len(ours) == 1038
    assert sum(math.prod(shape) for shape in ours.values()) == 702_305_169
    assert all(t.dtype == torch.float32 for t in network.state_dict().values())
    assert list(network.buffers()) == []


def test_tiny_preset_runs_the_same_modules_at_reduced_size() -> None:
    full, tiny = build_network("sharp", device="meta"), build_network("tiny")

    def layout(network: torch.nn.Module) -> list[tuple[str, str]]:  # module tree, ViT depth collapsed
        rows = [(re.sub(r"blocks\.\d+", "blocks.*", name), type(m).__name__) for name, m in network.named_modules()]
        return sorted(set(rows))

    assert layout(full) == layout(tiny)
    fill_synthetic_weights(tiny, seed=0)
    config = tiny.config
    image = torch.rand(1, 3, config.internal_resolution, config.internal_resolution,
                       generator=torch.Generator().manual_seed(1))
    out = tiny(image, torch.tensor([0.9]))
    n = config.num_gaussians
    assert n == 2 * (config.internal_resolution // 2) ** 2
    assert out.means.shape == (1, n, 3) and out.scales.shape == (1, n, 3)
    assert out.quaternions.shape == (1, n, 4) and out.colors.shape == (1, n, 3) and out.opacities.shape == (1, n)
    for tensor in (out.means, out.scales, out.quaternions, out.colors, out.opacities):
        assert torch.isfinite(tensor).all()
    assert (out.means[..., 2] > 0).all() and (out.scales > 0).all()
    assert ((out.opacities > 0) & (out.opacities < 1)).all()
    assert ((out.colors >= 0) & (out.colors <= 1)).all()
    again = tiny(image, torch.tensor([0.9]))
    assert torch.equal(out.means, again.means)


def test_disparity_factor_sets_only_the_metric_scale() -> None:
    tiny = build_network("tiny")
    fill_synthetic_weights(tiny, seed=3)
    size = tiny.config.internal_resolution
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    near, far = tiny(image, torch.tensor([0.5])), tiny(image, torch.tensor([1.5]))
    torch.testing.assert_close(far.means, 3 * near.means, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(far.scales, 3 * near.scales, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(far.colors, near.colors)


@pytest.mark.parametrize(("size", "tile", "overlap"), [(256, 64, 0.25), (128, 64, 0.5), (1536, 384, 0.25)])
def test_split_then_merge_with_half_overlap_crop_is_identity(size: int, tile: int, overlap: float) -> None:
    image = torch.rand(2, 3, size, size)
    tiles = split_tiles(image, tile, overlap)
    stride = int(tile * (1 - overlap))
    steps = math.ceil((size - tile) / stride) + 1
    assert tiles.shape == (2 * steps * steps, 3, tile, tile)
    torch.testing.assert_close(tiles[2 * (steps + 1)], image[0, :, stride : stride + tile, stride : stride + tile],
                               rtol=0, atol=0)
    merged = merge_tiles(tiles, batch_size=2, padding=(tile - stride) // 2)
    assert torch.equal(merged, image)


def test_official_tile_grid_stitches_to_96_and_48_tokens() -> None:
    config = get_config("sharp")
    grid = config.vit.grid_size
    assert (grid, config.merge_padding) == (24, 3)
    assert merge_tiles(torch.zeros(25, 1, grid, grid), 1, config.merge_padding).shape[-2:] == (96, 96)
    assert merge_tiles(torch.zeros(9, 1, grid, grid), 1, 2 * config.merge_padding).shape[-2:] == (48, 48)


def test_activation_helpers() -> None:
    y = torch.tensor([1e-3, 0.5, 1.0, 5.0, 30.0])
    torch.testing.assert_close(torch.nn.functional.softplus(inverse_softplus(y)), y, rtol=1e-5, atol=1e-6)
    srgb = torch.tensor([0.0, 0.04045, 0.5, 1.0])
    expected = torch.tensor([0.0, 0.04045 / 12.92, ((0.5 + 0.055) / 1.055) ** 2.4, 1.0])
    torch.testing.assert_close(srgb_to_linear(srgb), expected)


def test_unknown_preset_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_network("huge")


def test_tiny_full_preset_gives_the_real_number_of_gaussians_from_the_real_input_size() -> None:
    full, tiny_full = get_config("sharp"), get_config("tiny_full")
    assert tiny_full.internal_resolution == full.internal_resolution == 1536
    assert tiny_full.num_gaussians == full.num_gaussians == 1_179_648
    assert tiny_full.encoder_dims == get_config("tiny").encoder_dims  # the tiny widths
    network = build_network("tiny_full")
    fill_synthetic_weights(network, seed=0)
    image = torch.rand(1, 3, 1536, 1536, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        out = network(image, torch.tensor([1.0]))
    assert out.means.shape == (1, 1_179_648, 3) and torch.isfinite(out.means).all()

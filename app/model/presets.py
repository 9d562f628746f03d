"""The model presets: everything that belongs to one named network, in one registry (timm-style).

A preset carries its network configuration and where its official weights come from. The CLI's
`--preset` choices, the settings' `SHARP_PRESET` type and the default checkpoint URL all come from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from app.model.config import SharpConfig, ViTConfig

PresetName = Literal["sharp", "tiny", "tiny_full"]


@dataclass(frozen=True)
class Licence:
    """A licence by name and where its text is published (we cite it; we do not copy it)."""

    name: str
    url: str


WEIGHTS_LICENCE = Licence(
    name="Apple Machine Learning Research Model License Agreement",
    url="https://github.com/apple/ml-sharp/blob/main/LICENSE_MODEL",
)
"""The licence of Apple's SHARP weights (research use only): apple/ml-sharp's LICENSE_MODEL. The code of this
project is under Apache-2.0 (`app.CODE_LICENCE`); the weights are never shipped with it."""


@dataclass(frozen=True)
class Preset:
    """A named network and its weights.

    Attributes:
        name: the registry key (`SHARP_PRESET`, `--preset`).
        config: the network's hyper-parameters.
        description: one line for help texts.
        checkpoint_url: the official checkpoint, or None when the preset runs on synthetic weights.
        checkpoint_sha256: its SHA-256 when published (Apple publishes none for SHARP), else None.
        weights_licence: the official weights' licence, or None for synthetic weights (generated locally).
    """

    name: PresetName
    config: SharpConfig
    description: str
    checkpoint_url: str | None = None
    checkpoint_sha256: str | None = None
    weights_licence: Licence | None = None


SHARP = Preset(
    name="sharp",
    config=SharpConfig(name="sharp"),
    description="the SHARP network (702M parameters, 1536 px input, 1,179,648 Gaussians)",
    checkpoint_url="https://ml-site.cdn-apple.com/models/sharp/sharp_2572gikvuh.pt",
    weights_licence=WEIGHTS_LICENCE,
)

TINY = Preset(
    name="tiny",
    config=SharpConfig(
        name="tiny",
        vit=ViTConfig(img_size=128, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=10),
        latent_block_ids=(0, 1),
        encoder_dims=(8, 8, 16, 32, 32),
        monodepth_decoder_dim=8,
        monodepth_head_dims=(8, 8),
        gaussian_decoder_dim=16,
        gaussian_head_hidden_dim=8,
        gaussian_feature_dim=8,
        alignment_base_width=8,
    ),
    description="the same modules at reduced width and 512 px with synthetic weights (tests, demos; not SHARP)",
)

TINY_FULL = Preset(
    name="tiny_full",
    config=replace(TINY.config, name="tiny_full", vit=replace(TINY.config.vit, img_size=SHARP.config.vit.img_size)),
    description="the tiny widths at the real 1536 px input: 1,179,648 Gaussians in seconds on a CPU (tests of size; "
                "not SHARP)",
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (SHARP, TINY, TINY_FULL)}
assert set(PRESETS) == set(get_args(PresetName)), "PresetName must list exactly the registered presets"

OFFICIAL_CHECKPOINT_URL: str = SHARP.checkpoint_url  # type: ignore[assignment]
"""The official SHARP checkpoint, as named by apple/ml-sharp."""


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def get_config(name: str) -> SharpConfig:
    """The network configuration of the preset called `name`."""
    return get_preset(name).config

"""The bfloat16 mixed-precision policy at reduced size: what runs in which dtype, and its error.

The full-size speed and error are measured by `bench/precision.py` (README "Devices and precision").
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from app.model import SharpNetwork, build_network
from app.model.composer import NetworkGaussians
from app.model.network import fill_synthetic_weights
from app.model.precision import (
    AUTOCAST_BF16,
    MIXED_BF16,
    NETWORK_PARTS,
    POLICIES,
    PrecisionPolicy,
    precision_context,
)

COMPUTE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@pytest.fixture(scope="module")
def network() -> SharpNetwork:
    network = build_network("tiny")
    fill_synthetic_weights(network)
    return network


@pytest.fixture(scope="module")
def inputs(network: SharpNetwork) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth synthetic photo with some texture, and the disparity factor of a 500 px focal length."""
    size = network.config.internal_resolution
    ramp = torch.linspace(0, 1, size)
    generator = torch.Generator().manual_seed(0)
    image = torch.stack([ramp[None, :].expand(size, -1), ramp[:, None].expand(-1, size),
                         0.5 + 0.25 * torch.sin(12 * ramp)[None, :] * torch.cos(9 * ramp)[:, None]])
    image = (image + 0.05 * torch.rand(3, size, size, generator=generator)).clamp(0, 1)[None]
    return image, torch.tensor([500.0 / 600.0])


def forward(network: SharpNetwork, inputs: tuple[torch.Tensor, torch.Tensor], mode: str | PrecisionPolicy
            ) -> NetworkGaussians:
    with torch.inference_mode(), precision_context(network, mode, "cpu"):
        return network(*inputs)


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def expected_dtype(policy: PrecisionPolicy, network: nn.Module, name: str) -> torch.dtype:
    """The dtype a leaf module's output must have under `policy`."""
    forced = policy.float32_modules(network)

    def within(region: str) -> bool:
        return region == "" or name == region or name.startswith(region + ".")

    if any(within(region) for region in forced):
        return torch.float32
    return policy.dtype if any(within(region) for region in policy.reduced) else torch.float32


def record_output_dtypes(network: nn.Module, run: Callable[[], object],
                         monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.dtype]:
    """Output dtype of every conv, linear and norm as computed, before any region boundary casts it.

    The policy wraps the instance's `forward` around the class's, so the record is made in the class's.
    """
    names = {id(module): name for name, module in network.named_modules()}
    dtypes: dict[str, torch.dtype] = {}
    for cls in (*COMPUTE, nn.LayerNorm, nn.GroupNorm):
        def recording(self: nn.Module, *args: object, _forward: Callable[..., torch.Tensor] = cls.forward
                      ) -> torch.Tensor:
            out = _forward(self, *args)
            dtypes[names[id(self)]] = out.dtype
            return out

        monkeypatch.setattr(cls, "forward", recording)
    run()
    monkeypatch.undo()
    return dtypes


def test_float32_modes_leave_the_network_untouched(network: SharpNetwork, inputs: tuple[torch.Tensor, ...]) -> None:
    before = forward(network, inputs, "float32")
    forward(network, inputs, "bfloat16")  # patches forwards for the duration of the call only
    assert [name for name, m in network.named_modules() if "forward" in m.__dict__] == []
    for mode in ("float32", "tf32"):
        after = forward(network, inputs, mode)
        assert torch.equal(after.means, before.means) and torch.equal(after.scales, before.scales)
    with pytest.raises(ValueError, match="unknown precision mode"):
        precision_context(network, "int8", "cpu")


def test_bfloat16_mode_is_the_mixed_policy() -> None:
    assert POLICIES["bfloat16"] is MIXED_BF16
    reduced = set(MIXED_BF16.reduced)
    # The parts that output geometry (disparity, deltas) or read it stay float32.
    for part in ("depth head", "Gaussian feature heads", "delta head"):
        assert reduced.isdisjoint(NETWORK_PARTS[part]), part
    assert "feature_model.image_encoder" not in reduced  # the convolution of [image, disparity]
    # The bulk of the compute is reduced: both ViTs and the depth decoder.
    for part in ("patch ViT", "image ViT", "depth decoder"):
        assert set(NETWORK_PARTS[part]) <= reduced, part


@pytest.mark.parametrize("policy", [MIXED_BF16, AUTOCAST_BF16], ids=lambda p: p.name)
def test_every_layer_runs_in_the_dtype_its_policy_names(
    network: SharpNetwork, inputs: tuple[torch.Tensor, ...], policy: PrecisionPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    dtypes = record_output_dtypes(network, lambda: forward(network, inputs, policy), monkeypatch)
    modules = dict(network.named_modules())
    compute = {name: dtype for name, dtype in dtypes.items() if isinstance(modules[name], COMPUTE)}
    assert len(compute) > 50  # every conv and linear that runs (not the alignment UNet or the ViTs' classifiers)
    assert compute == {name: expected_dtype(policy, network, name) for name in compute}
    if policy is MIXED_BF16:
        assert {name for name, dtype in dtypes.items() if dtype == torch.bfloat16} >= {
            "monodepth_model.monodepth_predictor.encoder.patch_encoder.blocks.0.attn.qkv",
            "monodepth_model.monodepth_predictor.decoder.fusions.0.resnet2.residual.3",
        }
        float32 = {name for name, dtype in dtypes.items() if dtype == torch.float32}
        assert "monodepth_model.monodepth_predictor.head.4" in float32  # the disparity convolution
        assert "monodepth_model.monodepth_predictor.encoder.patch_encoder.patch_embed.proj" in float32
        assert "prediction_head.geometry_prediction_head" in float32
        norms = {name for name in dtypes if isinstance(modules[name], nn.LayerNorm | nn.GroupNorm)}
        assert norms and norms <= float32


def test_network_outputs_stay_float32(network: SharpNetwork, inputs: tuple[torch.Tensor, ...]) -> None:
    out = forward(network, inputs, "bfloat16")
    assert {t.dtype for t in vars(out).values()} == {torch.float32}
    assert all(torch.isfinite(t).all() for t in vars(out).values())


def test_mixed_policy_error_is_bounded_and_below_plain_autocast(
    network: SharpNetwork, inputs: tuple[torch.Tensor, ...]
) -> None:
    """Bounds from measurement on this input: mixed 2.0e-2 (means) / 1.7e-2 (scales); plain autocast 2.4e-2 / 2.2e-2.

    The tiny preset's 8-channel convolutions average rounding errors far less than the full
    network's, so its errors are larger and the policy's gain smaller than at full size
    (README "Devices and precision"); the bounds leave ~20 % of headroom for other CPUs' kernels.
    """
    reference = forward(network, inputs, "float32")
    mixed = forward(network, inputs, "bfloat16")
    plain = forward(network, inputs, AUTOCAST_BF16)
    assert 0 < rel_l2(mixed.means, reference.means) < 2.5e-2
    assert 0 < rel_l2(mixed.scales, reference.scales) < 2.0e-2
    assert rel_l2(mixed.colors, reference.colors) < 1e-3
    assert rel_l2(mixed.means, reference.means) < 0.9 * rel_l2(plain.means, reference.means)
    assert rel_l2(mixed.scales, reference.scales) < 0.9 * rel_l2(plain.scales, reference.scales)

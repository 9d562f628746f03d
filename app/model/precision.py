"""Mixed precision for the SHARP network: which parts run in reduced precision, which stay float32.

A `PrecisionPolicy` names the submodules of `SharpNetwork` (by qualified name, as in
`named_modules()`) that run under autocast with a reduced dtype, and the submodules inside
them that are forced back to float32. Everything a policy does not name runs in plain float32
with autocast off: the depth -> geometry steps in `SharpNetwork.forward`, the initializer, the
composer, and (outside the network) the unprojection.

Region boundaries are exact and cheap: a reduced region returns float32 tensors (bfloat16 ->
float32 is lossless), and a float32 region casts its floating-point inputs to float32. So a
region's output never leaks reduced precision into code that does not expect it.

`precision_context(network, mode, device_type)` is the one entry point for callers: it applies
the policy for `mode` ("float32", "tf32", "bfloat16", "float16", or a `PrecisionPolicy`) for
the duration of a `with` block, and is a no-op for the float32 modes (bit-for-bit unchanged).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEPTH = "monodepth_model.monodepth_predictor"
ENCODER = f"{DEPTH}.encoder"

PATCH_VIT = f"{ENCODER}.patch_encoder"
"""The shared ViT-L over the 25 + 9 tiles and the quarter image: 62 % of the forward's FLOPs."""
IMAGE_VIT = f"{ENCODER}.image_encoder"
ENCODER_PROJECTIONS = tuple(
    f"{ENCODER}.{name}"
    for name in ("upsample_latent0", "upsample_latent1", "upsample0", "upsample1", "upsample2",
                 "upsample_lowres", "fuse_lowres")
)
DEPTH_DECODER = f"{DEPTH}.decoder"
"""The DPT decoder of the depth network: 20 % of the FLOPs."""
DEPTH_HEAD = f"{DEPTH}.head"
"""Convolutions from decoder features to the two disparity maps."""
GAUSSIAN_DECODER = "feature_model.decoder"
GAUSSIAN_FUSION = ("feature_model.image_encoder", "feature_model.fusion")
GAUSSIAN_HEADS = ("feature_model.texture_head", "feature_model.geometry_head")
DELTA_HEAD = "prediction_head"

NETWORK_PARTS: dict[str, tuple[str, ...]] = {
    "patch ViT": (PATCH_VIT,),
    "image ViT": (IMAGE_VIT,),
    "encoder projections": ENCODER_PROJECTIONS,
    "depth decoder": (DEPTH_DECODER,),
    "depth head": (DEPTH_HEAD,),
    "Gaussian decoder": (GAUSSIAN_DECODER,),
    "Gaussian fusion": GAUSSIAN_FUSION,
    "Gaussian feature heads": GAUSSIAN_HEADS,
    "delta head": (DELTA_HEAD,),
}
"""The parts of the network that contain matmuls or convolutions, in forward order."""

NORMALIZATIONS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which parts of the network run in `dtype` under autocast; the rest stays float32.

    Attributes:
        name: shown in benchmarks.
        dtype: the reduced dtype autocast uses inside `reduced` regions.
        reduced: qualified module names whose forward runs under autocast.
        float32: qualified module names inside reduced regions that run in float32 again.
        float32_types: module types that run in float32 wherever they occur inside a reduced region.
        per_layer: if True, each convolution and linear layer inside a reduced region runs under
            autocast on its own and returns float32: only the layers' inputs and weights are
            rounded, while activations, residual sums, attention and normalisations stay float32.
    """

    name: str
    dtype: torch.dtype
    reduced: tuple[str, ...]
    float32: tuple[str, ...] = ()
    float32_types: tuple[type[nn.Module], ...] = ()
    per_layer: bool = False

    def float32_modules(self, network: nn.Module) -> list[str]:
        """Qualified names of the modules this policy forces back to float32 inside its reduced regions."""
        names = list(self.float32)
        for name, module in network.named_modules():
            if _inside(name, self.reduced) and isinstance(module, self.float32_types) and name not in names:
                names.append(name)
        return names

    def reduced_modules(self, network: nn.Module) -> list[str]:
        """Qualified names of the modules whose forward runs under autocast."""
        if not self.per_layer:
            return list(self.reduced)
        forced = self.float32_modules(network)
        return [
            name for name, module in network.named_modules()
            if isinstance(module, LAYERS) and _within(name, self.reduced) and not _within(name, forced)
        ]


LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
"""The layers autocast runs in reduced precision (the others it leaves in their input's dtype)."""


def _inside(name: str, regions: Sequence[str]) -> bool:
    """Whether module `name` is strictly inside one of `regions` ("" is the whole network)."""
    return any(region == "" or name.startswith(region + ".") for region in regions)


def _within(name: str, regions: Sequence[str]) -> bool:
    """Whether module `name` is one of `regions` or inside one."""
    return name in regions or _inside(name, regions)


WHOLE_NETWORK = ("",)
"""`reduced=WHOLE_NETWORK` wraps the network's own forward (the root module's name is "")."""

AUTOCAST_BF16 = PrecisionPolicy("bfloat16 autocast (whole network)", torch.bfloat16, WHOLE_NETWORK)
"""Plain autocast around the whole forward: the fastest, and the least accurate."""
AUTOCAST_FP16 = PrecisionPolicy("float16 autocast (whole network)", torch.float16, WHOLE_NETWORK)

PATCH_EMBEDDINGS = (f"{PATCH_VIT}.patch_embed", f"{IMAGE_VIT}.patch_embed")
"""The ViTs' first layers: in bfloat16 they round the input image itself (8 significant bits)."""

MIXED_BF16 = PrecisionPolicy(
    "bfloat16 mixed",
    torch.bfloat16,
    reduced=(PATCH_VIT, IMAGE_VIT, *ENCODER_PROJECTIONS, DEPTH_DECODER, GAUSSIAN_DECODER, "feature_model.fusion"),
    float32=PATCH_EMBEDDINGS,
    float32_types=NORMALIZATIONS,
)
"""The bfloat16 policy behind `--dtype bfloat16` (README "Devices and precision" has the measurements).

bfloat16 (94 % of the FLOPs): the ViTs' attention and MLP matmuls (their residual stream and
LayerNorms are float32 anyway), the encoder's projections, the depth DPT decoder, the Gaussian
decoder and its fusion block.
float32: the patch embeddings (in `tiny` runs, rounding the image to bfloat16 was most of the ViT's
error), every normalisation, the depth head (its last convolution *is* the disparity), the
Gaussian decoder's convolution of [image, disparity], the Gaussian feature heads, the delta
head, and everything after: depth -> geometry, initializer, composer, unprojection.
"""

POLICIES: dict[str, PrecisionPolicy] = {"bfloat16": MIXED_BF16, "float16": AUTOCAST_FP16}
"""What each reduced `DTypeName` means; "float32" and "tf32" run without any policy."""


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """`value` with every floating-point tensor in it (through tuples, lists, dicts) cast to `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple | list):
        return type(value)(_cast_floats(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _cast_floats(item, dtype) for key, item in value.items()}
    return value


def _reduced_forward(forward: Callable[..., Any], device_type: str, dtype: torch.dtype) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            output = forward(*args, **kwargs)
        return _cast_floats(output, torch.float32)

    return run


def _float32_forward(forward: Callable[..., Any], device_type: str) -> Callable[..., Any]:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(*_cast_floats(args, torch.float32), **_cast_floats(kwargs, torch.float32))

    return run


@contextlib.contextmanager
def apply_policy(network: nn.Module, policy: PrecisionPolicy, device_type: str) -> Iterator[None]:
    """Run `network` under `policy` inside the `with` block; restores the modules' forwards on exit.

    Not re-entrant for one network: callers serialise forwards (the predictor holds a lock).
    """
    patched: list[tuple[nn.Module, object]] = []

    def patch(module: nn.Module, wrapper: Callable[..., Any]) -> None:
        patched.append((module, module.__dict__.get("forward")))
        module.forward = wrapper  # type: ignore[method-assign]

    try:
        for name in policy.reduced_modules(network):
            module = network.get_submodule(name)
            patch(module, _reduced_forward(module.forward, device_type, policy.dtype))
        for name in policy.float32_modules(network):
            module = network.get_submodule(name)
            patch(module, _float32_forward(module.forward, device_type))
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        # The wrappers are instance attributes shadowing the class's forward: put back what was there.
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous  # type: ignore[method-assign]


def precision_context(
    network: nn.Module, mode: str | PrecisionPolicy, device_type: str
) -> contextlib.AbstractContextManager[None]:
    """The context to run `network`'s forward in for a precision `mode` (a `DTypeName` or a policy).

    "float32" and "tf32" return a null context: the float32 path is not touched at all.
    """
    if isinstance(mode, PrecisionPolicy):
        return apply_policy(network, mode, device_type)
    if mode in ("float32", "tf32"):
        return contextlib.nullcontext()
    if mode not in POLICIES:
        raise ValueError(f"unknown precision mode {mode!r}; choose float32, tf32 or one of {sorted(POLICIES)}")
    return apply_policy(network, POLICIES[mode], device_type)

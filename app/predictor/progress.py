"""How far a forward pass has got, from forward hooks: no change to the network's own code.

Every leaf module of the network (each Linear, Conv, norm, activation: ~600 calls for SHARP, ~200 for the
tiny preset) gets a forward hook while a prediction that wants progress runs. The i-th hook call to
return means a known share of the pass is done: that share comes from a profile of the same network,
run once on the `meta` device (shapes only, no weights, no arithmetic, ~2 s for SHARP) under PyTorch's
`FlopCounterMode`, which records the floating-point operations done before each leaf returns. So
progress is the fraction of the forward's FLOPs done (the 35 ViT tiles, the decoders, the heads all
count by their cost, not by their number).

FLOPs are not time: memory-bound layers (high-resolution convolutions with few channels) take longer
than their share. So on the CPU each complete pass also records when each hook fired, and the next
passes of that network use those measured time shares (averaged with the earlier ones) instead: the
first prediction's bar follows FLOPs, later ones follow the clock. On CUDA the hooks fire when a kernel
is queued, not when it finishes, so progress runs ahead of the GPU and the end of the stage waits for
it (nothing is learned there); a GPU forward is about a second anyway.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Iterator

import torch
from torch import nn

from app.model.config import SharpConfig
from app.model.network import build_network
from app.vocabulary import ProgressCallback

LOGGER = logging.getLogger(__name__)


def leaves(network: nn.Module) -> list[nn.Module]:
    """The modules without children, in registration order (the same for two networks of one config)."""
    return [module for module in network.modules() if next(module.children(), None) is None]


@functools.lru_cache(maxsize=4)
def flop_profile(config: SharpConfig) -> tuple[float, ...]:
    """For each leaf call of a forward pass, in call order: the fraction of the pass's FLOPs done once it
    returns. Empty if the profile cannot be made (progress is then reported at the stage ends only)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        network = build_network(config, device="meta")
        counter = FlopCounterMode(display=False)
        marks: list[int] = []
        handles = [module.register_forward_hook(lambda *_: marks.append(counter.get_total_flops()))
                   for module in leaves(network)]
        size = config.internal_resolution
        with counter, torch.inference_mode():
            network(torch.zeros(1, 3, size, size, device="meta"), torch.ones(1, device="meta"))
        for handle in handles:
            handle.remove()
        total = counter.get_total_flops()
    except Exception:  # an op without a meta kernel: coarser progress, never a failed prediction
        LOGGER.warning("Could not profile the %s network for progress reports", config.name, exc_info=True)
        return ()
    return tuple(mark / total for mark in marks) if total > 0 else ()


_TIME_SHARES: weakref.WeakKeyDictionary[nn.Module, tuple[float, ...]] = weakref.WeakKeyDictionary()
"""Per network: the share of the forward's time elapsed at each hook call, measured on earlier passes."""


@contextlib.contextmanager
def reporting(network: nn.Module, config: SharpConfig, progress: ProgressCallback) -> Iterator[None]:
    """Report `progress("forward", fraction)` from hooks on `network`'s leaves while the block runs.

    The hooks are removed when the block ends, however it ends.
    """
    profile = flop_profile(config)
    if not profile:
        yield
        return
    fractions = _TIME_SHARES.get(network, profile)
    stamps: list[float] = []
    last = len(fractions) - 1

    def hook(_module: nn.Module, _args: object, _output: object) -> None:
        stamps.append(time.perf_counter())
        progress("forward", fractions[min(len(stamps) - 1, last)])

    handles = [module.register_forward_hook(hook) for module in leaves(network)]
    start = time.perf_counter()
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    on_cpu = all(parameter.device.type == "cpu" for parameter in network.parameters())
    if on_cpu and len(stamps) == len(profile) and stamps[-1] > start:  # a whole pass: learn its time shares
        measured = [(stamp - start) / (stamps[-1] - start) for stamp in stamps]
        earlier = _TIME_SHARES.get(network)
        if earlier is not None:
            measured = [(a + b) / 2 for a, b in zip(earlier, measured, strict=True)]
        _TIME_SHARES[network] = tuple(measured)

"""How far a forward pass has got, from forward hooks: no change to the network's own code.

Every leaf module of the network (each Linear, Conv, norm, activation: ~600 calls for SHARP, ~200 for the
tiny preset) gets a forward hook while a prediction that wants progress runs. The i-th hook call to
return means a known share of the pass is done: that share comes from a profile of the same network,
run once on the `meta` device (shapes only, no weights, no arithmetic, ~2 s for SHARP) under PyTorch's
`FlopCounterMode`, which records the floating-point operations done before each leaf returns. So
progress is the fraction of the forward's FLOPs done, which tracks time on a compute-bound device
(the 35 ViT tiles, the decoders, the heads all count by their cost, not by their number).

On CUDA the hooks fire when a kernel is queued, not when it finishes, so progress runs ahead of the GPU
and the end of the stage waits for it; a GPU forward is about a second anyway.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from app.model import build_network
from app.model.config import SharpConfig

LOGGER = logging.getLogger(__name__)

ProgressCallback = Callable[[str, float], None]
"""`progress(stage, fraction)`: the stage (`preprocess`, `forward`, `postprocess`) and how much of it is
done, in [0, 1]. It runs on the prediction thread; an exception it raises stops the prediction there
(the way a job is cancelled mid-forward)."""


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


@contextlib.contextmanager
def reporting(network: nn.Module, config: SharpConfig, progress: ProgressCallback) -> Iterator[None]:
    """Report `progress("forward", fraction)` from hooks on `network`'s leaves while the block runs.

    The hooks are removed when the block ends, however it ends.
    """
    fractions = flop_profile(config)
    if not fractions:
        yield
        return
    calls = 0
    last = len(fractions) - 1

    def hook(_module: nn.Module, _args: object, _output: object) -> None:
        nonlocal calls
        fraction = fractions[min(calls, last)]
        calls += 1
        progress("forward", fraction)

    handles = [module.register_forward_hook(hook) for module in leaves(network)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

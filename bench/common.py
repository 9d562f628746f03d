"""Helpers shared by the benchmarks: FLOP counting, matmul roofline, conformance weights."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from app.model import SharpNetwork, build_network
from tests.conformance import DATA_DIR, fill_state_dict

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE_DIR = DATA_DIR
"""The conformance data in the repository (tests/data/conformance): the photo and the reference outputs."""


def forward_flops(preset: str) -> float:
    """FLOPs of one forward pass, counted on the meta device (no compute, a few seconds)."""
    network = build_network(preset, device="meta")
    size = network.config.internal_resolution
    with FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, size, size, device="meta"), torch.ones(1, device="meta"))
    return float(counter.get_total_flops())


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 4096, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an n x n matrix product: this machine's practical compute roof."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conformance_network() -> SharpNetwork:
    """The full network with the conformance seed-0 weights (what coffee_s0.* was made with)."""
    network = build_network("sharp")
    network.load_state_dict(fill_state_dict(network.state_dict(), seed=0), strict=True)
    return network

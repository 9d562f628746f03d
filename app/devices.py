"""Which torch device to run on: the one place that turns `auto`, `cpu`, `cuda`, `mps` into a device.

Selecting a device also readies the CPU's vector-maths library once per process (`prepare_cpu_maths`),
since every computation starts here.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def prepare_cpu_maths() -> None:
    """Make MKL's vector-maths library (VML) detect the CPU once, on this thread, before any parallel use.

    torch's float `log`, `exp`, `sqrt`, `log2`, `tanh`, ... on the CPU call VML from every intra-op
    thread. VML detects the CPU on its first call and caches the answer in one process-wide variable,
    which it writes twice: first the detector's raw code, then its kernel-table index. A thread that
    reads it between the two writes indexes the table with the raw code and runs another kernel for
    its share of the tensor: on an AVX-512 CPU the AVX2 "enhanced performance" one, whose `log` is
    off by up to 4e-5 (700 float32 ulps). Which thread, if any, lands there depends on timing, so the
    first parallel VML call of a process (the composer's `log`, in a prediction) gave different bytes
    in about one process in five. One small call here, below torch's parallel grain size, so on this
    thread alone, finishes the detection; every later call reads the final index. It costs
    microseconds and changes no result: the race could only make a result differ from this one.
    """
    torch.log(torch.ones(1))


def select_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device (`cuda:1` too) must be available.

    Also runs `prepare_cpu_maths` (once per process), whatever the device: CPU tensors are used with all of them.

    Raises:
        ValueError: an unknown name, or a device this machine does not have.
    """
    prepare_cpu_maths()
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was requested but Apple MPS is not available on this machine")
    return device

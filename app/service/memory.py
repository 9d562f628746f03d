"""Memory a photo held goes back to the system once freed.

A photo holds hundreds of MB while it is decoded and predicted (a 7000 x 7000 PNG: 147 MB of RGB, 196 MB
inside Pillow). Such buffers must go back to the system when freed, which glibc's malloc does only for
blocks it mmapped: by default it raises its mmap threshold to the size of each mmapped block freed (up to
32 MB), so later photos' buffers (Pillow allocates in 16 MB blocks) come from its heaps, which keep them.
The service's `start` fixes the threshold at `MMAP_THRESHOLD_BYTES` (`fix_mmap_threshold`). Six concurrent
7000 x 7000 uploads: peak RSS 2.4 GB and 1.7 GB kept after, before; see `bench/memory.py --cases server`.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations from this size up are mmapped by glibc, so freeing them gives the memory back (module docstring)."""


def fix_mmap_threshold(size: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc's malloc mmap every allocation of `size` bytes or more (and stop moving that threshold);
    True if it did, False where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


_M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number (malloc.h)."""

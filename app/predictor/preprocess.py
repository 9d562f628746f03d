"""The network's input: an (H, W, 3) uint8 photo resized to the square (1, 3, S, S) float32 it expects.

`resize_for_network(rgb, S)` gives what the reference's preprocessing,
`F.interpolate(torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255, (S, S), mode="bilinear",
align_corners=True)`, gives, without ever holding the photo as floats. Bilinear interpolation with
`align_corners=True` and no antialiasing reads only the 2 x 2 source pixels around each of the S x S
sample positions, so those are gathered from the uint8 array, a block of output rows at a time, and
blended. Memory is O(S²) whatever the photo's size (plus one block of source rows), where the plain
path makes two float32 copies of the whole photo: 1.2 GB for a 7000 x 7000 image, which a 160 KB PNG
can encode.

The arithmetic is that of PyTorch's CPU kernel for 3-channel float images when it runs on more than
one thread and S > 64 (`upsample_generic_Nd_kernel_impl`, the path the service takes):

* per axis, `scale = float32(in - 1) / float32(out - 1)` (0 when out is 1), the source position
  `real = scale * i` in float32, `i0 = min(floor(real), in - 1)`, `i1 = i0 + 1` unless `i0` is the
  last pixel, `l1 = clamp(real - i0, 0, 1)`, `l0 = 1 - l1`; when `in == out` simply `i0 = i1 = i`,
  `l0 = 1`, `l1 = 0`;
* pixel values are float32 `v / 255`;
* along x, `top = fma(a, lx0, b * lx1)` and `bottom = fma(c, lx0, d * lx1)`; along y,
  `out = fma(top, ly0, bottom * ly1)`: the expression `t0 * w0 + t1 * w1`, fused the way the compiler
  fuses it in PyTorch's AVX2/AVX512 builds. Each fused step is evaluated in float64, where the product
  of two float32 values is exact, and rounded to float32 (rounding twice, float64 then float32, can in
  rare near-ties differ from one fused rounding by one ulp).

This is bit-identical to PyTorch's output on our x86-64 CPUs (tested). Other paths round in other
orders: PyTorch on one thread, or with S <= 64, uses its channels-last kernel
(`a*w00 + b*w01 + c*w10 + d*w11`), CUDA has its own kernel, builds without FMA fuse nothing. They all
differ from this by at most one float32 ulp (< 1.2e-7 on [0, 1]), as they differ from each other.
"""

from __future__ import annotations

import numpy as np
import torch

_ROWS_PER_BLOCK = 64
"""Output rows blended at once: bounds the temporaries to a few 64 x S x 3 arrays."""

_UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)
"""float32(v / 255) for every uint8 v, as PyTorch's `x.float() / 255` rounds it."""


def resize_for_network(rgb: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, size, size) float32 in [0, 1], contiguous, on the CPU.

    Bilinear with `align_corners=True`, no antialiasing, aspect ratio not kept: the values of
    `F.interpolate(torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255.0, size=(size, size),
    mode="bilinear", align_corners=True)` (see the module docstring) in O(size²) memory. `rgb` may be
    any strided view (read-only, flipped, transposed); it is never copied whole.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.dtype} of shape {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"the image is empty ({width}x{height} pixels)")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")

    rows0, rows1, row_l0, row_l1 = _source_taps(height, size)
    cols0, cols1, col_l0, col_l1 = _source_taps(width, size)
    # float64 copies of the weights that multiply a float32 value exactly (the fused products).
    col_l0_exact, col_l1 = col_l0.astype(np.float64)[:, None], col_l1[:, None]
    row_l0_exact, row_l1 = row_l0.astype(np.float64)[:, None, None], row_l1[:, None, None]

    def horizontal(rows: np.ndarray) -> np.ndarray:
        """fma(a, lx0, b * lx1) for the given source rows: (rows, size, 3) float32."""
        source = rgb[rows]  # (rows, W, 3) uint8
        left = _UINT8_TO_UNIT[np.take(source, cols0, axis=1)]
        right = _UINT8_TO_UNIT[np.take(source, cols1, axis=1)]
        return (left * col_l0_exact + right * col_l1).astype(np.float32)

    out = np.empty((3, size, size), dtype=np.float32)
    for start in range(0, size, _ROWS_PER_BLOCK):
        block = slice(start, min(start + _ROWS_PER_BLOCK, size))
        # Each source row is interpolated along x once per block, however many output rows use it
        # (many, when upscaling).
        needed, where = np.unique(np.concatenate([rows0[block], rows1[block]]), return_inverse=True)
        along_x = horizontal(needed)
        top, bottom = along_x[where[: block.stop - start]], along_x[where[block.stop - start :]]
        blended = (top * row_l0_exact[block] + bottom * row_l1[block]).astype(np.float32)
        out[:, block] = blended.transpose(2, 0, 1)
    return torch.from_numpy(out)[None]


def _source_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: the two source indices and their float32 weights (l0, l1)."""
    f32 = np.float32
    index = np.arange(out_size)
    if in_size == out_size:
        return index, index, np.ones(out_size, f32), np.zeros(out_size, f32)
    scale = f32(in_size - 1) / f32(out_size - 1) if out_size > 1 else f32(0)
    real = scale * index.astype(f32)
    i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    l1 = np.clip(real - i0.astype(f32), f32(0), f32(1))
    return i0, i1, f32(1) - l1, l1

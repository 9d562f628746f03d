"""resize_for_network against the reference preprocessing, F.interpolate on the whole photo as floats."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.predictor.preprocess import resize_for_network


def reference(rgb: np.ndarray, size: int) -> torch.Tensor:
    """The preprocessing this replaces (and the reference's): float copy of the photo, then interpolate."""
    pixels = torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=True)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in float32 units in the last place; both are >= 0, so the bit patterns order."""
    return int((a.view(torch.int32).long() - b.view(torch.int32).long()).abs().max())


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """Restore PyTorch's thread count after a test that changes it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


SIZES = [
    (400, 600, 512),  # the conformance photo's shape, downscaled
    (600, 400, 512),
    (1000, 1500, 512),
    (3024, 4032, 512),  # a phone photo, 6x down
    (4032, 3024, 1536),
    (400, 600, 1536),  # upscaled
    (97, 333, 129),  # odd everything
    (333, 97, 255),
    (65, 65, 65),  # same size: a plain copy
    (512, 512, 512),
    (2, 2, 511),
    (1, 1, 100),  # one pixel
    (1, 777, 100),  # one pixel high
    (777, 1, 100),  # one pixel wide
    (1, 5, 513),
]


@pytest.mark.parametrize(("height", "width", "size"), SIZES)
def test_matches_pytorch_multithreaded_kernel_within_one_ulp(
    torch_threads: None, height: int, width: int, size: int
) -> None:
    # With more than one thread and size > 64, PyTorch uses the kernel whose arithmetic we replicate.
    torch.set_num_threads(2)
    rgb = random_rgb(height, width, seed=height * 7 + width)

    resized = resize_for_network(rgb, size)
    expected = reference(rgb, size)

    assert resized.shape == (1, 3, size, size) and resized.dtype == torch.float32
    assert resized.is_contiguous()
    assert ulps(resized, expected) <= 1
    assert float((resized - expected).abs().max()) <= 1e-6


@pytest.mark.parametrize(("height", "width", "size"), [(400, 600, 512), (97, 333, 64), (9, 1, 7), (3, 3, 1)])
def test_matches_pytorch_other_kernel_within_1e6(torch_threads: None, height: int, width: int, size: int) -> None:
    # One thread, or size <= 64: PyTorch's channels-last kernel, which sums the four taps in another order.
    torch.set_num_threads(1)
    rgb = random_rgb(height, width, seed=3)

    difference = (resize_for_network(rgb, size) - reference(rgb, size)).abs().max()

    assert float(difference) <= 1e-6


def test_flat_colour_and_extremes_are_exact() -> None:
    for value in (0, 1, 128, 254, 255):
        rgb = np.full((31, 17, 3), value, dtype=np.uint8)
        resized = resize_for_network(rgb, 100)
        assert torch.equal(resized, torch.full_like(resized, np.float32(value) / np.float32(255)))


def test_corners_are_the_source_corners() -> None:
    rgb = random_rgb(50, 70, seed=5)
    resized = resize_for_network(rgb, 129)[0].permute(1, 2, 0).numpy()
    for (y, x), (sy, sx) in {(0, 0): (0, 0), (0, -1): (0, -1), (-1, 0): (-1, 0), (-1, -1): (-1, -1)}.items():
        np.testing.assert_array_equal(resized[y, x], rgb[sy, sx].astype(np.float32) / np.float32(255))


def test_strided_and_read_only_views_give_the_same_result() -> None:
    rgb = random_rgb(60, 90, seed=7)
    views = {
        "flipped": rgb[::-1, ::-1],
        "transposed": rgb.transpose(1, 0, 2),
        "cropped": rgb[5:50:2, 3:80:3],
        "alpha dropped": np.concatenate([rgb, rgb[:, :, :1]], axis=2)[:, :, :3],
    }
    for name, view in views.items():
        read_only = view.view()
        read_only.flags.writeable = False
        resized = resize_for_network(read_only, 77)
        assert torch.equal(resized, resize_for_network(np.ascontiguousarray(view), 77)), name
    gray = np.broadcast_to(rgb[:, :, :1], rgb.shape)  # zero stride across channels
    assert torch.equal(resize_for_network(gray, 77), resize_for_network(np.ascontiguousarray(gray), 77))


def test_memory_does_not_grow_with_the_photo() -> None:
    # A 4000 x 4000 photo (48 MB as uint8) to 64 x 64: the float path would allocate 2 x 192 MB.
    rgb = np.zeros((4000, 4000, 3), dtype=np.uint8)
    rgb[::7, ::5] = 200
    tracemalloc.start()
    try:
        resize_for_network(rgb, 64)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Two blocks of 64 source rows (2 x 64 x 4000 x 3 bytes) plus small per-block temporaries.
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize(
    ("rgb", "size", "message"),
    [
        (np.zeros((4, 4), np.uint8), 8, "expected an \\(H, W, 3\\) uint8 array"),
        (np.zeros((4, 4, 4), np.uint8), 8, "expected an \\(H, W, 3\\) uint8 array"),
        (np.zeros((4, 4, 3), np.float32), 8, "expected an \\(H, W, 3\\) uint8 array"),
        (np.zeros((0, 4, 3), np.uint8), 8, "the image is empty"),
        (np.zeros((4, 4, 3), np.uint8), 0, "size must be at least 1"),
    ],
)
def test_invalid_input_is_rejected(rgb: np.ndarray, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resize_for_network(rgb, size)

"""`probe_image`: an upload checked from its header alone agrees with the full decode on what it accepts."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.imaging import (
    CorruptImageError,
    ImageHeader,
    ImageTooLargeError,
    UnsupportedImageError,
    load_image,
    probe_image,
)


def encoded(fmt: str, width: int = 40, height: int = 30) -> bytes:
    rgb = (np.random.default_rng(1).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_the_header_says_what_the_decode_finds(fmt: str) -> None:
    data = encoded(fmt)
    header = probe_image(data)
    loaded = load_image(data)
    assert header == ImageHeader(loaded.format, loaded.width, loaded.height) == ImageHeader(fmt, 40, 30)


def test_the_same_refusals_as_the_decode() -> None:
    data = encoded("PNG")
    for check in (probe_image, load_image):
        with pytest.raises(ImageTooLargeError):
            check(data, max_pixels=40 * 30 - 1)
        with pytest.raises(UnsupportedImageError):
            check(b"just some text")
        with pytest.raises(CorruptImageError):
            check(b"\xff\xd8\xff\xe0 truncated")
    assert probe_image(data, max_pixels=40 * 30).width == 40


def test_damaged_pixels_pass_the_header_and_fail_the_decode() -> None:
    data = encoded("PNG")
    truncated = data[: len(data) // 2]
    assert probe_image(truncated) == ImageHeader("PNG", 40, 30)
    with pytest.raises(CorruptImageError):
        load_image(truncated)

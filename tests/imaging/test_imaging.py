"""Tests for app.imaging with real image files written by Pillow (and pillow_heif) at test time."""

from __future__ import annotations

import io
import math
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageFile, ImageOps, TiffImagePlugin

from app.imaging import (
    DEFAULT_FOCAL_LENGTH_MM,
    FOCAL_LENGTH_35MM_RANGE,
    MAX_SIDE_PX,
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    LoadedImage,
    UnsupportedImageError,
    find_images,
    focal_length_to_px,
    is_supported_image_path,
    load_image,
    supported_extensions,
)
from app.imaging.exif import focal_length_35mm

# Any warning (Pillow's DecompressionBombWarning, palette-transparency warnings, ...) fails a test.
pytestmark = pytest.mark.filterwarnings("error")

COFFEE = Path(__file__).resolve().parents[1] / "data" / "conformance" / "coffee.png"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
EXIF_IFD = 0x8769
ORIENTATION = 0x0112
FOCAL_LENGTH = 0x920A
FOCAL_LENGTH_35MM = 0xA405
HEIF_ENCODER_MISSING = not pillow_heif.libheif_info().get("HEIF")


def pattern_rgb(width: int = 12, height: int = 8) -> np.ndarray:
    """(H, W, 3) uint8 where every pixel differs: R encodes x, G encodes y, B is a mix."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 20 % 256, ys * 30 % 256, (xs * 7 + ys * 11) % 256], axis=-1).astype(np.uint8)


def marker_image(width: int = 32, height: int = 16) -> Image.Image:
    """Blue, with an 8x8 red block in the top-left and an 8x8 green block in the top-right corner."""
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(RED, (0, 0, 8, 8))
    img.paste(GREEN, (width - 8, 0, width, 8))
    return img


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def exif_with(
    orientation: int | None = None,
    focal_35mm: int | None = None,
    focal: TiffImagePlugin.IFDRational | None = None,
) -> Image.Exif:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    if focal_35mm is not None:
        exif.get_ifd(EXIF_IFD)[FOCAL_LENGTH_35MM] = focal_35mm
    if focal is not None:
        exif.get_ifd(EXIF_IFD)[FOCAL_LENGTH] = focal
    return exif


def encode_heic(img: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    pillow_heif.from_pillow(img).save(buffer, quality=95, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height 8-bit gray but whose IDAT holds 10 bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
        + chunk(b"IEND", b"")
    )


def corner_colours(rgb: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Colour 2 px in from each corner, as (R, G, B)."""
    return {
        "tl": tuple(int(v) for v in rgb[2, 2]),
        "tr": tuple(int(v) for v in rgb[2, -3]),
        "bl": tuple(int(v) for v in rgb[-3, 2]),
        "br": tuple(int(v) for v in rgb[-3, -3]),
    }


def close_to(colour: tuple[int, ...], expected: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(colour, expected, strict=True))


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [
        ("PNG", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_lossless_formats_round_trip_exactly(tmp_path: Path, fmt: str, kwargs: dict[str, object]) -> None:
    expected = pattern_rgb(12, 8)
    path = tmp_path / f"picture.{fmt.lower()}"
    path.write_bytes(encode(Image.fromarray(expected), fmt, **kwargs))

    loaded = load_image(path)

    assert isinstance(loaded, LoadedImage)
    assert loaded.format == fmt
    assert (loaded.width, loaded.height) == (12, 8)
    assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (8, 12, 3)
    assert loaded.rgb.flags.c_contiguous and loaded.rgb.flags.writeable
    np.testing.assert_array_equal(loaded.rgb, expected)
    assert loaded.name == "picture"


def test_jpeg_round_trip_is_close_and_bit_identical_to_pillow() -> None:
    img = marker_image(32, 16)
    data = encode(img, "JPEG", quality=95, subsampling=0)

    loaded = load_image(data)

    assert loaded.format == "JPEG"
    assert (loaded.width, loaded.height) == (32, 16)
    assert np.abs(loaded.rgb.astype(int) - np.asarray(img).astype(int)).mean() < 4
    # Plain 8-bit RGB must be exactly what the reference's np.asarray(pil) gives.
    np.testing.assert_array_equal(loaded.rgb, np.asarray(Image.open(io.BytesIO(data))))


def test_gif_loads_first_frame_through_the_palette() -> None:
    first = Image.new("P", (6, 4), 0)
    first.putpalette([*RED, *GREEN, *BLUE] + [0] * (253 * 3))
    first.paste(1, (0, 0, 3, 4))
    second = Image.new("P", (6, 4), 2)
    second.putpalette([*RED, *GREEN, *BLUE] + [0] * (253 * 3))
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2

    loaded = load_image(data)

    assert loaded.format == "GIF"
    expected = np.zeros((4, 6, 3), dtype=np.uint8)
    expected[:, :3] = GREEN
    expected[:, 3:] = RED
    np.testing.assert_array_equal(loaded.rgb, expected)


@pytest.mark.skipif(HEIF_ENCODER_MISSING, reason="libheif in this environment has no HEVC encoder")
def test_heic_round_trip(tmp_path: Path) -> None:
    img = marker_image(64, 48)
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(encode_heic(img))

    loaded = load_image(path)

    assert loaded.format == "HEIF"
    assert loaded.name == "IMG_0001"
    assert (loaded.width, loaded.height) == (64, 48)
    corners = corner_colours(loaded.rgb)
    assert close_to(corners["tl"], RED) and close_to(corners["tr"], GREEN) and close_to(corners["br"], BLUE)
    assert np.abs(loaded.rgb.astype(int) - np.asarray(img).astype(int)).mean() < 8


@pytest.mark.skipif(HEIF_ENCODER_MISSING, reason="libheif in this environment has no HEVC encoder")
def test_heic_is_recognised_by_content_not_extension(tmp_path: Path) -> None:
    path = tmp_path / "disguised.jpg"
    path.write_bytes(encode_heic(marker_image(64, 48)))

    loaded = load_image(path)

    assert loaded.format == "HEIF"
    assert (loaded.width, loaded.height) == (64, 48)


@pytest.mark.skipif(HEIF_ENCODER_MISSING, reason="libheif in this environment has no HEVC encoder")
def test_heic_orientation_is_applied_once_and_exif_focal_is_read() -> None:
    # pillow_heif stores EXIF orientation 6 as a container rotation; libheif undoes it at decode.
    data = encode_heic(marker_image(64, 48), exif=exif_with(orientation=6, focal_35mm=26).tobytes())

    loaded = load_image(data)

    assert (loaded.width, loaded.height) == (48, 64)
    corners = corner_colours(loaded.rgb)
    assert close_to(corners["tr"], RED), corners  # 90° clockwise: top-left -> top-right
    assert close_to(corners["br"], GREEN), corners
    assert loaded.f_px_source == "exif"
    assert loaded.focal_length_35mm == 26.0


@pytest.mark.skipif(HEIF_ENCODER_MISSING, reason="libheif in this environment has no HEVC encoder")
def test_truncated_heic_is_corrupt() -> None:
    data = encode_heic(marker_image(64, 48))

    with pytest.raises(CorruptImageError):
        load_image(data[: len(data) // 2])


def test_avif_brand_goes_to_pillow_not_libheif() -> None:
    try:
        data = encode(Image.new("RGB", (16, 8), (10, 200, 30)), "AVIF")
    except (KeyError, OSError) as exc:
        pytest.skip(f"Pillow cannot write AVIF here: {exc}")

    loaded = load_image(data)

    assert loaded.format == "AVIF"
    assert (loaded.width, loaded.height) == (16, 8)
    assert close_to(tuple(int(v) for v in loaded.rgb[4, 8]), (10, 200, 30), tol=8)


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(
    ("orientation", "red_at", "green_at", "swapped"),
    [
        (1, "tl", "tr", False),
        (2, "tr", "tl", False),
        (3, "br", "bl", False),
        (4, "bl", "br", False),
        (5, "tl", "bl", True),
        (6, "tr", "br", True),
        (7, "br", "tr", True),
        (8, "bl", "tl", True),
    ],
)
def test_jpeg_exif_orientation_moves_the_markers(
    orientation: int, red_at: str, green_at: str, swapped: bool
) -> None:
    data = encode(marker_image(32, 16), "JPEG", quality=95, exif=exif_with(orientation=orientation))

    loaded = load_image(data)

    assert (loaded.width, loaded.height) == ((16, 32) if swapped else (32, 16))
    corners = corner_colours(loaded.rgb)
    assert close_to(corners[red_at], RED), corners
    assert close_to(corners[green_at], GREEN), corners


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose_exactly(orientation: int) -> None:
    data = encode(Image.fromarray(pattern_rgb(12, 8)), "PNG", exif=exif_with(orientation=orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))

    loaded = load_image(data)

    np.testing.assert_array_equal(loaded.rgb, expected)
    # Orientation flips and transposes the decoded array in place of a copy: a view for 2-8.
    assert loaded.rgb.flags.owndata == (orientation == 1)


@pytest.mark.parametrize(
    ("orientation", "transpose"),
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)],
)
def test_orientations_3_6_8_match_the_reference_transposes(
    orientation: int, transpose: Image.Transpose
) -> None:
    img = Image.fromarray(pattern_rgb(12, 8))
    data = encode(img, "TIFF", exif=exif_with(orientation=orientation))

    loaded = load_image(data)

    np.testing.assert_array_equal(loaded.rgb, np.asarray(img.transpose(transpose)))


def test_ifd0_orientation_overrides_exif_sub_ifd() -> None:
    exif = exif_with(orientation=6)
    exif.get_ifd(EXIF_IFD)[ORIENTATION] = 3
    img = Image.fromarray(pattern_rgb(12, 8))

    loaded = load_image(encode(img, "PNG", exif=exif))

    np.testing.assert_array_equal(loaded.rgb, np.asarray(img.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize("orientation", [0, 9, 255])
def test_invalid_orientation_is_ignored(orientation: int) -> None:
    img = Image.fromarray(pattern_rgb(12, 8))

    loaded = load_image(encode(img, "PNG", exif=exif_with(orientation=orientation)))

    np.testing.assert_array_equal(loaded.rgb, np.asarray(img))


# --------------------------------------------------------------------------- focal length


def test_focal_length_to_px_matches_the_reference_formula_bit_for_bit() -> None:
    for f_mm, width, height in [(30.0, 600, 400), (26.0, 4032, 3024), (35.7, 1, 1), (50.0, 12345, 6789)]:
        reference = f_mm * np.sqrt(width**2.0 + height**2.0) / np.sqrt(36**2 + 24**2)
        assert focal_length_to_px(f_mm, width, height) == float(reference)
    assert focal_length_to_px(30.0, 600, 400) == pytest.approx(500.0, abs=1e-9)


def test_focal_from_35mm_equivalent_tag() -> None:
    data = encode(
        Image.new("RGB", (40, 30)),
        "JPEG",
        exif=exif_with(focal_35mm=50, focal=TiffImagePlugin.IFDRational(4.25)),
    )

    loaded = load_image(data)

    assert loaded.f_px_source == "exif"
    assert loaded.focal_length_35mm == 50.0
    assert loaded.f_px == pytest.approx(50.0 * 50.0 / math.sqrt(36**2 + 24**2), rel=1e-12)


def test_small_35mm_equivalent_value_is_never_scaled() -> None:
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif_with(focal_35mm=5)))

    assert loaded.focal_length_35mm == 5.0
    assert loaded.f_px_source == "exif"


def test_focal_length_below_10mm_is_multiplied_by_8_4() -> None:
    exif = exif_with(focal=TiffImagePlugin.IFDRational(17, 4))
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif))

    assert loaded.f_px_source == "exif"
    assert loaded.focal_length_35mm == pytest.approx(4.25 * 8.4, rel=1e-12)
    assert loaded.f_px == pytest.approx(focal_length_to_px(4.25 * 8.4, 40, 30), rel=1e-12)


def test_focal_length_of_10mm_or_more_is_used_as_is() -> None:
    exif = exif_with(focal=TiffImagePlugin.IFDRational(24, 1))
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif))

    assert loaded.focal_length_35mm == 24.0
    assert loaded.f_px_source == "exif"


def test_zero_35mm_value_falls_back_to_focal_length() -> None:
    exif = exif_with(focal_35mm=0, focal=TiffImagePlugin.IFDRational(5, 1))
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif))

    assert loaded.focal_length_35mm == pytest.approx(42.0)


@pytest.mark.parametrize("bad", [TiffImagePlugin.IFDRational(0, 1), TiffImagePlugin.IFDRational(1, 0)])
def test_zero_or_nan_focal_length_falls_back_to_default(bad: TiffImagePlugin.IFDRational) -> None:
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif_with(focal=bad)))

    assert loaded.f_px_source == "default"
    assert loaded.focal_length_35mm == DEFAULT_FOCAL_LENGTH_MM
    assert loaded.f_px > 0


def test_no_exif_uses_30mm_default() -> None:
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "PNG"))

    assert DEFAULT_FOCAL_LENGTH_MM == 30.0
    assert loaded.f_px_source == "default"
    assert loaded.focal_length_35mm == 30.0
    assert loaded.f_px == pytest.approx(30.0 * 50.0 / math.sqrt(36**2 + 24**2), rel=1e-12)


def test_focal_rules_guard_odd_exif_values() -> None:
    # Exercises value types and tag names that Pillow cannot write into a file.
    assert focal_length_35mm({"FocalLenIn35mmFilm": 28}) == (28.0, "exif")
    assert focal_length_35mm({"FocalLengthIn35mmFilm": float("nan"), "FocalLenIn35mmFilm": 28}) == (
        28.0,
        "exif",
    )
    assert focal_length_35mm({"FocalLengthIn35mmFilm": 0.5, "FocalLength": 50}) == (50.0, "exif")
    assert focal_length_35mm({"FocalLength": -4}) == (30.0, "default")
    assert focal_length_35mm({"FocalLength": float("inf")}) == (30.0, "default")
    assert focal_length_35mm({"FocalLength": b"junk", "FocalLengthIn35mmFilm": "x"}) == (30.0, "default")
    assert focal_length_35mm({"FocalLength": (1, 2)}) == (30.0, "default")


def exif_bytes(focal_35mm: object = None, focal: object = None) -> bytes:
    """An EXIF block with the given sub-IFD focal tags; floats are written as DOUBLE, as some tools do."""
    exif = Image.Exif()
    if focal_35mm is not None:
        exif.get_ifd(EXIF_IFD)[FOCAL_LENGTH_35MM] = focal_35mm
    if focal is not None:
        exif.get_ifd(EXIF_IFD)[FOCAL_LENGTH] = focal
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
@pytest.mark.parametrize(
    ("focal_35mm", "focal"),
    [
        (1e20, None),
        (1e-30, None),
        (None, 1e20),
        (None, 1e-30),
        (1e20, 1e-30),
        (None, TiffImagePlugin.IFDRational(1, 4_000_000_000)),  # 2.5e-10 mm, x 8.4 still far below 1 mm
        (None, 10_001.0),
        (None, 0.1),  # x 8.4 = 0.84 mm
        (10_000.5, None),
    ],
)
def test_absurd_exif_focal_lengths_fall_back_to_the_default(fmt: str, focal_35mm: object, focal: object) -> None:
    data = encode(Image.new("RGB", (40, 30)), fmt, exif=exif_bytes(focal_35mm, focal))
    with Image.open(io.BytesIO(data)) as img:  # the tags really are in the file
        written = img.getexif().get_ifd(EXIF_IFD)
        assert written.get(FOCAL_LENGTH_35MM) == focal_35mm and written.get(FOCAL_LENGTH) == focal

    loaded = load_image(data)

    assert (loaded.f_px_source, loaded.focal_length_35mm) == ("default", DEFAULT_FOCAL_LENGTH_MM)
    assert loaded.f_px == pytest.approx(focal_length_to_px(30.0, 40, 30), rel=1e-12)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_absurd_35mm_value_falls_through_to_a_sane_focal_length(fmt: str) -> None:
    data = encode(Image.new("RGB", (40, 30)), fmt, exif=exif_bytes(1e20, TiffImagePlugin.IFDRational(50, 1)))

    loaded = load_image(data)

    assert (loaded.f_px_source, loaded.focal_length_35mm) == ("exif", 50.0)


@pytest.mark.parametrize(
    ("focal_35mm", "focal", "expected"),
    [(1, None, 1.0), (10_000, None, 10_000.0), (None, 10_000.0, 10_000.0), (None, 0.125, 1.05)],
)
def test_focal_range_bounds_are_inclusive(focal_35mm: object, focal: object, expected: float) -> None:
    loaded = load_image(encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif_bytes(focal_35mm, focal)))

    assert loaded.f_px_source == "exif"
    assert loaded.focal_length_35mm == pytest.approx(expected, rel=1e-12)
    assert FOCAL_LENGTH_35MM_RANGE == (1.0, 10_000.0)


def test_coffee_conformance_image() -> None:
    if not COFFEE.is_file():
        pytest.skip(f"{COFFEE} is not available in this checkout")

    loaded = load_image(COFFEE)

    assert (loaded.width, loaded.height) == (600, 400)
    assert loaded.f_px == pytest.approx(500.0, abs=1e-9)
    assert loaded.f_px_source == "default"
    assert loaded.name == "coffee"
    with Image.open(COFFEE) as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(loaded.rgb, np.asarray(img))


# --------------------------------------------------------------------------- pixel modes


def test_16bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")

    loaded = load_image(data)

    expected = np.array([0, 0, 1, 1, 128, 255], dtype=np.uint8)
    np.testing.assert_array_equal(loaded.rgb, np.repeat(expected[None, :, None], 3, axis=2))


def test_32bit_int_tiff_is_read_as_16bit_and_clipped() -> None:
    values = np.array([[-5, 0, 257, 65535, 70000]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"

    loaded = load_image(data)

    np.testing.assert_array_equal(loaded.rgb[0, :, 0], [0, 0, 1, 255, 255])
    np.testing.assert_array_equal(loaded.rgb[..., 0], loaded.rgb[..., 2])


def test_normalised_float_tiff_is_scaled_by_255() -> None:
    values = np.array([[0.25, 0.5, 0.75, np.nan]], dtype=np.float32)

    loaded = load_image(encode(Image.fromarray(values), "TIFF"))

    np.testing.assert_array_equal(loaded.rgb[0, :, 1], [64, 128, 191, 0])


def test_unnormalised_float_tiff_is_min_max_stretched() -> None:
    values = np.array([[-10.0, 0.0, 10.0, np.inf]], dtype=np.float32)

    loaded = load_image(encode(Image.fromarray(values), "TIFF"))

    np.testing.assert_array_equal(loaded.rgb[0, :, 0], [0, 128, 255, 0])


def test_palette_png_is_looked_up_not_passed_as_indices() -> None:
    img = Image.new("P", (4, 1))
    img.putpalette([*RED, *GREEN, *BLUE, 9, 9, 9])
    img.putdata([0, 1, 2, 3])
    img.info["transparency"] = bytes([255, 128, 0, 255])
    data = encode(img, "PNG")
    # Partial alpha keeps tRNS as bytes, the case where Pillow's P -> RGB conversion warns.
    assert isinstance(Image.open(io.BytesIO(data)).info["transparency"], bytes)

    loaded = load_image(data)

    np.testing.assert_array_equal(loaded.rgb[0], [RED, GREEN, BLUE, (9, 9, 9)])


def test_la_png_becomes_gray_rgb_with_alpha_dropped() -> None:
    la = Image.merge("LA", [Image.fromarray(np.array([[10, 200]], np.uint8)), Image.new("L", (2, 1), 0)])

    loaded = load_image(encode(la, "PNG"))

    np.testing.assert_array_equal(loaded.rgb[0], [[10, 10, 10], [200, 200, 200]])


def test_rgba_png_drops_alpha_without_compositing() -> None:
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], dtype=np.uint8)

    loaded = load_image(encode(Image.fromarray(rgba), "PNG"))

    np.testing.assert_array_equal(loaded.rgb, rgba[:, :, :3])


@pytest.mark.parametrize(
    ("mode", "values", "expected"), [("L", [0, 77, 255], [0, 77, 255]), ("1", [0, 1, 1], [0, 255, 255])]
)
def test_gray_and_bilevel_png_become_gray_rgb(mode: str, values: list[int], expected: list[int]) -> None:
    img = Image.new(mode, (3, 1))
    img.putdata(values)

    loaded = load_image(encode(img, "PNG"))

    np.testing.assert_array_equal(loaded.rgb[0], [[v, v, v] for v in expected])


def test_cmyk_tiff_becomes_rgb() -> None:
    img = Image.new("CMYK", (3, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])

    loaded = load_image(encode(img, "TIFF"))

    np.testing.assert_array_equal(loaded.rgb[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])


def test_cmyk_jpeg_becomes_rgb() -> None:
    loaded = load_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))

    assert loaded.rgb.shape == (16, 16, 3)
    assert close_to(tuple(int(v) for v in loaded.rgb[8, 8]), RED, tol=10)


def test_lab_tiff_becomes_rgb() -> None:
    img = Image.new("LAB", (2, 1))
    img.putdata([(255, 128, 128), (0, 128, 128)])

    loaded = load_image(encode(img, "TIFF"))

    assert close_to(tuple(int(v) for v in loaded.rgb[0, 0]), (255, 255, 255), tol=3)
    assert close_to(tuple(int(v) for v in loaded.rgb[0, 1]), (0, 0, 0), tol=3)


def big_image(mode: str) -> Image.Image:
    """1500 x 1200 (two or more conversion strips) with varied pixels, in `mode`."""
    rng = np.random.default_rng(11)
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 200, (1200, 1500), dtype=np.uint8), "L").convert("P")
        img.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
        img.info["transparency"] = 7
        return img
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (1200, 1500), dtype=np.uint8), "L")
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (1200, 1500, channels), dtype=np.uint8), mode)


@pytest.mark.parametrize(
    ("mode", "fmt", "whole_image_rgb"),
    [
        ("RGB", "PNG", lambda img: np.asarray(img)),
        ("RGBA", "PNG", lambda img: np.asarray(img)[:, :, :3]),
        ("P", "PNG", lambda img: np.asarray(img.convert("RGBA"))[:, :, :3]),
        ("L", "PNG", lambda img: np.repeat(np.asarray(img)[:, :, None], 3, axis=2)),
        ("CMYK", "TIFF", lambda img: np.asarray(img.convert("RGB"))),
    ],
)
def test_strip_by_strip_conversion_equals_whole_image_conversion(
    mode: str, fmt: str, whole_image_rgb: object
) -> None:
    data = encode(big_image(mode), fmt)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode
        expected = whole_image_rgb(img)  # type: ignore[operator]

    loaded = load_image(data)

    assert loaded.rgb.shape == (1200, 1500, 3) and loaded.rgb.flags.c_contiguous
    np.testing.assert_array_equal(loaded.rgb, expected)


def test_decoding_holds_one_rgb_copy_not_three() -> None:
    # numpy arrays and Python bytes are traced (Pillow's own buffers are not): the result is
    # 3000 x 3000 x 3 = 27 MB, plus a 4 MiB strip and its pieces; np.asarray(img) would add two more
    # whole copies (the tobytes chunks and their join).
    data = encode(Image.new("RGB", (3000, 3000), (200, 120, 40)), "PNG")
    tracemalloc.start()
    try:
        loaded = load_image(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.rgb.nbytes == 27_000_000
    assert peak < loaded.rgb.nbytes + 16 * 2**20, f"peak {peak / 1e6:.0f} MB"


# --------------------------------------------------------------------------- errors


def test_error_classes_and_codes() -> None:
    assert issubclass(ImageError, ValueError)
    assert (ImageError.code, ImageError.status) == ("invalid_image", 400)
    for cls, code, status in [
        (UnsupportedImageError, "unsupported_image", 415),
        (CorruptImageError, "corrupt_image", 400),
        (ImageTooLargeError, "image_too_large", 413),
    ]:
        assert issubclass(cls, ImageError)
        error = cls("human message")
        assert (error.code, error.status) == (code, status)
        assert str(error) == "human message"


def test_truncated_jpeg_is_corrupt_and_truncated_loading_stays_off() -> None:
    data = encode(Image.fromarray(pattern_rgb(64, 64)), "JPEG", quality=95)

    with pytest.raises(CorruptImageError) as info:
        load_image(data[: len(data) // 2])

    assert info.value.code == "corrupt_image"
    assert "JPEG" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_is_corrupt() -> None:
    data = encode(Image.fromarray(pattern_rgb(64, 64)), "PNG")

    with pytest.raises(CorruptImageError):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("magic", [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"II*\x00"])
def test_random_bytes_after_a_valid_magic_are_corrupt(magic: bytes) -> None:
    garbage = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()

    with pytest.raises(CorruptImageError):
        load_image(magic + garbage)


def test_random_bytes_are_unsupported() -> None:
    garbage = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes()

    with pytest.raises(UnsupportedImageError) as info:
        load_image(garbage)

    assert info.value.code == "unsupported_image"


def test_text_file_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)

    with pytest.raises(UnsupportedImageError):
        load_image(path)


def test_video_container_is_unsupported() -> None:
    mp4_head = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2" + b"\x00" * 64

    with pytest.raises(UnsupportedImageError):
        load_image(mp4_head)


def test_eps_is_refused_without_running_ghostscript() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"

    with pytest.raises(UnsupportedImageError):
        load_image(eps)


def test_empty_bytes_and_empty_file_are_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")

    for source in (b"", path):
        with pytest.raises(UnsupportedImageError, match="empty"):
            load_image(source)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.jpg")


def test_zero_width_image_is_an_image_error() -> None:
    with pytest.raises(ImageError):
        load_image(png_header_only(0, 5))


def test_max_pixels_is_inclusive() -> None:
    data = encode(Image.new("RGB", (20, 10)), "PNG")

    assert load_image(data, max_pixels=200).width == 20
    with pytest.raises(ImageTooLargeError) as info:
        load_image(data, max_pixels=199)
    assert info.value.code == "image_too_large"
    assert "200" in str(info.value)


def test_max_pixels_is_checked_from_the_header_before_decoding() -> None:
    # The pixel data is garbage: a decode attempt would raise CorruptImageError instead.
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(5000, 5000), max_pixels=1_000_000)


@pytest.mark.skipif(HEIF_ENCODER_MISSING, reason="libheif in this environment has no HEVC encoder")
def test_max_pixels_applies_to_heic() -> None:
    with pytest.raises(ImageTooLargeError):
        load_image(encode_heic(marker_image(64, 48)), max_pixels=64 * 48 - 1)


def test_pillow_decompression_bomb_warning_zone_becomes_too_large() -> None:
    side = math.isqrt(Image.MAX_IMAGE_PIXELS) + 1  # above Pillow's warning limit, below its error limit
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(side, side))


def test_pillow_decompression_bomb_error_becomes_too_large() -> None:
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(20_000, 20_000), max_pixels=10**9)


def test_larger_max_pixels_overrides_pillow_warning_limit() -> None:
    side = math.isqrt(Image.MAX_IMAGE_PIXELS) + 1
    # Passes the size checks, so the garbage pixel data is decoded and found corrupt.
    with pytest.raises(CorruptImageError):
        load_image(png_header_only(side, side), max_pixels=side * side)


def test_absurdly_long_side_is_too_large() -> None:
    with pytest.raises(ImageTooLargeError):
        load_image(png_header_only(MAX_SIDE_PX + 1, 1))


# --------------------------------------------------------------------------- names and paths


def test_names(tmp_path: Path) -> None:
    path = tmp_path / "holiday.shot.png"
    path.write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    data = path.read_bytes()

    assert load_image(path).name == "holiday.shot"
    assert load_image(str(path)).name == "holiday.shot"
    assert load_image(data).name == "image"
    assert load_image(data, name="uploads/IMG_1.HEIC").name == "IMG_1"
    assert load_image(data, name="C:\\Users\\me\\photo.jpg").name == "photo"
    assert load_image(data, name="scene").name == "scene"
    assert load_image(data, name="").name == "image"
    assert load_image(path, name="override").name == "override"


def test_supported_extensions() -> None:
    extensions = supported_extensions()

    assert extensions == sorted(set(extensions))
    assert all(ext.startswith(".") and ext == ext.lower() for ext in extensions)
    for ext in (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"):
        assert ext in extensions
    assert ".eps" not in extensions
    assert ".txt" not in extensions


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("a.jpg", True),
        ("a.Jpg", True),
        ("a.JPEG", True),
        ("b.HeIc", True),
        ("c.txt", False),
        ("noext", False),
    ],
)
def test_is_supported_image_path_ignores_case(filename: str, expected: bool) -> None:
    assert is_supported_image_path(Path(filename)) is expected


def test_find_images_in_a_tree(tmp_path: Path) -> None:
    png = encode(Image.new("RGB", (2, 2)), "PNG")
    wanted = [
        tmp_path / "a.JPG",
        tmp_path / "sub" / "b.png",
        tmp_path / "sub" / "deeper" / "c.HeIc",
        tmp_path / "sub" / "deeper" / "d.Tiff",
    ]
    unwanted = [tmp_path / "notes.txt", tmp_path / "sub" / "data.json", tmp_path / "sub" / "README"]
    for path in wanted + unwanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    (tmp_path / "folder.png").mkdir()  # a directory with an image-like name is not an image
    (tmp_path / "sub" / "dangling.jpg").symlink_to(tmp_path / "does-not-exist.jpg")

    assert find_images(tmp_path) == sorted(wanted)
    assert find_images(tmp_path / "sub" / "deeper") == sorted(wanted[2:])


def test_find_images_on_files(tmp_path: Path) -> None:
    image = tmp_path / "photo.Jpg"
    image.write_bytes(encode(Image.new("RGB", (2, 2)), "JPEG"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")

    assert find_images(image) == [image]
    with pytest.raises(UnsupportedImageError):
        find_images(text)
    with pytest.raises(FileNotFoundError):
        find_images(tmp_path / "missing")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert find_images(empty) == []

"""Reading a ``.sog`` bundle back (the layout: `app.formats.sog`), as a file from anywhere may be hostile.

Every claim the bundle makes is checked against what the file can hold before anything large is read or
decoded: the zip members' inflated sizes, ``meta.json``'s size before it is parsed, the Gaussian count against
the file's bytes, and each image's own WebP header against the count.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from app.formats.limits import MAX_DEFLATE_RATIO, MAX_GAUSSIANS, SceneTooLargeError, check_gaussian_count
from app.formats.sog import CODEBOOK_SIZE, SOG_VERSION, inverse_log_transform, unpack_quaternions
from app.gaussians import SH_C0, GaussianScene, srgb_to_linear

MIN_BYTES_PER_GAUSSIAN = 8
"""A .sog must hold at least this many bytes for each Gaussian its meta.json claims (ours take about 11: five
lossless WebP images of noisy codes); a claim above it is a decompression bomb (constant images compress to
nearly nothing) and is refused before any image is decoded. At 8, a 10 MB file reads at most 1.25 M Gaussians,
which render in under 1 GB (at 2, an 8 MB file could claim 4 M; 2.36 M of them took 1.13 GB)."""
MAX_META_BYTES = 1 << 20
"""Largest meta.json read (ours are about 6 kB: two codebooks of 256 numbers); larger is refused unparsed."""
IMAGE_KEYS = (("means", 0), ("means", 1), ("quats", 0), ("scales", 0), ("sh0", 0))
"""(meta.json key, index in its `files`) of the five images read."""


def _check_inflation(bundle: zipfile.ZipFile, file_bytes: int) -> None:
    """Refuse, before decompressing anything, zip members that claim to inflate past `MAX_DEFLATE_RATIO` (WebP
    images barely deflate); a member that inflates past its claim fails when read (zipfile stops there)."""
    inflated = sum(member.file_size for member in bundle.infolist())
    if inflated > MAX_DEFLATE_RATIO * file_bytes + (1 << 16):
        raise SceneTooLargeError(f"the .sog's zip members inflate to {inflated:,} bytes from a {file_bytes:,}-byte "
                                 f"file, more than {MAX_DEFLATE_RATIO}x: refused as a decompression bomb")


def _read_meta(bundle: zipfile.ZipFile) -> dict[str, Any]:
    """meta.json as a dict, read only up to `MAX_META_BYTES` (its claimed size first, then what it inflates to)."""
    info = bundle.getinfo("meta.json")
    if info.file_size > MAX_META_BYTES:
        raise SceneTooLargeError(f"the .sog's meta.json is {info.file_size:,} bytes, more than the "
                                 f"{MAX_META_BYTES:,} read")
    with bundle.open(info) as member:
        raw = member.read(MAX_META_BYTES + 1)
    if len(raw) > MAX_META_BYTES:
        raise SceneTooLargeError(f"the .sog's meta.json inflates past the {MAX_META_BYTES:,} bytes read")
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise ValueError("the .sog's meta.json nests too deep") from None
    if not isinstance(meta, dict) or meta.get("version") != SOG_VERSION:
        raise ValueError(f"SOG version {meta.get('version') if isinstance(meta, dict) else None!r} is not "
                         f"supported (only {SOG_VERSION})")
    return meta


def _check_claims(count: int, file_bytes: int, max_gaussians: int) -> None:
    """Refuse a count over the cap or over what the file's size can hold, before any image is decoded."""
    if count < 0:
        raise ValueError(f"SOG count must be >= 0, got {count}")
    check_gaussian_count(count, "the .sog meta.json", max_gaussians)
    if count * MIN_BYTES_PER_GAUSSIAN > file_bytes:
        raise SceneTooLargeError(f"the .sog meta.json claims {count:,} Gaussians in a {file_bytes:,}-byte file "
                                 f"(at least {MIN_BYTES_PER_GAUSSIAN} bytes each): refused as a decompression bomb")


def _open_image(bundle: zipfile.ZipFile, name: object, count: int) -> Image.Image:
    """Image `name` opened (its header read, nothing decoded) as a WebP, and only a WebP; its size must hold
    `count` pixels in the rows a writer makes (ours and splat-transform's round the rows up to a multiple of 4,
    at least 4) and be no wider than the count."""
    if not isinstance(name, str) or not name.lower().endswith(".webp"):
        raise ValueError(f"SOG image {name!r} is not a .webp member")
    try:
        image = Image.open(io.BytesIO(bundle.read(name)), formats=["WEBP"])
    except Image.DecompressionBombError as error:
        raise SceneTooLargeError(f"SOG image {name}: {error}") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"SOG image {name} is not a WebP image") from None
    width, height = image.size
    rows = max(4, 4 * math.ceil(max(count, 1) / (4 * max(width, 1))))
    if width * height < count or height > rows or width > max(count, 1) + 3:
        image.close()
        raise ValueError(f"SOG image {name} is {width}x{height} px, not the rows of {count} Gaussians")
    return image


def _pixels(image: Image.Image, count: int) -> np.ndarray:
    """The first `count` pixels of an opened image as (count, 4) uint8 RGBA (then it is closed)."""
    with image:
        pixels = np.asarray(image.convert("RGBA"), dtype=np.uint8).reshape(-1, 4)
    if pixels.shape[0] < count:
        raise ValueError(f"SOG image has {pixels.shape[0]} pixels, fewer than count {count}")
    return pixels[:count]


def decode_sog(data: bytes | bytearray | memoryview, *, f_px: float | None = None, image_width: int | None = None,
               image_height: int | None = None, max_gaussians: int = MAX_GAUSSIANS) -> GaussianScene:
    """Read a bundled ``.sog`` (version 2) back into a scene (OpenCV axes, as stored).

    Positions from the 16-bit codes and log ranges, rotations from the smallest three, scales exp of the
    codebook, colours sRGB -> linear of ``0.5 + SH_C0 * codebook`` (not clipped), opacities alpha / 255.
    Higher SH bands, if any, are ignored. The camera is our ``sharp`` field when present, unless given.

    Raises:
        SceneTooLargeError: more than `max_gaussians`, a claim the file's size cannot hold (see `_check_claims`),
            a meta.json over `MAX_META_BYTES`, members that inflate past `MAX_DEFLATE_RATIO`.
        ValueError: not a zip, no or bad ``meta.json`` (wrong types, too deep), another version, a missing,
            short or non-WebP image, an encrypted member or an unknown compression method.
    """
    try:
        bundle = zipfile.ZipFile(io.BytesIO(bytes(data)))
        _check_inflation(bundle, len(data))
        meta = _read_meta(bundle)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"not a bundled SOG (a zip with meta.json): {error}") from error
    except (RuntimeError, NotImplementedError) as error:  # an encrypted member, an unknown compression method
        raise ValueError(f"unreadable SOG bundle: {error}") from None
    try:
        count = meta["count"]
        if isinstance(count, bool) or not isinstance(count, (int, float)):
            raise TypeError(f"count must be a number, got {type(count).__name__}")
        count = int(count)
        _check_claims(count, len(data), max_gaussians)
        mins, maxs = (np.asarray(meta["means"][key], dtype=np.float64).reshape(3) for key in ("mins", "maxs"))
        scale_codebook = np.asarray(meta["scales"]["codebook"], dtype=np.float64)
        color_codebook = np.asarray(meta["sh0"]["codebook"], dtype=np.float64)
        if scale_codebook.shape != (CODEBOOK_SIZE,) or color_codebook.shape != (CODEBOOK_SIZE,):
            raise ValueError("SOG codebooks must hold 256 numbers each")
        # Every image's header (WebP only) against the count before any is decoded.
        images = [_open_image(bundle, meta[key]["files"][index], count) for key, index in IMAGE_KEYS]
        means_l, means_u, quats, scales, sh0 = (_pixels(image, count) for image in images)
    except (KeyError, IndexError, TypeError, OverflowError, OSError, zipfile.BadZipFile, RuntimeError,
            NotImplementedError) as error:
        raise ValueError(f"bad SOG bundle: {error!r}") from error
    means = [means_l, means_u]
    codes = means[0][:, :3].astype(np.float64) + 256.0 * means[1][:, :3]
    span = np.where(maxs - mins != 0, maxs - mins, 1.0)
    positions = inverse_log_transform(mins + span * (codes / 65535.0))
    camera = meta.get("sharp") if isinstance(meta.get("sharp"), dict) else {}
    return GaussianScene(
        positions=positions.astype(np.float32),
        scales=np.exp(scale_codebook[scales[:, :3]]).astype(np.float32),
        rotations=unpack_quaternions(quats),
        colors=srgb_to_linear(0.5 + SH_C0 * color_codebook[sh0[:, :3]]),
        opacities=(sh0[:, 3].astype(np.float32) / np.float32(255)),
        f_px=float(f_px if f_px is not None else camera.get("f_px", 0.0)),
        image_width=int(image_width if image_width is not None else camera.get("image_width", 0)),
        image_height=int(image_height if image_height is not None else camera.get("image_height", 0)),
    )

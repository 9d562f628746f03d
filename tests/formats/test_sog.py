"""Our SOG: the bundle's layout and meta.json, Morton order, our reader, and splat-transform (PlayCanvas's own
tool, pinned in web/package-lock.json) reading it back to a PLY that matches our PLY within the quantisation.

Tolerances, from the format's steps (module docstring of `app.formats.sog`):
- positions: in the log domain n = sign(p) ln(1 + |p|), half a 16-bit step, (max - min) / 65535 / 2 per axis;
- opacity: half a byte step, 0.5 / 255;
- log scales and colour SH coefficients: the stored codebook entry is the nearest of the 256 to the value
  (checked exactly: no entry is closer);
- rotations: the three kept components within half a step sqrt(2) / 255 / 2 = 0.0028; the dropped (largest,
  >= 1/2) one, rebuilt from them, moves by at most |c| / d <= sqrt(2) per unit of each, so every component is
  within 3 * sqrt(2) * 0.0028 = 0.012 (before normalising, which only shrinks the error).
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.formats.ply import encode_ply, read_ply
from app.formats.sog import (
    encode_sog,
    image_size,
    kmeans_1d,
    log_transform,
    morton_order,
    quantize_positions,
)
from app.formats.sog_reader import decode_sog
from app.gaussians import SH_C0, GaussianScene, linear_to_srgb
from app.outputs import FORMATS
from app.render import load_scene
from tests.helpers import random_scene

REPO = Path(__file__).resolve().parents[2]
SPLAT_TRANSFORM = REPO / "web" / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
QUAT_TOLERANCE = 3 * math.sqrt(2) * (math.sqrt(2) / 255 / 2)
WEBP_FILES = {"means_l.webp", "means_u.webp", "scales.webp", "quats.webp", "sh0.webp"}


@pytest.fixture(scope="module")
def sog(tiny_photo_scene: GaussianScene) -> bytes:
    return encode_sog(tiny_photo_scene)


def in_file_order(scene: GaussianScene) -> GaussianScene:
    """`scene` in the order our SOG writes it (Morton order of the quantised positions)."""
    return scene.select(morton_order(quantize_positions(scene.positions)[0]))


def f_dc(scene: GaussianScene) -> np.ndarray:
    return (linear_to_srgb(scene.colors).astype(np.float64) - 0.5) / SH_C0


def assert_nearest_entry(stored: np.ndarray, values: np.ndarray, codebook: np.ndarray) -> None:
    """Every stored value is a codebook entry, and no entry is closer to the original value."""
    best = np.abs(values.reshape(-1, 1) - codebook.reshape(1, -1)).min(axis=1)
    np.testing.assert_array_less(np.abs(stored.reshape(-1) - values.reshape(-1)), best + 1e-5)


def assert_within_quantisation(decoded: GaussianScene, original: GaussianScene, meta: dict) -> None:
    """`decoded` (in file order) against `original` (any order), within the steps in the module docstring."""
    original = in_file_order(original)
    assert decoded.num_gaussians == original.num_gaussians
    half_step = (np.asarray(meta["means"]["maxs"]) - np.asarray(meta["means"]["mins"])) / 65535 / 2
    error = np.abs(log_transform(decoded.positions) - log_transform(original.positions))
    assert (error <= half_step + 1e-6).all(), (error.max(axis=0), half_step)
    np.testing.assert_allclose(decoded.opacities, original.opacities, rtol=0, atol=0.5 / 255 + 1e-6)
    assert_nearest_entry(np.log(decoded.scales), np.log(original.scales), np.asarray(meta["scales"]["codebook"]))
    assert_nearest_entry(f_dc(decoded), f_dc(original), np.asarray(meta["sh0"]["codebook"]))
    q_decoded, q_original = decoded.rotations.astype(np.float64), original.rotations.astype(np.float64)
    q_original /= np.linalg.norm(q_original, axis=1, keepdims=True)
    sign = np.where(np.sum(q_decoded * q_original, axis=1, keepdims=True) < 0, -1.0, 1.0)
    assert np.abs(q_decoded * sign - q_original).max() <= QUAT_TOLERANCE


def test_bundle_layout_and_meta(sog: bytes, tiny_photo_scene: GaussianScene) -> None:
    bundle = zipfile.ZipFile(io.BytesIO(sog))
    assert bundle.testzip() is None
    assert bundle.infolist()[0].filename == "meta.json"
    assert {info.filename for info in bundle.infolist()} == {"meta.json"} | WEBP_FILES
    meta = json.loads(bundle.read("meta.json"))
    n = tiny_photo_scene.num_gaussians
    assert meta["version"] == 2 and meta["count"] == n and meta["antialias"] is False
    assert meta["means"]["files"] == ["means_l.webp", "means_u.webp"]
    assert meta["scales"]["files"] == ["scales.webp"] and meta["quats"]["files"] == ["quats.webp"]
    assert meta["sh0"]["files"] == ["sh0.webp"] and "shN" not in meta
    assert len(meta["means"]["mins"]) == len(meta["means"]["maxs"]) == 3
    assert all(lo < hi for lo, hi in zip(meta["means"]["mins"], meta["means"]["maxs"], strict=True))
    for key in ("scales", "sh0"):
        codebook = meta[key]["codebook"]
        assert len(codebook) == 256 and all(math.isfinite(v) for v in codebook) and codebook == sorted(codebook)
    assert meta["sharp"] == {"f_px": 500.0, "image_width": 600, "image_height": 400}
    sizes = set()
    for name in WEBP_FILES:
        data = bundle.read(name)
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8L"  # lossless
        with Image.open(io.BytesIO(data)) as image:
            sizes.add(image.size)
    (width, height), = sizes
    assert width * height >= n and width & (width - 1) == 0 and height % 4 == 0
    with Image.open(io.BytesIO(bundle.read("quats.webp"))) as image:
        alpha = np.asarray(image.convert("RGBA"))[..., 3].reshape(-1)[:n]
    assert set(np.unique(alpha)) <= {252, 253, 254, 255}
    assert FORMATS["sog"].suffix == ".sog" and FORMATS["sog"].media_type == "application/zip"


def test_gaussians_are_in_morton_order(sog: bytes) -> None:
    bundle = zipfile.ZipFile(io.BytesIO(sog))
    count = json.loads(bundle.read("meta.json"))["count"]
    low, high = (np.asarray(Image.open(io.BytesIO(bundle.read(name))).convert("RGB"), dtype=np.int64)
                 .reshape(-1, 3)[:count] for name in ("means_l.webp", "means_u.webp"))
    codes = low + 256 * high
    key = np.zeros(count, dtype=np.int64)
    for bit in range(16):  # interleave x, y, z bit by bit, x lowest
        for axis in range(3):
            key |= ((codes[:, axis] >> bit) & 1) << (3 * bit + axis)
    assert (np.diff(key) >= 0).all()
    assert len(np.unique(key)) > count // 2  # a real order, not a constant


def test_our_reader_round_trips_within_the_quantisation(sog: bytes, tiny_photo_scene: GaussianScene) -> None:
    decoded = decode_sog(sog)
    assert (decoded.f_px, decoded.image_width, decoded.image_height) == (500.0, 600, 400)
    meta = json.loads(zipfile.ZipFile(io.BytesIO(sog)).read("meta.json"))
    assert_within_quantisation(decoded, tiny_photo_scene, meta)
    assert encode_sog(tiny_photo_scene) == sog  # deterministic bytes
    assert load_scene(sog).num_gaussians == tiny_photo_scene.num_gaussians  # the renderer reads it


@pytest.mark.skipif(shutil.which("node") is None or not SPLAT_TRANSFORM.is_file(),
                    reason="node or web/node_modules (npm ci --prefix web) missing")
def test_splat_transform_reads_our_sog_like_our_ply(sog: bytes, tiny_photo_scene: GaussianScene,
                                                    tmp_path: Path) -> None:
    (tmp_path / "scene.sog").write_bytes(sog)
    (tmp_path / "ours.ply").write_bytes(encode_ply(tiny_photo_scene))
    subprocess.run(["node", str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", str(tmp_path / "scene.sog"),
                    str(tmp_path / "back.ply")], check=True, timeout=600)
    back = read_ply(tmp_path / "back.ply")
    meta = json.loads(zipfile.ZipFile(io.BytesIO(sog)).read("meta.json"))
    assert_within_quantisation(back, read_ply(tmp_path / "ours.ply"), meta)
    ours = decode_sog(sog)  # the same stored values, decoded by our reader
    np.testing.assert_allclose(back.positions, ours.positions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(back.scales, ours.scales, rtol=1e-5)
    np.testing.assert_allclose(back.colors, ours.colors, atol=1e-5)


def test_kmeans_codebook_is_nearest_and_beats_uniform() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(-5, 0.5, (20000, 3)), rng.normal(-2, 1.5, (5000, 3))])  # log scales
    values[:10] = rng.normal(0, 30, (10, 3))  # a few far outliers
    codebook, labels = kmeans_1d(values)
    assert codebook.shape == (256,) and labels.shape == values.shape and labels.dtype == np.uint8
    assert_nearest_entry(codebook[labels].astype(np.float64), values, codebook.astype(np.float64))
    uniform = np.linspace(values.min(), values.max(), 256)
    uniform_error = np.abs(values.reshape(-1, 1) - uniform).min(axis=1)
    assert np.mean((codebook[labels] - values) ** 2) < np.mean(uniform_error ** 2) / 3


@pytest.mark.parametrize("count", [1, 5, 1000, 4099, 32_769])
def test_every_count_round_trips(count: int) -> None:
    """Counts whose rows are not a multiple of 4 (a budget's, e.g. 1,000: 16 x 64 px for 63 rows) read back."""
    scene = random_scene(count, seed=count)
    width, height = image_size(count)
    back = decode_sog(encode_sog(scene))
    assert back.num_gaussians == count and height % 4 == 0 and width * height >= count
    # Morton order reorders them; opacity is quantised monotonically (half a byte step), so sorted they agree.
    assert np.abs(np.sort(back.opacities) - np.sort(scene.opacities)).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("data", [b"not a zip", b"PK\x03\x04broken"])
def test_reader_refuses_what_is_not_a_sog(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a bundled SOG"):
        decode_sog(data)


def test_reader_refuses_other_versions(sog: bytes) -> None:
    source = zipfile.ZipFile(io.BytesIO(sog))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "meta.json":
                data = json.dumps({**json.loads(data), "version": 3}).encode()
            bundle.writestr(info.filename, data)
    with pytest.raises(ValueError, match="SOG version 3 is not supported"):
        decode_sog(buffer.getvalue())


def test_the_morton_order_is_one_stable_sort_of_the_interleaved_codes() -> None:
    """`morton_order`'s 16-bit passes give the order of one stable sort of the 48-bit keys, ties (equal codes,
    here one in two) in their original order."""
    codes = np.random.default_rng(7).integers(0, 1 << 16, size=(50_000, 3), dtype=np.uint16)
    codes[1::2] = codes[::2]
    key = np.zeros(len(codes), dtype=np.int64)
    for bit in range(16):  # x, y, z bit by bit, x lowest
        for axis in range(3):
            key |= ((codes[:, axis].astype(np.int64) >> bit) & 1) << (3 * bit + axis)
    assert np.array_equal(morton_order(codes), np.argsort(key, kind="stable"))

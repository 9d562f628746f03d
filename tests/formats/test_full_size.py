"""Every output format at the real size: one `tiny_full` prediction (1,179,648 Gaussians, the real input size,
synthetic weights) of the conformance photo, shared by the module, written in each format and read back: by our
readers, by plyfile, and our SPZ and SOG by PlayCanvas's splat-transform (pinned in web/package-lock.json).
The coarse level of detail (`app.budget.coarse_level`, the `coarse` output) is made of the same scene and read
back by splat-transform too. Its covariance decomposition is checked against numpy's float64 eigh on all
1,179,648 Gaussians. The SOG checks are tests/formats/test_sog.py's, the nearest codebook entry found by
bisection (not by a table of N x 256 distances).

Sizes are exact where the layout fixes them (PLY, vertex PLY, .splat) and bounded where they depend on the
data (SPZ, SOG: today's sizes on this scene, within 3 %)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from app.budget.coarse import COARSE_BLOCK
from app.formats.json import encode_json
from app.formats.ply import encode_ply, ply_num_bytes, read_ply
from app.formats.sog import encode_sog, kmeans_1d, log_transform
from app.formats.sog_reader import decode_sog
from app.formats.splat import decode_splat, encode_splat
from app.formats.spz import decode_spz, encode_spz
from app.gaussians import GaussianScene
from app.imaging import load_image
from app.jobs.size import file_bytes
from app.model.composer import NetworkGaussians
from app.outputs import encode
from app.predictor import SharpPredictor
from app.predictor.unproject import network_disparity_factor, quaternions_to_matrices, unproject_to_camera
from tests.conformance import DATA_DIR
from tests.formats.test_formats import decode_json_arrays
from tests.formats.test_sog import QUAT_TOLERANCE, f_dc, in_file_order
from tests.helpers import prediction_of
from tests.predictor.test_unproject import assert_decomposes

REPO = Path(__file__).resolve().parents[2]
SPLAT_TRANSFORM = REPO / "web" / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
FULL_N = 1_179_648
F_PX = 500.0
needs_splat_transform = pytest.mark.skipif(shutil.which("node") is None or not SPLAT_TRANSFORM.is_file(),
                                           reason="node or web/node_modules (npm ci --prefix web) missing")


@pytest.fixture(scope="module")
def network_output() -> tuple[NetworkGaussians, int, int]:
    """The tiny_full network's output for the conformance photo at f_px 500, and the photo's width and height."""
    predictor = SharpPredictor.load("tiny_full", device="cpu", progress=False)
    image = load_image(DATA_DIR / "coffee.png")
    factor, depth_scale = network_disparity_factor(F_PX, image.width)
    assert depth_scale == 1.0
    with torch.inference_mode():
        gaussians = predictor.network(predictor.preprocess(image), torch.tensor([factor]))
    return gaussians, image.width, image.height


@pytest.fixture(scope="module")
def scene(network_output: tuple[NetworkGaussians, int, int]) -> GaussianScene:
    gaussians, width, height = network_output
    return unproject_to_camera(gaussians, F_PX, width, height)


def splat_transform(source: Path, target: Path) -> None:
    subprocess.run(["node", str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", str(source), str(target)], check=True,
                   timeout=600)


def test_the_decomposition_matches_float64_eigh_on_every_gaussian(network_output: tuple[NetworkGaussians, int, int],
                                                                  scene: GaussianScene) -> None:
    gaussians, width, height = network_output
    assert scene.num_gaussians == FULL_N
    gain = np.array([width / (2 * F_PX), height / (2 * F_PX), 1.0])
    rotations = quaternions_to_matrices(gaussians.quaternions[0].double()).numpy()
    variances = gaussians.scales[0].double().numpy() ** 2
    covariances = (rotations * variances[:, None, :]) @ rotations.transpose(0, 2, 1) * np.outer(gain, gain)
    assert_decomposes(covariances, torch.from_numpy(scene.rotations), torch.from_numpy(scene.scales))


def test_ply_and_vertex_ply_sizes_and_round_trip(scene: GaussianScene) -> None:
    data = encode_ply(scene)
    assert len(data) == ply_num_bytes(scene) == 663 + len(str(FULL_N)) + 56 * FULL_N + 128 == 66_061_086
    back = read_ply(data)
    for name in ("positions", "rotations"):
        np.testing.assert_array_equal(getattr(back, name), getattr(scene, name))
    np.testing.assert_allclose(back.scales, scene.scales, rtol=1e-6)
    assert len(encode_ply(scene, vertex_only=True)) == ply_num_bytes(scene, vertex_only=True) == 66_060_651


def test_splat_size_and_round_trip(scene: GaussianScene) -> None:
    data = encode_splat(scene)
    assert len(data) == 32 * FULL_N == 37_748_736
    assert decode_splat(data).num_gaussians == FULL_N


def test_json_base64_is_bit_exact(scene: GaussianScene) -> None:
    arrays = decode_json_arrays(encode_json(scene, {}, encoding="base64"))
    for name in ("positions", "scales", "rotations", "opacities"):
        np.testing.assert_array_equal(arrays[name].reshape(getattr(scene, name).shape), getattr(scene, name))
    np.testing.assert_array_equal(arrays["colors"], scene.colors_srgb())  # JSON holds sRGB


@pytest.fixture(scope="module")
def spz(scene: GaussianScene) -> bytes:
    return encode_spz(scene)


def test_spz_size_and_our_reader(spz: bytes, scene: GaussianScene) -> None:
    assert len(spz) <= 19_150_000 * 1.03  # 19,148,551 bytes (0.29 x the PLY) when written
    back = decode_spz(spz)
    assert back.num_gaussians == FULL_N
    np.testing.assert_allclose(back.positions, scene.positions, atol=0.5 / 4096 + 1e-5)
    np.testing.assert_allclose(np.log(back.scales), np.log(scene.scales), atol=1 / 32 + 1e-5)
    np.testing.assert_allclose(back.opacities, scene.opacities, atol=0.5 / 255 + 1e-6)


def read_back_by_splat_transform(data: bytes, suffix: str, tmp_path: Path, count: int = FULL_N) -> GaussianScene:
    """Our full-size file as splat-transform reads it (converted to a PLY), all its `count` Gaussians there."""
    (tmp_path / f"scene{suffix}").write_bytes(data)
    splat_transform(tmp_path / f"scene{suffix}", tmp_path / "back.ply")
    theirs = read_ply(tmp_path / "back.ply")
    assert theirs.num_gaussians == count
    return theirs


@needs_splat_transform
def test_splat_transform_reads_our_full_size_spz(spz: bytes, tmp_path: Path) -> None:
    theirs, ours = read_back_by_splat_transform(spz, ".spz", tmp_path), decode_spz(spz)
    flip = np.array([1, -1, -1], np.float32)  # splat-transform keeps SPZ's RUB axes; our reader turns them back
    np.testing.assert_allclose(theirs.positions * flip, ours.positions, atol=1e-6)
    np.testing.assert_allclose(theirs.scales, ours.scales, rtol=1e-5)
    np.testing.assert_allclose(theirs.opacities, ours.opacities, atol=1e-6)
    np.testing.assert_allclose(theirs.colors, ours.colors, atol=1e-5)
    q_theirs = theirs.rotations / np.linalg.norm(theirs.rotations, axis=1, keepdims=True)
    q_ours = ours.rotations * np.array([1, 1, -1, -1], np.float32)
    same = np.minimum(np.abs(q_theirs - q_ours).max(axis=1), np.abs(q_theirs + q_ours).max(axis=1))
    assert same.max() < 1e-5, same.max()


@needs_splat_transform
def test_the_coarse_level_at_full_size_holds_a_block_in_one_or_two(scene: GaussianScene, tmp_path: Path) -> None:
    # docs/formats.md: 1/64 to 1/32 of the Gaussians (each 8 x 8 block of the grid one Gaussian, or two at a depth
    # edge); its file within the bound the job store projects for it (from the full scene's count).
    coarse = encode(prediction_of(scene), "coarse")
    ours = decode_spz(coarse)
    print(f"coarse level: {ours.num_gaussians:,} of {FULL_N:,} Gaussians, {len(coarse):,} bytes "
          f"({len(coarse) / ours.num_gaussians:.2f} B a coarse Gaussian, {len(coarse) / FULL_N:.2f} B a full one)")
    assert FULL_N // COARSE_BLOCK**2 <= ours.num_gaussians <= 2 * FULL_N // COARSE_BLOCK**2
    assert len(coarse) <= file_bytes("coarse", FULL_N)
    theirs = read_back_by_splat_transform(coarse, ".spz", tmp_path, count=ours.num_gaussians)
    np.testing.assert_allclose(theirs.positions * np.array([1, -1, -1], np.float32), ours.positions, atol=1e-6)
    np.testing.assert_allclose(theirs.opacities, ours.opacities, atol=1e-6)


@pytest.fixture(scope="module")
def sog(scene: GaussianScene) -> bytes:
    return encode_sog(scene)


def test_sog_size_and_our_reader(sog: bytes, scene: GaussianScene) -> None:
    assert len(sog) <= 13_290_000 * 1.03  # 13,283,801 bytes (0.20 x the PLY) when written
    meta = json.loads(zipfile.ZipFile(io.BytesIO(sog)).read("meta.json"))
    assert meta["count"] == FULL_N
    decoded, original = decode_sog(sog), in_file_order(scene)
    half_step = (np.asarray(meta["means"]["maxs"]) - np.asarray(meta["means"]["mins"])) / 65535 / 2
    error = np.abs(log_transform(decoded.positions) - log_transform(original.positions))
    assert (error <= half_step + 1e-6).all(), (error.max(axis=0), half_step)
    np.testing.assert_allclose(decoded.opacities, original.opacities, rtol=0, atol=0.5 / 255 + 1e-6)
    for key, stored, value in (("scales", np.log(decoded.scales), np.log(original.scales)),
                               ("sh0", f_dc(decoded), f_dc(original))):
        codebook = np.asarray(meta[key]["codebook"])
        nearest = codebook[np.searchsorted((codebook[1:] + codebook[:-1]) / 2, value)]
        np.testing.assert_array_less(np.abs(stored - value), np.abs(nearest - value) + 1e-5)  # no entry closer
    q_decoded, q_original = decoded.rotations.astype(np.float64), original.rotations.astype(np.float64)
    q_original /= np.linalg.norm(q_original, axis=1, keepdims=True)
    sign = np.where(np.sum(q_decoded * q_original, axis=1, keepdims=True) < 0, -1.0, 1.0)
    assert np.abs(q_decoded * sign - q_original).max() <= QUAT_TOLERANCE


@needs_splat_transform
def test_splat_transform_reads_our_full_size_sog(sog: bytes, tmp_path: Path) -> None:
    theirs, ours = read_back_by_splat_transform(sog, ".sog", tmp_path), decode_sog(sog)
    np.testing.assert_allclose(theirs.positions, ours.positions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(theirs.scales, ours.scales, rtol=1e-5)
    np.testing.assert_allclose(theirs.colors, ours.colors, atol=1e-5)
    np.testing.assert_allclose(theirs.opacities, ours.opacities, atol=1e-6)


def test_kmeans_labels_are_the_nearest_entry_at_full_size(scene: GaussianScene) -> None:
    """The labels by histogram bin against a brute-force nearest entry, on 3.5 million log scales."""
    values = np.log(scene.scales.astype(np.float64))
    codebook, labels = kmeans_1d(values)
    midpoints = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    np.testing.assert_array_equal(labels.reshape(-1), np.searchsorted(midpoints, values.reshape(-1)))

"""The predictor pipeline at reduced size: focal length handling, unprojection, weights loading."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.devices import select_device
from app.imaging import load_image
from app.model import build_network
from app.predictor import SharpPredictor
from app.predictor.unproject import decompose_covariances, matrices_to_quaternions, quaternions_to_matrices
from app.weights import CheckpointMismatchError, CheckpointNotAvailableError


@pytest.fixture(scope="module")
def tiny() -> SharpPredictor:
    return SharpPredictor.load("tiny", device="cpu")


def jpeg_with_focal(width: int, height: int, focal_35mm: int | None) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if focal_35mm is not None:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm  # FocalLengthIn35mmFilm
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_tiny_predictor_reports_what_it_is(tiny: SharpPredictor) -> None:
    info = tiny.info
    assert (info.preset, info.weights, info.checkpoint, info.device, info.dtype) == (
        "tiny", "synthetic", None, "cpu", "float32")
    assert info.num_gaussians == 131_072 and info.internal_resolution == 512


def test_focal_length_comes_from_request_then_exif_then_default(tiny: SharpPredictor, conformance_dir: Path) -> None:
    exif_image = load_image(jpeg_with_focal(320, 240, 26), name="phone.jpg")
    from_exif = tiny.predict(exif_image)
    assert from_exif.f_px_source == "exif"
    assert from_exif.scene.f_px == pytest.approx(26 * np.hypot(320, 240) / np.hypot(36, 24))

    from_request = tiny.predict(exif_image, f_px=1200.0)
    assert (from_request.f_px_source, from_request.scene.f_px) == ("request", 1200.0)

    timings_ms: dict[str, float] = {}
    coffee = tiny.predict(load_image(conformance_dir / "coffee.png"), timings_ms=timings_ms)
    assert (coffee.f_px_source, coffee.scene.f_px) == ("default", 500.0)
    assert (coffee.scene.image_width, coffee.scene.image_height) == (600, 400)
    assert set(timings_ms) == {"preprocess", "forward", "postprocess"} and all(ms > 0 for ms in timings_ms.values())


def test_unprojection_is_the_pinhole_model(tiny: SharpPredictor, conformance_dir: Path) -> None:
    """X = Z * x_ndc * W / (2 f): the same Gaussians, seen through a longer lens, fan out less."""
    image = load_image(conformance_dir / "coffee.png")
    wide, narrow = tiny.predict(image, f_px=300.0).scene, tiny.predict(image, f_px=900.0).scene
    # Depth scales with f_px / W; lateral offsets X = Z x W / (2f) do not change with f.
    np.testing.assert_allclose(narrow.positions[:, 2], 3 * wide.positions[:, 2], rtol=1e-4)
    np.testing.assert_allclose(narrow.positions[:, :2], wide.positions[:, :2], rtol=1e-3, atol=1e-5)
    # The Gaussian grid covers the image: 2 layers x 256 x 256, row-major, x right and y down.
    grid = wide.positions.reshape(2, 256, 256, 3)
    u = grid[..., 0] / grid[..., 2] * 300.0 + 300.0  # back to pixel columns
    v = grid[..., 1] / grid[..., 2] * 300.0 + 200.0
    assert np.all(np.diff(np.median(u, axis=(0, 1))) > 0) and np.all(np.diff(np.median(v, axis=(0, 2))) > 0)
    assert u.min() > 0 and u.max() < 600 and v.min() > 0 and v.max() < 400


def test_every_image_size_gives_the_same_gaussian_count(tiny: SharpPredictor) -> None:
    for width, height in [(64, 64), (333, 97), (97, 333)]:
        scene = tiny.predict(load_image(jpeg_with_focal(width, height, None))).scene
        assert scene.num_gaussians == 131_072
        assert np.isfinite(scene.positions).all() and (scene.positions[:, 2] > 0).all()
        norms = np.linalg.norm(scene.rotations, axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert np.all(scene.scales[:, 0] >= scene.scales[:, 1]) and np.all(scene.scales[:, 1] >= scene.scales[:, 2])


def test_decomposition_recovers_rotation_and_scales() -> None:
    generator = torch.Generator().manual_seed(0)
    quaternions = torch.nn.functional.normalize(torch.randn(5000, 4, generator=generator, dtype=torch.float64), dim=-1)
    rotations = quaternions_to_matrices(quaternions)
    scales = torch.rand(5000, 3, generator=generator, dtype=torch.float64) + 0.01
    covariances = (rotations * scales[:, None, :] ** 2) @ rotations.transpose(-1, -2)
    got_quaternions, got_scales = decompose_covariances(covariances)
    torch.testing.assert_close(got_scales.double(), scales.sort(dim=-1, descending=True).values, rtol=1e-5, atol=1e-7)
    rebuilt = quaternions_to_matrices(got_quaternions.double())
    rebuilt_cov = (rebuilt * got_scales.double()[:, None, :] ** 2) @ rebuilt.transpose(-1, -2)
    torch.testing.assert_close(rebuilt_cov, covariances, rtol=1e-5, atol=1e-7)
    assert torch.allclose(torch.linalg.det(rebuilt), torch.ones(5000, dtype=torch.float64))
    # Quaternions come out with their largest component positive, as scipy's `as_quat` gives them.
    back = matrices_to_quaternions(rotations)
    largest = back.gather(-1, back.abs().argmax(-1, keepdim=True))
    assert (largest > 0).all()
    torch.testing.assert_close(back.abs(), quaternions.abs())


def test_checkpoint_file_round_trip_and_mismatch(tiny: SharpPredictor, tmp_path: Path, conformance_dir: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.network.state_dict(), path)
    loaded = SharpPredictor.load("tiny", checkpoint=path, device="cpu")
    assert (loaded.info.weights, loaded.info.checkpoint) == ("file", str(path))
    image = load_image(conformance_dir / "coffee.png")
    np.testing.assert_array_equal(loaded.predict(image).scene.positions, tiny.predict(image).scene.positions)

    with pytest.raises(CheckpointMismatchError) as error:
        SharpPredictor.load("sharp", checkpoint=path, device="cpu")
    assert "missing" in str(error.value) and "monodepth_model" in str(error.value)


def test_missing_weights_offline_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotAvailableError) as error:
        SharpPredictor.load("sharp", cache_dir=tmp_path / "cache", offline=True, device="cpu")
    assert "sharp_2572gikvuh.pt" in str(error.value) and str(tmp_path / "cache") in str(error.value)
    with pytest.raises(CheckpointNotAvailableError):
        SharpPredictor.load("sharp", checkpoint=tmp_path / "absent.pt", device="cpu")


def test_device_and_dtype_choices() -> None:
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="float16 is only supported on GPUs"):
        SharpPredictor(build_network("tiny"), weights="synthetic", device="cpu", dtype="float16")


def test_bfloat16_autocast_stays_close_to_float32(tiny: SharpPredictor, conformance_dir: Path) -> None:
    half = SharpPredictor(tiny.network, weights="synthetic", device="cpu", dtype="bfloat16")
    assert half.info.dtype == "bfloat16"
    image = load_image(conformance_dir / "coffee.png")
    reference, reduced = tiny.predict(image).scene, half.predict(image).scene
    assert reduced.positions.dtype == np.float32 and np.isfinite(reduced.positions).all()
    error = np.linalg.norm(reduced.positions - reference.positions) / np.linalg.norm(reference.positions)
    assert 0 < error < 0.05

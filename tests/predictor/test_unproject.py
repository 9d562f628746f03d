"""Unprojection and covariance decomposition at extreme scales (any finite focal length)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging import load_image
from app.predictor import SharpPredictor
from app.predictor.unproject import (
    NETWORK_FACTOR_RANGE,
    decompose_covariances,
    matrices_to_quaternions,
    network_disparity_factor,
    quaternions_to_matrices,
    unproject_to_camera,
)


@pytest.fixture(scope="module")
def tiny() -> SharpPredictor:
    return SharpPredictor.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def photo_png() -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def random_covariances(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(covariances, rotations, scales) in float64, scales in [0.01, 1.01) and anisotropic."""
    generator = torch.Generator().manual_seed(seed)
    quaternions = torch.nn.functional.normalize(torch.randn(count, 4, generator=generator, dtype=torch.float64), dim=-1)
    rotations = quaternions_to_matrices(quaternions)
    scales = torch.rand(count, 3, generator=generator, dtype=torch.float64) + 0.01
    covariances = (rotations * scales[:, None, :] ** 2) @ rotations.transpose(-1, -2)
    return covariances, rotations, scales


def unscaled_decomposition(covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decomposition without any rescaling (what the service did before), for ordinary inputs."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariances.double())
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    reflection = torch.linalg.det(eigenvectors) < 0
    eigenvectors[..., :, 2] = torch.where(reflection[:, None], -eigenvectors[..., :, 2], eigenvectors[..., :, 2])
    return matrices_to_quaternions(eigenvectors).float(), eigenvalues.clamp_min(0).sqrt().float()


@pytest.mark.parametrize("f_px", [1e-30, 1e-6, 1e6, 1e20, 1e30])
def test_absurd_focal_lengths_give_finite_scenes(tiny: SharpPredictor, photo_png: bytes, f_px: float) -> None:
    scene = tiny.predict(load_image(photo_png), f_px=f_px).scene

    assert scene.f_px == f_px
    for name in ("positions", "scales", "rotations", "colors", "opacities"):
        assert np.isfinite(getattr(scene, name)).all(), name
    np.testing.assert_allclose(np.linalg.norm(scene.rotations, axis=1), 1.0, atol=1e-5)
    assert (scene.scales >= 0).all()
    assert (scene.positions[:, 2] > 0).all()


def test_tiny_focal_lengths_are_the_smallest_network_factor_scaled(tiny: SharpPredictor, photo_png: bytes) -> None:
    image = load_image(photo_png)
    low = NETWORK_FACTOR_RANGE[0]
    boundary = tiny.predict(image, f_px=low * image.width).scene
    for f_px in (1e-30, 1e-9):
        scene = tiny.predict(image, f_px=f_px).scene
        ratio = f_px / (low * image.width)
        # Depth is proportional to f; lateral offsets X = Z x W / (2 f) are not.
        np.testing.assert_allclose(scene.positions[:, 2], boundary.positions[:, 2] * ratio, rtol=1e-5)
        np.testing.assert_allclose(scene.positions[:, :2], boundary.positions[:, :2], rtol=1e-5, atol=1e-6)


def test_network_factor_is_untouched_for_real_cameras() -> None:
    for f_px, width in [(500.0, 600), (26 * 4032 / 43.27, 4032), (1e-4 * 64, 64), (1e4 * 64, 64)]:
        factor, depth_scale = network_disparity_factor(f_px, width)
        assert (factor, depth_scale) == (f_px / width, 1.0)
    assert network_disparity_factor(1e-30, 100) == (1e-4, pytest.approx(1e-28))
    assert network_disparity_factor(1e30, 100) == (1e4, pytest.approx(1e24))


def test_ordinary_inputs_decompose_bit_for_bit_as_without_rescaling() -> None:
    covariances, _, _ = random_covariances(20_000)
    for scale in (1e-4, 1.0, 3.7e2):
        matrices = (covariances * scale).float()
        quaternions, scales = decompose_covariances(matrices)
        expected_quaternions, expected_scales = unscaled_decomposition(matrices)
        assert torch.equal(quaternions, expected_quaternions)
        assert torch.equal(scales, expected_scales)


def test_ordinary_unprojection_is_bit_for_bit_the_unscaled_one(tiny: SharpPredictor, photo_png: bytes) -> None:
    image = load_image(photo_png)
    f_px = 70.0
    with torch.inference_mode():
        gaussians = tiny.network(tiny.preprocess(image), torch.tensor([f_px / image.width]))
    scene = unproject_to_camera(gaussians, f_px, image.width, image.height)

    # The unprojection as it was before any rescaling.
    gain = torch.tensor([image.width / (2 * f_px), image.height / (2 * f_px), 1.0], dtype=torch.float32)
    rotations = quaternions_to_matrices(gaussians.quaternions[0].float())
    covariances = (rotations * gaussians.scales[0].float().square()[:, None, :]) @ rotations.transpose(-1, -2)
    quaternions, scales = unscaled_decomposition(covariances * gain[:, None] * gain[None, :])

    np.testing.assert_array_equal(scene.positions, (gaussians.means[0] * gain).numpy())
    np.testing.assert_array_equal(scene.scales, scales.numpy())
    np.testing.assert_array_equal(scene.rotations, quaternions.numpy())


@pytest.mark.parametrize("magnitude", [1e-300, 1e-60, 1e-30, 1.0, 1e30, 1e60, 1e300])
def test_extreme_scale_matrices_are_reconstructed(magnitude: float) -> None:
    covariances, _, scales = random_covariances(2000, seed=1)
    matrices = covariances * magnitude
    if 1e-60 <= magnitude <= 1e60:
        # Within float32's range after the square root: compare the float32 results.
        quaternions, got_scales = decompose_covariances(matrices)
        expected = scales.sort(dim=-1, descending=True).values * magnitude**0.5
        torch.testing.assert_close(got_scales.double(), expected, rtol=1e-5, atol=0)
        rebuilt = quaternions_to_matrices(quaternions.double())
        rebuilt = (rebuilt * got_scales.double()[:, None, :] ** 2) @ rebuilt.transpose(-1, -2)
        relative = torch.linalg.matrix_norm(rebuilt - matrices) / torch.linalg.matrix_norm(matrices)
        assert float(relative.max()) < 1e-5
        np.testing.assert_allclose(torch.linalg.norm(quaternions, dim=-1).numpy(), 1.0, atol=1e-6)
    else:
        # Scales of 1e±150 do not fit float32 (they become inf or 0), but nothing fails and the
        # rotations are still exact: compare with the same matrices at magnitude 1.
        quaternions, _ = decompose_covariances(matrices)
        reference, _ = decompose_covariances(covariances)
        assert torch.equal(quaternions, reference)


def test_float32_matrices_near_the_limits_of_float32() -> None:
    covariances, _, scales = random_covariances(2000, seed=2)
    for magnitude in (1e-36, 1e36):
        matrices = (covariances * magnitude).float()
        assert torch.isfinite(matrices).all()
        quaternions, got_scales = decompose_covariances(matrices)
        assert torch.isfinite(got_scales).all() and torch.isfinite(quaternions).all()
        expected = scales.sort(dim=-1, descending=True).values * magnitude**0.5
        # Rounding the matrices to float32 costs ~1e-7 relative in the entries, 1e-7 / smallest scale² in scale.
        torch.testing.assert_close(got_scales.double(), expected, rtol=2e-3, atol=0)


def test_zero_degenerate_and_slightly_negative_matrices() -> None:
    zero = torch.zeros(1, 3, 3, dtype=torch.float64)
    line = torch.zeros(1, 3, 3, dtype=torch.float64)
    line[0, 2, 2] = 4e-40  # a needle along z, tiny
    negative = torch.diag(torch.tensor([1.0, 1e-3, -1e-18], dtype=torch.float64))[None]
    quaternions, scales = decompose_covariances(torch.cat([zero, line, negative]))

    assert torch.isfinite(quaternions).all() and torch.isfinite(scales).all()
    assert torch.equal(scales[0], torch.zeros(3))
    torch.testing.assert_close(scales[1], torch.tensor([2e-20, 0.0, 0.0]))
    torch.testing.assert_close(scales[2], torch.tensor([1.0, 1e-3 ** 0.5, 0.0]))
    np.testing.assert_allclose(torch.linalg.norm(quaternions, dim=-1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_matrices_are_a_clear_error(bad: float) -> None:
    covariances, _, _ = random_covariances(5)
    covariances[3, 1, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinite entries \(1 of 5 matrices, first at index 3\)"):
        decompose_covariances(covariances)

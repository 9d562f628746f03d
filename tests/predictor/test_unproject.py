"""Unprojection and the closed-form covariance decomposition: against numpy's float64 eigh on random, constructed
(repeated, nearly repeated, rank-deficient, axis-aligned) and predicted covariances, and at extreme scales (any
finite focal length)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app.imaging import load_image
from app.predictor import SharpPredictor
from app.predictor.unproject import (
    CHUNK,
    NETWORK_FACTOR_RANGE,
    decompose_covariances,
    network_disparity_factor,
    quaternions_to_matrices,
    unproject_to_camera,
)
from tests.conformance import DATA_DIR


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


def eigh_reference(covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float64 LAPACK reference: (N, 3) scales descending and (N, 3, 3) eigenvectors (columns, any signs)."""
    eigenvalues, eigenvectors = np.linalg.eigh(covariances)
    return np.sqrt(np.clip(eigenvalues[:, ::-1], 0, None)), eigenvectors[:, :, ::-1]


def rebuilt(quaternions: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """(N, 3, 3) R diag(scales)² Rᵀ in float64 from the decomposition's float32 outputs."""
    rotations = quaternions_to_matrices(quaternions.double())
    return ((rotations * scales.double()[:, None, :] ** 2) @ rotations.transpose(-1, -2)).numpy()


def assert_decomposes(covariances: np.ndarray, quaternions: torch.Tensor, scales: torch.Tensor,
                      tolerance: float = 2e-6) -> None:
    """The decomposition against numpy's float64 eigh: scales within float32 rounding of the largest, the
    covariance rebuilt within `tolerance` of its norm, R proper, the quaternion unit with its largest
    component positive and R₀₀, R₁₁ >= 0; where the eigenvalues are well apart, the same axes as eigh's."""
    want_scales, want_axes = eigh_reference(covariances)
    got_scales = scales.double().numpy()
    largest = want_scales[:, :1]
    assert (np.abs(got_scales - want_scales) <= 1e-6 * largest + 1e-300).all(), np.abs(got_scales - want_scales).max()
    assert (np.diff(got_scales, axis=1) <= 0).all()
    norm = np.linalg.norm(covariances, axis=(1, 2))
    error = np.linalg.norm(rebuilt(quaternions, scales) - covariances, axis=(1, 2))
    assert (error <= tolerance * norm + 1e-300).all(), (error / np.maximum(norm, 1e-300)).max()
    rotations = quaternions_to_matrices(quaternions.double()).numpy()
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(quaternions.numpy(), axis=1), 1.0, atol=1e-6)
    q = quaternions.numpy()
    assert (q.max(axis=1) >= np.abs(q).max(axis=1) - 1e-6).all()  # the largest positive (of ties, one)
    assert (rotations[:, 0, 0] >= -1e-6).all() and (rotations[:, 1, 1] >= -1e-6).all()
    variances = want_scales**2
    gaps = np.minimum(variances[:, :2] - variances[:, 1:], np.inf) / variances[:, :1]
    separated = gaps.min(axis=1) > 1e-3
    alignment = np.abs(np.einsum("nij,nij->nj", rotations, want_axes))[separated]
    assert (alignment > 1 - 1e-6).all(), alignment.min()


@pytest.mark.parametrize("magnitude", [1e-4, 1.0, 3.7e2])
def test_random_covariances_decompose_like_eigh(magnitude: float) -> None:
    covariances, _, _ = random_covariances(20_000)
    matrices = (covariances * magnitude).float()
    quaternions, scales = decompose_covariances(matrices)
    assert quaternions.dtype == scales.dtype == torch.float32
    assert_decomposes(matrices.double().numpy(), quaternions, scales)


def constructed_covariances() -> dict[str, np.ndarray]:
    """Edge cases of the closed form, each (n, 3, 3) float64: repeated and nearly repeated eigenvalues in
    random orientations, axis-aligned ones (the identity rotation and axis permutations), thin and flat ones,
    rank-deficient ones."""
    rng = np.random.default_rng(7)
    axes = quaternions_to_matrices(torch.nn.functional.normalize(
        torch.from_numpy(rng.normal(size=(400, 4))), dim=-1)).numpy()

    def oriented(variances: list[float]) -> np.ndarray:
        return np.einsum("nij,j,nkj->nik", axes, np.asarray(variances, np.float64), axes)

    cases = {
        "sphere": oriented([1.0, 1.0, 1.0]),
        "disc": oriented([1.0, 1.0, 0.01]),
        "needle": oriented([1.0, 1e-4, 1e-4]),
        "near sphere": oriented([1.0 + 1e-9, 1.0, 1.0 - 1e-9]),
        "near disc": oriented([1.0, 1.0 - 1e-12, 0.3]),
        "near needle": oriented([1.0, 2e-6 * (1 + 1e-10), 2e-6]),
        "very flat": oriented([1.0, 0.5, 1e-10]),
        "rank one": oriented([1.0, 0.0, 0.0]),
        "rank two": oriented([1.0, 0.25, 0.0]),
        "diagonal": np.array([np.diag(v) for v in ([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0],
                                                   [1.0, 1.0, 2.0], [2.0, 1.0, 1.0], [5.0, 5.0, 5.0])]),
    }
    cases["sphere"] = np.broadcast_to(np.eye(3) * 0.7, (400, 3, 3)) + cases["sphere"] * 0  # exactly isotropic
    return {name: np.ascontiguousarray(value) for name, value in cases.items()}


@pytest.mark.parametrize("case", list(constructed_covariances()))
def test_constructed_edge_cases_decompose_like_eigh(case: str) -> None:
    covariances = constructed_covariances()[case]
    quaternions, scales = decompose_covariances(torch.from_numpy(covariances))
    assert torch.isfinite(quaternions).all() and torch.isfinite(scales).all()
    assert_decomposes(covariances, quaternions, scales)


def test_axis_aligned_covariances_give_the_identity_or_an_axis_permutation() -> None:
    quaternions, scales = decompose_covariances(torch.diag(torch.tensor([9.0, 4.0, 1.0]))[None])
    torch.testing.assert_close(quaternions, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), rtol=0, atol=1e-7)
    assert torch.equal(scales, torch.tensor([[3.0, 2.0, 1.0]]))
    quaternions, scales = decompose_covariances(torch.diag(torch.tensor([1.0, 4.0, 9.0]))[None])
    assert torch.equal(scales, torch.tensor([[3.0, 2.0, 1.0]]))
    # Columns z, y, -x (or a half turn of it): a quarter turn about y.
    torch.testing.assert_close(quaternions.abs(), torch.tensor([[0.5**0.5, 0.0, 0.5**0.5, 0.0]]), rtol=0, atol=1e-7)


def test_unprojection_matches_a_float64_eigh_reference(predictor: SharpPredictor) -> None:
    image = load_image(DATA_DIR / "coffee.png")
    f_px = 500.0
    with torch.inference_mode():
        gaussians = predictor.network(predictor.preprocess(image), torch.tensor([f_px / image.width]))
    scene = unproject_to_camera(gaussians, f_px, image.width, image.height)

    gain = np.array([image.width / (2 * f_px), image.height / (2 * f_px), 1.0])
    np.testing.assert_array_equal(scene.positions, (gaussians.means[0] * torch.tensor(gain).float()).numpy())
    rotations = quaternions_to_matrices(gaussians.quaternions[0].double()).numpy()
    variances = gaussians.scales[0].double().numpy() ** 2
    covariances = np.einsum("i,nij,nj,nkj,k->nik", gain, rotations, variances, rotations, gain)
    assert_decomposes(covariances, torch.from_numpy(scene.rotations), torch.from_numpy(scene.scales))


def test_the_pieces_do_not_change_the_bytes() -> None:
    covariances, _, _ = random_covariances(3 * CHUNK + 5, seed=4)
    whole = decompose_covariances(covariances)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = decompose_covariances(covariances)
    finally:
        torch.set_num_threads(threads)
    pieces = [decompose_covariances(covariances[start:start + CHUNK]) for start in range(0, len(covariances), CHUNK)]
    for got, single, parts in zip(whole, one_thread, zip(*pieces, strict=True), strict=True):
        assert torch.equal(got, single) and torch.equal(got, torch.cat(parts))


@pytest.mark.parametrize("f_px", [1e-30, 1e-6, 1e6, 1e20, 1e30])
def test_absurd_focal_lengths_give_finite_scenes(predictor: SharpPredictor, photo_png: bytes, f_px: float) -> None:
    scene = predictor.predict(load_image(photo_png), f_px=f_px).scene

    assert scene.f_px == f_px
    for name in ("positions", "scales", "rotations", "colors", "opacities"):
        assert np.isfinite(getattr(scene, name)).all(), name
    np.testing.assert_allclose(np.linalg.norm(scene.rotations, axis=1), 1.0, atol=1e-5)
    assert (scene.scales >= 0).all()
    assert (scene.positions[:, 2] > 0).all()


def test_tiny_focal_lengths_are_the_smallest_network_factor_scaled(predictor: SharpPredictor, photo_png: bytes) -> None:
    image = load_image(photo_png)
    low = NETWORK_FACTOR_RANGE[0]
    boundary = predictor.predict(image, f_px=low * image.width).scene
    for f_px in (1e-30, 1e-9):
        scene = predictor.predict(image, f_px=f_px).scene
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


@pytest.mark.parametrize("magnitude", [1e-300, 1e-60, 1e-30, 1.0, 1e30, 1e60, 1e300])
def test_extreme_scale_matrices_are_reconstructed(magnitude: float) -> None:
    covariances, _, scales = random_covariances(2000, seed=1)
    matrices = covariances * magnitude
    if 1e-60 <= magnitude <= 1e60:
        # Within float32's range after the square root: compare the float32 results.
        quaternions, got_scales = decompose_covariances(matrices)
        expected = scales.sort(dim=-1, descending=True).values * magnitude**0.5
        torch.testing.assert_close(got_scales.double(), expected, rtol=1e-5, atol=0)
        rotations = quaternions_to_matrices(quaternions.double())
        rebuilt_matrices = (rotations * got_scales.double()[:, None, :] ** 2) @ rotations.transpose(-1, -2)
        relative = torch.linalg.matrix_norm(rebuilt_matrices - matrices) / torch.linalg.matrix_norm(matrices)
        assert float(relative.max()) < 1e-5
        np.testing.assert_allclose(torch.linalg.norm(quaternions, dim=-1).numpy(), 1.0, atol=1e-6)
    else:
        # Scales of 1e±150 do not fit float32 (they become inf or 0), but nothing fails and the rotations are
        # still those of the same matrices at magnitude 1 (to float32's rounding, which the eigenvectors are
        # computed in): with magnitude 1's scales they rebuild magnitude 1's matrices.
        quaternions, _ = decompose_covariances(matrices)
        _, reference_scales = decompose_covariances(covariances)
        error = np.linalg.norm(rebuilt(quaternions, reference_scales) - covariances.numpy(), axis=(1, 2))
        assert (error <= 2e-6 * np.linalg.norm(covariances.numpy(), axis=(1, 2))).all()


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

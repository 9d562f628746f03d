"""From the network's normalised camera space to metric OpenCV camera space.

The network places Gaussian i at z * (x_ndc, y_ndc, 1). For a pinhole camera with focal
length f (pixels) and principal point at the image centre, the ray through NDC x has
X / Z = x * W / (2f), so unprojection is the linear map L = diag(W / 2f, H / 2f, 1):
means become L @ mean, covariances L @ Σ @ L^T. The transformed covariances are no longer
axis-aligned in the Gaussians' own frames, so each one is decomposed again into a rotation
and three scales (symmetric eigendecomposition in float64, all Gaussians at once).

Any finite focal length works. Depth, and so every Gaussian's size, is proportional to f, and L to
1 / f, so f = 1e-30 or 1e30 px squares to values far outside float32 (and eigh fails on the
resulting inf/NaN). Each Gaussian's scales and the gains of L are therefore divided by powers of
two before the covariances are formed, and each matrix by a power of four before the
eigendecomposition; the factors are multiplied back into the scales at the end. Scaling by powers of
two is exact, so results for ordinary inputs are bit-for-bit those of the unscaled computation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from app.gaussians import GaussianScene
from app.model.composer import NetworkGaussians

NETWORK_FACTOR_RANGE: tuple[float, float] = (1e-4, 1e4)
"""Disparity factors (f_px / W) the network is run with. Real cameras give about 0.02 to 300 (a 1 mm to
10,000 mm 35 mm-equivalent lens); outside this range a clamped factor is used and the result scaled."""


def quaternions_to_matrices(quaternions: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), any norm -> (..., 3, 3) rotation matrices (Hamilton convention)."""
    w, x, y, z = torch.nn.functional.normalize(quaternions, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def matrices_to_quaternions(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z).

    Shepperd's method: each row is computed from whichever component is largest, which is
    numerically stable and makes that (largest-magnitude) component positive.
    """
    r = rotations
    r00, r01, r02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    r10, r11, r12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    r20, r21, r22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    four_squares = torch.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22,
                                1 - r00 - r11 + r22], dim=-1)  # 4w², 4x², 4y², 4z²
    candidates = torch.stack([
        torch.stack([four_squares[..., 0], r21 - r12, r02 - r20, r10 - r01], dim=-1),
        torch.stack([r21 - r12, four_squares[..., 1], r01 + r10, r02 + r20], dim=-1),
        torch.stack([r02 - r20, r01 + r10, four_squares[..., 2], r12 + r21], dim=-1),
        torch.stack([r10 - r01, r02 + r20, r12 + r21, four_squares[..., 3]], dim=-1),
    ], dim=-2)  # candidate k is 4·q_k·q, valid (non-zero) when q_k is large
    best = four_squares.argmax(dim=-1)
    chosen = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return torch.nn.functional.normalize(chosen, dim=-1)


def decompose_covariances(covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 3) symmetric PSD matrices -> quaternions (N, 4) and scales (N, 3), scales descending.

    Σ = R diag(scales)² Rᵀ with R a proper rotation (det +1). Runs in float64 on the input's
    device (on the CPU for MPS, which has no float64); returns float32 on the input's device.

    Works for any finite input: each matrix is divided by the power of four nearest its largest
    entry before the eigendecomposition (exact, so ordinary inputs give the unscaled results bit
    for bit) and the scales multiplied back by the power of two. An all-zero matrix gives scales 0
    (with an arbitrary, valid rotation); eigenvalues slightly below zero (rounding) give scale 0. Scales
    beyond float32's range (only from float64 input above ~1e76) become inf.

    Raises:
        ValueError: a matrix has a NaN or infinite entry.
    """
    device = covariances.device
    work_device = torch.device("cpu") if device.type == "mps" else device
    matrices = covariances.to(work_device, torch.float64)
    finite = torch.isfinite(matrices).all(dim=(-2, -1))
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"cannot decompose covariances with NaN or infinite entries ({bad} of {len(finite)} matrices, "
            f"first at index {first})"
        )
    # Largest entry = mantissa * 2**exponent with mantissa in [0.5, 1) (exponent 0 for a zero matrix);
    # dividing by 4**half puts it in [0.25, 1).
    _, exponent = torch.frexp(matrices.abs().amax(dim=(-2, -1)))
    half = torch.div(exponent + 1, 2, rounding_mode="floor").to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(_times_pow2(matrices, -2 * half[:, None, None]))  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    reflection = torch.linalg.det(eigenvectors) < 0
    eigenvectors[..., :, 2] = torch.where(reflection[:, None], -eigenvectors[..., :, 2], eigenvectors[..., :, 2])
    quaternions = matrices_to_quaternions(eigenvectors)
    scales = _times_pow2(eigenvalues.clamp_min(0).sqrt(), half[:, None])
    return quaternions.to(device, torch.float32), scales.to(device, torch.float32)


def _times_pow2(values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """values * 2**exponents for finite integral `exponents` (broadcast); exact unless the result under- or overflows.

    Applied in steps of at most 2**±60, so that no factor overflows the values' dtype (float32 included)
    even where the exponent is outside its range; every intermediate lies between the input and the
    result, so nothing is rounded on the way. Ordinary exponents take one step.
    """
    remaining = exponents.to(values.dtype)
    largest = float(remaining.abs().max()) if remaining.numel() else 0.0
    for _ in range(max(1, math.ceil(largest / 60))):
        step = remaining.clamp(-60, 60)
        values = values * torch.exp2(step)
        remaining = remaining - step
    return values


def network_disparity_factor(f_px: float, image_width: int) -> tuple[float, float]:
    """The disparity factor to run the network with for this focal length, and the depth scale that goes with it.

    The network's input is `f_px / W`, which only sets the scene's absolute scale: its depth is
    proportional to it. Far outside the range of real cameras the network's own arithmetic breaks down
    (f = 1e-30 px gives NaN: its depth normalisation adds 1e-6 to depths of 1e-32), so the factor is
    clamped to `NETWORK_FACTOR_RANGE` and the depth scale `(f_px / W) / factor` (1.0 inside the range)
    restores the scale in `unproject_to_camera`.
    """
    wanted = f_px / image_width
    low, high = NETWORK_FACTOR_RANGE
    factor = min(max(wanted, low), high)
    return factor, (1.0 if factor == wanted else wanted / factor)


def unproject_to_camera(
    gaussians: NetworkGaussians, f_px: float, image_width: int, image_height: int, batch_index: int = 0,
    depth_scale: float = 1.0,
) -> GaussianScene:
    """Map one image's network Gaussians to metric camera space and move them to the CPU.

    Args:
        gaussians: the network output; item `batch_index` is used.
        f_px: focal length of the original image, pixels.
        image_width, image_height: original image size, pixels.
        depth_scale: multiplies every position and scale (see `network_disparity_factor`).
    """
    means = gaussians.means[batch_index].float()
    device = means.device
    gains = (depth_scale * image_width / (2 * f_px), depth_scale * image_height / (2 * f_px), depth_scale)
    axis_gain = torch.tensor(gains, dtype=torch.float32, device=device)

    # Σ' = L R diag(s)² Rᵀ L, formed in float32 from unit-sized factors: each Gaussian's scales
    # divided by 2**scale_exp (its largest scale to [1, 2)), the gains by 2**gain_exp.
    scales = gaussians.scales[batch_index].float()
    largest = scales.amax(dim=-1)
    # Any integer near log2 will do; NaN/inf scales keep exponent 0 and fail in decompose_covariances.
    usable = torch.isfinite(largest) & (largest > 0)
    scale_exp = torch.where(usable, torch.floor(torch.log2(largest)), 0.0)
    unit_scales = _times_pow2(scales, -scale_exp[:, None])
    gain_exp = math.frexp(max(gains))[1]
    unit_gain = torch.tensor([math.ldexp(g, -gain_exp) for g in gains], dtype=torch.float32, device=device)

    rotations = quaternions_to_matrices(gaussians.quaternions[batch_index].float())
    variances = unit_scales.square()
    covariances = (rotations * variances[:, None, :]) @ rotations.transpose(-1, -2)
    covariances = covariances * unit_gain[:, None] * unit_gain[None, :]
    quaternions, unit_out_scales = decompose_covariances(covariances)
    out_scales = _times_pow2(unit_out_scales, (scale_exp + gain_exp)[:, None])

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    return GaussianScene(
        positions=to_numpy(means * axis_gain),
        scales=to_numpy(out_scales),
        rotations=to_numpy(quaternions),
        colors=to_numpy(gaussians.colors[batch_index]),
        opacities=to_numpy(gaussians.opacities[batch_index]),
        f_px=float(f_px),
        image_width=int(image_width),
        image_height=int(image_height),
    )

"""From the network's normalised camera space to metric OpenCV camera space.

The network places Gaussian i at z * (x_ndc, y_ndc, 1). For a pinhole camera with focal
length f (pixels) and principal point at the image centre, the ray through NDC x has
X / Z = x * W / (2f), so unprojection is the linear map L = diag(W / 2f, H / 2f, 1):
means become L @ mean, covariances L @ Σ @ L^T. The transformed covariances are no longer
axis-aligned in the Gaussians' own frames, so each one is decomposed again into a rotation
and three scales: a closed-form symmetric 3x3 eigendecomposition (`symmetric_eigen`), elementwise on the
forward's device (the CPU for MPS, which has no float64), in cache-sized pieces spread over the threads on
the CPU. Float64 where it matters (the covariances, the determinant, the eigenvalues, which give the scales of
thin Gaussians), float32 elsewhere (the eigenvectors, which the float32 quaternions keep). No LAPACK call: a
batched `eigh` of 1.18M matrices took 1.3-1.6 s on 2 cores.

Any finite focal length works. Depth, and so every Gaussian's size, is proportional to f, and L to
1 / f, so f = 1e-30 or 1e30 px gives covariances far outside float32's range; they are formed in float64,
which holds them (float32 scales squared times these gains squared stay within 1e±200), and each matrix is
divided by the power of four nearest its largest entry before the eigendecomposition, the factor multiplied
back into the scales at the end. Scaling by powers of two is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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


def covariance_entries(quaternions: torch.Tensor, scales: torch.Tensor, gains: tuple[float, float, float]
                       ) -> torch.Tensor:
    """The six entries of L R diag(scales)² Rᵀ L, L = diag(gains), in float64.

    R comes from the quaternion in float32: D = L R diag(scales) then differs from the exact one by float32
    rounding of |D| (about 1e-7 of the largest scale), which moves each singular value of D, i.e. each scale,
    by no more than that (Weyl), however thin the Gaussian; Σ = D Dᵀ itself is summed in float64 (the products
    of float32 rotation entries and float64 scale-gains), so that its smallest eigenvalues stay exact to that
    degree and any focal length fits (float32 would over- or underflow).

    Args:
        quaternions: (n, 4) (w, x, y, z), any norm.
        scales: (n, 3) standard deviations along the rotated axes.
        gains: the diagonal of L.

    Returns:
        (6, n) float64: Σ₀₀, Σ₁₁, Σ₂₂, Σ₀₁, Σ₀₂, Σ₁₂ (the order of `symmetric_eigen`).
    """
    q = quaternions.to(torch.float32).T.contiguous()
    w, x, y, z = q * torch.rsqrt((q * q).sum(dim=0))
    rotation = ((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
                (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
                (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)))
    s = scales.to(torch.float64).T.contiguous()
    # Row i of L R diag(scales): Σ = D Dᵀ.
    d = [[rotation[i][k] * (s[k] * gains[i]) for k in range(3)] for i in range(3)]
    return torch.stack([
        d[i][0] * d[j][0] + d[i][1] * d[j][1] + d[i][2] * d[j][2]
        for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    ])


def decompose_covariances(covariances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 3) symmetric PSD matrices -> quaternions (N, 4) and scales (N, 3), scales descending.

    Σ = R diag(scales)² Rᵀ with R a proper rotation (det +1), by `symmetric_eigen` on the input's device (on
    the CPU for MPS; the eigenvalues in float64, the eigenvectors in float32); returns float32 there.

    Works for any finite input: each matrix is divided by the power of four nearest its largest
    entry first (exact) and the scales multiplied back by the power of two. An all-zero matrix gives scales 0
    (with the identity rotation); eigenvalues slightly below zero (rounding) give scale 0. Scales
    beyond float32's range (only from float64 input above ~1e76) become inf.

    Raises:
        ValueError: a matrix has a NaN or infinite entry.
    """
    device = covariances.device
    matrices = covariances.to(work_device(device), torch.float64).flatten(1)  # (N, 9)
    _check_finite(matrices)
    upper = matrices[:, [0, 4, 8, 1, 2, 5]]  # the six entries of `symmetric_eigen`
    quaternions, scales = _in_chunks(lambda rows: _decompose_entries(rows.T.contiguous()), upper)
    return quaternions.to(device), scales.to(device)


def _decompose_entries(entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(6, n) float64 finite symmetric matrices (`symmetric_eigen`'s order) -> float32 quaternions (n, 4) and
    scales (n, 3): each matrix divided by the power of four that brings its largest entry to [0.25, 1) for
    `symmetric_eigen` (exact), the scales multiplied back by the power of two."""
    # Largest entry = mantissa * 2**exponent with mantissa in [0.5, 1) (exponent 0 for a zero matrix).
    _, exponent = torch.frexp(entries.abs().amax(dim=0))
    half = torch.div(exponent + 1, 2, rounding_mode="floor").to(torch.float64)
    quaternions, eigenvalues = symmetric_eigen(_times_pow2(entries, -2 * half))
    return quaternions.float(), _times_pow2(eigenvalues.clamp_min(0).sqrt(), half[:, None]).float()


def _check_finite(rows: torch.Tensor) -> None:
    """Raise ValueError naming how many of the (N, C) `rows` (matrices, Gaussians) hold a NaN or infinite value."""
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"cannot decompose covariances with NaN or infinite entries ({bad} of {len(finite)} matrices, "
            f"first at index {first})"
        )


def work_device(device: torch.device) -> torch.device:
    """Where the decomposition runs for a forward on `device`: there, or on the CPU for MPS (no float64)."""
    return torch.device("cpu") if device.type == "mps" else device


CHUNK = 32_768
"""Gaussians per piece of the decomposition on the CPU: each of its ~400 elementwise operations then works on
arrays that stay in the caches (at the full 1.18M, each would stream 9 MB through memory), on one thread
(torch splits elementwise work only above 32,768 elements), the pieces spread over the intra-op threads.
The pieces are the same whatever the thread count, so the bytes are too."""


def _in_chunks(function: Callable[..., tuple[torch.Tensor, ...]], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`function` of row blocks of the (N, ...) `inputs`: in `CHUNK`-row pieces on threads on the CPU, whole on
    another device; its (n, ...) results concatenated."""
    count = inputs[0].shape[0]
    if inputs[0].device.type != "cpu" or count <= CHUNK:
        return function(*inputs)
    pieces = [[tensor[start:start + CHUNK] for tensor in inputs] for start in range(0, count, CHUNK)]
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        results = list(pool.map(lambda piece: function(*piece), pieces))
    return tuple(torch.cat(parts) for parts in zip(*results, strict=True))


Vector = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""A 3-vector per Gaussian: three (n,) tensors."""


def _cross(a: Vector, b: Vector) -> Vector:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _combine(ca: torch.Tensor, a: Vector, cb: torch.Tensor, b: Vector) -> Vector:
    return (ca * a[0] + cb * b[0], ca * a[1] + cb * b[1], ca * a[2] + cb * b[2])


def symmetric_eigen(entries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form eigendecomposition of symmetric 3x3 matrices, elementwise over n of them.

    Eigenvalues first by the trigonometric formula (Smith 1961): with q = tr(A) / 3, p² = |A - qI|²_F / 6 and
    r = det((A - qI) / p) / 2, they are q + 2p cos(acos(r) / 3 + 2πk / 3), k = 0, 2, 1 in descending order.
    Eigenvectors: of the eigenvalue further from the middle one, the largest cross product of two rows of
    A - λI (its gap is at least half the spread); of the other two, the 2x2 symmetric problem in the plane
    orthogonal to it (an orthonormal basis of the plane after Duff et al. 2017, then the Jacobi angle
    ½ atan2(β, (α - γ) / 2)), exact in form, so repeated eigenvalues (discs, needles, spheres) give an
    orthonormal basis like any other. The eigenvalues returned are then the Rayleigh quotient of the first vector
    and the 2x2's, to a few ulps of |A| like a LAPACK solver's (the formula's are off by up to ~sqrt(ulp) * p
    in a nearly repeated pair, where acos is steep). The columns come out right-handed, their signs chosen so
    that R₀₀ >= 0 and R₁₁ >= 0 (of the four rotations that differ by a half turn about an axis, the one
    nearest the identity: neighbours get similar quaternions, which the compressed formats like), and the
    quaternion by Shepperd's method, its largest component positive.

    Precision: q, p and r in float64; from there the eigenvectors in float32: one is off by about float32's
    rounding of |A| over its eigenvalue's gap, ~1e-7 rad (the float32 quaternion's own rounding) for well
    separated eigenvalues, more for a nearly repeated pair, which rebuilds Σ as well whatever its basis
    (tests/predictor/test_unproject.py). The returned eigenvalues are float64 Rayleigh quotients of those
    vectors: their rounding moves them by a relative ~1e-7 plus ~1e-14 |A|, so that the scale of a thin
    Gaussian's short axis stays right to ~1e-7 of its long one.

    Args:
        entries: (6, n) a₀₀, a₁₁, a₂₂, a₀₁, a₀₂, a₁₂ of finite symmetric matrices (float64), scaled to
            magnitudes near 1 (`_decompose_entries`).

    Returns:
        quaternions (n, 4) unit (w, x, y, z) float32, and eigenvalues (n, 3) descending (may be slightly
        negative for a PSD matrix: rounding) float64.
    """
    a00, a11, a22, a01, a02, a12 = entries.unbind(0)
    q = (a00 + a11 + a22) / 3
    d00, d11, d22 = a00 - q, a11 - q, a22 - q
    off = a01 * a01 + a02 * a02 + a12 * a12
    p = torch.sqrt((d00 * d00 + d11 * d11 + d22 * d22 + 2 * off) / 6)
    determinant = d00 * (d11 * d22 - a12 * a12) - a01 * (a01 * d22 - a12 * a02) + a02 * (a01 * a12 - d11 * a02)
    spread = p > 0
    r = torch.where(spread, determinant / torch.where(spread, 2 * p * p * p, 1.0), 0.0).clamp(-1.0, 1.0)
    # From here, what picks the eigenvectors is float32 (they are only needed to float32's precision): the
    # trigonometric eigenvalues too, whose float32 rounding of |A| is that of A's entries below.
    angle = torch.acos(r.float()) / 3
    q32, two_p = q.float(), 2 * p.float()
    largest = q32 + two_p * torch.cos(angle)
    smallest = q32 + two_p * torch.cos(angle + 2 * math.pi / 3)
    middle = q32 + two_p * torch.cos(angle - 2 * math.pi / 3)

    # The eigenvector of the eigenvalue further from the middle one (λ₀ or λ₂): its rows' best cross product.
    first_isolated = largest - middle >= middle - smallest
    isolated = torch.where(first_isolated, largest, smallest)
    b00, b11, b22, b01, b02, b12 = entries.float().unbind(0)
    rows = ((b00 - isolated, b01, b02), (b01, b11 - isolated, b12), (b02, b12, b22 - isolated))
    candidates = [_cross(rows[0], rows[1]), _cross(rows[0], rows[2]), _cross(rows[1], rows[2])]
    norms = [_dot(c, c) for c in candidates]
    best, best_norm = candidates[0], norms[0]
    for candidate, norm in zip(candidates[1:], norms[1:], strict=True):
        better = norm > best_norm
        best = tuple(torch.where(better, x, y) for x, y in zip(candidate, best, strict=True))
        best_norm = torch.where(better, norm, best_norm)
    found = best_norm > 0
    inverse = torch.where(found, torch.rsqrt(torch.where(found, best_norm, 1.0)), 0.0)
    n0, n1 = best[0] * inverse, best[1] * inverse
    n2 = torch.where(found, best[2] * inverse, 1.0)  # A - λI = 0 (A = λI): any axis; z
    # Once more: a cross product of rows near zero (a nearly isotropic A) has a subnormal float32 norm, whose
    # rsqrt leaves n off unit length; n itself is normal, so a second pass makes it unit.
    inverse = torch.rsqrt(n0 * n0 + n1 * n1 + n2 * n2)
    n0, n1, n2 = n0 * inverse, n1 * inverse, n2 * inverse

    # An orthonormal basis (u, w) of the plane orthogonal to n with u x w = n (Duff et al. 2017), and the 2x2
    # problem there in float64: [[α, β], [β, γ]] = [u w]ᵀ A [u w].
    sign = torch.copysign(torch.ones_like(n2), n2)
    k = -1 / (sign + n2)
    b = n0 * n1 * k
    u = (1 + sign * n0 * n0 * k, sign * b, -sign * n0)
    w = (b, sign + n1 * n1 * k, -n1)
    u64, w64 = tuple(x.double() for x in u), tuple(x.double() for x in w)
    au = (a00 * u64[0] + a01 * u64[1] + a02 * u64[2], a01 * u64[0] + a11 * u64[1] + a12 * u64[2],
          a02 * u64[0] + a12 * u64[1] + a22 * u64[2])
    aw = (a00 * w64[0] + a01 * w64[1] + a02 * w64[2], a01 * w64[0] + a11 * w64[1] + a12 * w64[2],
          a02 * w64[0] + a12 * w64[1] + a22 * w64[2])
    alpha, beta, gamma = _dot(u64, au), _dot(u64, aw), _dot(w64, aw)
    half_difference = (alpha - gamma) / 2
    theta = (torch.atan2(beta, half_difference) / 2).float()
    cos, sin = torch.cos(theta), torch.sin(theta)
    upper = _combine(cos, u, sin, w)  # the larger eigenvalue of the two
    lower = _combine(-sin, u, cos, w)  # upper x lower = n
    n = (n0, n1, n2)
    # (n, upper, lower) and (upper, lower, n) are both right-handed.
    v0 = tuple(torch.where(first_isolated, x, y) for x, y in zip(n, upper, strict=True))
    v1 = tuple(torch.where(first_isolated, x, y) for x, y in zip(upper, lower, strict=True))
    v2 = tuple(torch.where(first_isolated, x, y) for x, y in zip(lower, n, strict=True))

    # Columns' signs: R₀₀ >= 0 and R₁₁ >= 0 (flipping two columns keeps the rotation proper).
    flip02 = torch.copysign(torch.ones_like(n2), v0[0])
    v0, v2 = tuple(x * flip02 for x in v0), tuple(x * flip02 for x in v2)
    flip12 = torch.copysign(torch.ones_like(n2), v1[1])
    v1, v2 = tuple(x * flip12 for x in v1), tuple(x * flip12 for x in v2)
    quaternions = _rotation_to_quaternion((v0, v1, v2))

    # The eigenvalues again in float64, to ulps of |A| (the formula above has errors up to ~sqrt(ulp) * p in the
    # two eigenvalues of a nearly repeated pair, where acos is steep): the Rayleigh quotient nᵀAn, and the 2x2's.
    # Vectors off by float32 rounding move them by a relative ~1e-7 (a congruence) plus the square of their
    # tilt times |A|, so that the smallest stay right however thin the Gaussian.
    m0, m1, m2 = n0.double(), n1.double(), n2.double()
    n_a_n = m0 * (a00 * m0 + a01 * m1 + a02 * m2) + m1 * (a01 * m0 + a11 * m1 + a12 * m2) + m2 * (
        a02 * m0 + a12 * m1 + a22 * m2)
    mean, radius = (alpha + gamma) / 2, torch.hypot(half_difference, beta)
    first = torch.where(first_isolated, n_a_n, mean + radius)
    second = torch.minimum(torch.where(first_isolated, mean + radius, mean - radius), first)
    third = torch.minimum(torch.where(first_isolated, mean - radius, n_a_n), second)
    return quaternions, torch.stack([first, second, third], dim=-1)


def _rotation_to_quaternion(columns: tuple[Vector, Vector, Vector]) -> torch.Tensor:
    """Rotation matrices given by their columns (elementwise) -> (n, 4) unit quaternions (w, x, y, z), by
    Shepperd's method as `matrices_to_quaternions` (the candidate of the largest 4·q_k², the first of equals)."""
    (r00, r10, r20), (r01, r11, r21), (r02, r12, r22) = columns
    four_squares = (1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22)
    d21, d02, d10 = r21 - r12, r02 - r20, r10 - r01
    s01, s02, s12 = r01 + r10, r02 + r20, r12 + r21
    candidates = ((four_squares[0], d21, d02, d10), (d21, four_squares[1], s01, s02),
                  (d02, s01, four_squares[2], s12), (d10, s02, s12, four_squares[3]))  # candidate k is 4·q_k·q
    chosen, best = candidates[0], four_squares[0]
    for square, candidate in zip(four_squares[1:], candidates[1:], strict=True):
        better = square > best
        chosen = tuple(torch.where(better, x, y) for x, y in zip(candidate, chosen, strict=True))
        best = torch.maximum(square, best)
    inverse = torch.rsqrt(chosen[0] * chosen[0] + chosen[1] * chosen[1] + chosen[2] * chosen[2] + chosen[3] * chosen[3])
    return torch.stack([component * inverse for component in chosen], dim=-1)


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

    work = work_device(device)
    quaternions = gaussians.quaternions[batch_index].to(work, torch.float32)
    scales = gaussians.scales[batch_index].to(work, torch.float32)
    _check_finite(torch.cat([quaternions, scales], dim=-1))
    quaternions, scales = _in_chunks(lambda q, s: _decompose_entries(covariance_entries(q, s, gains)),
                                     quaternions, scales)

    def to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    return GaussianScene(
        positions=to_numpy(means * axis_gain),
        scales=to_numpy(scales),
        rotations=to_numpy(quaternions),
        colors=to_numpy(gaussians.colors[batch_index]),
        opacities=to_numpy(gaussians.opacities[batch_index]),
        f_px=float(f_px),
        image_width=int(image_width),
        image_height=int(image_height),
    )

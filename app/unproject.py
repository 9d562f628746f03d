"""From the network's normalised camera space to metric OpenCV camera space.

The network places Gaussian i at z * (x_ndc, y_ndc, 1). For a pinhole camera with focal
length f (pixels) and principal point at the image centre, the ray through NDC x has
X / Z = x * W / (2f), so unprojection is the linear map L = diag(W / 2f, H / 2f, 1):
means become L @ mean, covariances L @ Σ @ L^T. The transformed covariances are no longer
axis-aligned in the Gaussians' own frames, so each one is decomposed again into a rotation
and three scales (symmetric eigendecomposition in float64, all Gaussians at once).
"""

from __future__ import annotations

import numpy as np
import torch

from app.gaussians import GaussianScene
from app.model.composer import NetworkGaussians


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
    """
    device = covariances.device
    work_device = torch.device("cpu") if device.type == "mps" else device
    matrices = covariances.to(work_device, torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh(matrices)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
    reflection = torch.linalg.det(eigenvectors) < 0
    eigenvectors[..., :, 2] = torch.where(reflection[:, None], -eigenvectors[..., :, 2], eigenvectors[..., :, 2])
    quaternions = matrices_to_quaternions(eigenvectors)
    scales = eigenvalues.clamp_min(0).sqrt()
    return quaternions.to(device, torch.float32), scales.to(device, torch.float32)


def unproject_to_camera(
    gaussians: NetworkGaussians, f_px: float, image_width: int, image_height: int, batch_index: int = 0
) -> GaussianScene:
    """Map one image's network Gaussians to metric camera space and move them to the CPU.

    Args:
        gaussians: the network output; item `batch_index` is used.
        f_px: focal length of the original image, pixels.
        image_width, image_height: original image size, pixels.
    """
    means = gaussians.means[batch_index].float()
    device = means.device
    axis_gain = torch.tensor([image_width / (2 * f_px), image_height / (2 * f_px), 1.0],
                             dtype=torch.float32, device=device)
    rotations = quaternions_to_matrices(gaussians.quaternions[batch_index].float())
    variances = gaussians.scales[batch_index].float().square()
    covariances = (rotations * variances[:, None, :]) @ rotations.transpose(-1, -2)
    covariances = covariances * axis_gain[:, None] * axis_gain[None, :]
    quaternions, scales = decompose_covariances(covariances)

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

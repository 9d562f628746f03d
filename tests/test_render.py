"""The Gaussian-splat renderer: against an independent per-pixel reference, a photo, orientation, paths,
encoders, scene loading, the CLI and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.gaussians import GaussianScene, srgb_to_linear
from app.render import Camera, input_camera, look_at, render


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


# ----------------------------------------------------------------------------------------------------------------
# Independent reference: the 3DGS image formation written out per Gaussian, float64, numpy.


def reference_render(scene: GaussianScene, camera: Camera, background=(0.0, 0.0, 0.0)):
    """(colour (H, W, 3), accumulated depth Σ w z (H, W), alpha (H, W)), float64."""
    w, x, y, z = (np.asarray(scene.rotations, np.float64) / np.linalg.norm(scene.rotations, axis=1)[:, None]).T
    rot = np.empty((scene.num_gaussians, 3, 3))
    rot[:, 0] = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], 1)
    rot[:, 1] = np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], 1)
    rot[:, 2] = np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1)
    colors = np.clip(scene.colors_srgb().astype(np.float64), 0, 1)
    pix_x, pix_y = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    color = np.zeros((camera.height, camera.width, 3))
    depth = np.zeros((camera.height, camera.width))
    transmittance = np.ones((camera.height, camera.width))
    done = np.zeros((camera.height, camera.width), dtype=bool)
    cam = scene.positions.astype(np.float64) @ camera.rotation.T + camera.translation
    for i in np.argsort(cam[:, 2], kind="stable"):
        px, py, pz = cam[i]
        if pz <= 0.01:
            continue
        sigma = rot[i] @ np.diag(scene.scales[i].astype(np.float64) ** 2) @ rot[i].T
        lim_x = ((camera.cx + 0.3 * camera.width) / camera.fx, (1.3 * camera.width - camera.cx) / camera.fx)
        lim_y = ((camera.cy + 0.3 * camera.height) / camera.fy, (1.3 * camera.height - camera.cy) / camera.fy)
        tx = min(max(px / pz, -lim_x[0]), lim_x[1]) * pz
        ty = min(max(py / pz, -lim_y[0]), lim_y[1]) * pz
        jac = np.array([[camera.fx / pz, 0, -camera.fx * tx / pz**2], [0, camera.fy / pz, -camera.fy * ty / pz**2]])
        cov = jac @ camera.rotation @ sigma @ camera.rotation.T @ jac.T + 0.3 * np.eye(2)
        conic = np.linalg.inv(cov)
        dx = pix_x - (camera.fx * px / pz + camera.cx)
        dy = pix_y - (camera.fy * py / pz + camera.cy)
        power = -0.5 * (conic[0, 0] * dx * dx + 2 * conic[0, 1] * dx * dy + conic[1, 1] * dy * dy)
        alpha = np.minimum(0.99, scene.opacities[i] * np.exp(power))
        use = (alpha >= 1 / 255) & ~done
        after = transmittance * (1 - alpha)
        done |= use & (after < 1e-4)
        use &= after >= 1e-4
        weight = np.where(use, alpha * transmittance, 0.0)
        color += weight[..., None] * colors[i]
        depth += weight * pz
        transmittance = np.where(use, after, transmittance)
    color += transmittance[..., None] * np.asarray(background)
    return color, depth, 1 - transmittance


def random_scene(rng: np.random.Generator, n: int, f_px: float = 30.0, width: int = 32, height: int = 24):
    z = rng.permutation(np.linspace(0.8, 5.0, n)) + rng.uniform(0, 1e-3, n)  # distinct depths
    positions = np.stack([rng.uniform(-0.7, 0.7, n) * z * width / (2 * f_px),
                          rng.uniform(-0.7, 0.7, n) * z * height / (2 * f_px), z], 1)
    positions[0, 2] = -1.0  # behind the camera
    positions[1, 2] = 0.005  # in front of the camera, inside the near plane
    positions[2, 0] = 50.0  # far off-screen
    q = rng.normal(size=(n, 4))
    return GaussianScene(
        positions=positions.astype(np.float32),
        scales=np.exp(rng.uniform(np.log(0.01), np.log(0.4), (n, 3))).astype(np.float32),
        rotations=(q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        colors=srgb_to_linear(rng.uniform(0, 1, (n, 3))),
        opacities=rng.uniform(0.05, 1.0, n).astype(np.float32),
        f_px=f_px, image_width=width, image_height=height,
    )


@pytest.mark.parametrize("seed", range(6))
def test_matches_per_pixel_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, int(rng.integers(20, 61)))
    camera = input_camera(scene)
    if seed % 2:  # another viewpoint: eye moved and rotated to look at the scene's middle
        camera = camera.with_pose(*look_at(np.array([0.3, -0.2, -0.4]), np.array([0.0, 0.0, 3.0])))
    background = (0.2, 0.5, 1.0) if seed % 3 == 0 else (0.0, 0.0, 0.0)
    ref_color, ref_depth, ref_alpha = reference_render(scene, camera, background)
    out = render(scene, camera, background=background, tile_size=8, pass_size=4)
    color, depth, alpha = (t.numpy().astype(np.float64) for t in (out.color, out.depth, out.alpha))
    assert ref_alpha.max() > 0.5  # the scene is visible
    assert psnr(color, ref_color) >= 45
    assert psnr(alpha, ref_alpha) >= 45
    assert psnr(depth * alpha, ref_depth, peak=5.0) >= 45
    covered = ref_alpha > 0.5
    np.testing.assert_allclose(depth[covered], ref_depth[covered] / ref_alpha[covered], rtol=1e-3)

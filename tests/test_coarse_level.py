"""The coarse level of detail (`app.budget.coarse_level`, the ``coarse`` output): its count, the moments each
merged block keeps, its fallback off the grid, and its image of a real tiny-preset scene, read back from its
SPZ, against the full scene's."""

from __future__ import annotations

import numpy as np

from app.budget import coarse_level, keep_most_important
from app.budget.coarse import COARSE_BLOCK
from app.budget.moments import projected_areas
from app.budget.pyramid import grid_of
from app.formats import decode_spz
from app.gaussians import GaussianScene
from app.outputs import FORMATS, encode
from app.render import input_camera, render
from app.render.camera import scaled_size
from tests.helpers import prediction_of
from tests.test_budget import moments, psnr, wall


def test_each_block_of_the_grid_becomes_one_gaussian_with_its_moments() -> None:
    # An 8 x 8 wall at 2 m (one layer): 4 x 4 blocks give 4 Gaussians, in block order, each at the weighted
    # mean of its 16 members; the totals a merge keeps are those of the wall.
    scene = wall(8, np.full((8, 8), 2.0))
    assert grid_of(scene) == (1, 8)
    coarse = coarse_level(scene, block=4)
    assert coarse.num_gaussians == 4
    before, after = moments(scene), moments(coarse)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=2e-5, atol=1e-9)
    row, column = np.divmod(np.arange(64), 8)
    block = (row // 4) * 2 + column // 4
    w = scene.opacities.astype(np.float64) * projected_areas(scene)
    for b in range(4):
        centre = w[block == b] @ scene.positions[block == b] / w[block == b].sum()
        colour = w[block == b] @ scene.colors[block == b] / w[block == b].sum()
        np.testing.assert_allclose(coarse.positions[b], centre, rtol=1e-5)
        np.testing.assert_allclose(coarse.colors[b], colour, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(coarse.rotations, axis=1), 1, rtol=1e-6)
    assert np.all(coarse.opacities > 0.05) and np.all(coarse.opacities <= 1)

def test_the_tiny_scene_keeps_a_block_in_one_or_two_and_looks_like_the_full(tiny_photo_scene: GaussianScene) -> None:
    # 2 x 256 x 256 in 2 x 32 x 32 blocks, one or two Gaussians each (a depth edge splits a block); the coarse
    # output's SPZ holds them, and its image at the input view is close to the full scene's, closer than keeping
    # as many of the most important.
    n = tiny_photo_scene.num_gaussians
    spz = encode(prediction_of(tiny_photo_scene), "coarse")
    coarse = decode_spz(spz)
    assert n // COARSE_BLOCK**2 <= coarse.num_gaussians <= 2 * n // COARSE_BLOCK**2, coarse.num_gaussians
    assert len(spz) <= FORMATS["coarse"].bytes_per_gaussian * n + FORMATS["coarse"].fixed_bytes
    camera = input_camera(tiny_photo_scene, scaled_size(600, 400, 150))

    def image(scene: GaussianScene) -> np.ndarray:
        return render(scene, camera).color.clamp(0, 1).numpy()

    full = image(tiny_photo_scene)
    coarse_db = psnr(image(coarse_level(tiny_photo_scene)), full)
    dropped_db = psnr(image(keep_most_important(tiny_photo_scene, coarse.num_gaussians)), full)
    print(f"coarse level: {coarse.num_gaussians:,} Gaussians, {coarse_db:.1f} dB (dropping: {dropped_db:.1f} dB)")
    assert coarse_db > 20 and coarse_db > dropped_db, (coarse_db, dropped_db)

def test_a_depth_edge_splits_a_block_in_two() -> None:
    # Left half of each 4 x 4 block at 1 m, right half at 5 m: each block gives a near and a far Gaussian, at
    # their own depths (not one in between, stretched along the line of sight).
    depths = np.where(np.arange(8)[None, :] % 4 < 2, 1.0, 5.0).repeat(8, axis=0)
    coarse = coarse_level(wall(8, depths), block=4)
    assert coarse.num_gaussians == 8
    np.testing.assert_allclose(coarse.positions[:, 2], [1.0, 5.0] * 4, rtol=1e-5)


def test_off_its_grid_the_most_important_are_kept(tiny_photo_scene: GaussianScene) -> None:
    shuffled = tiny_photo_scene.select(np.random.default_rng(0).permutation(tiny_photo_scene.num_gaussians))
    assert grid_of(shuffled) is None
    np.testing.assert_array_equal(coarse_level(shuffled).positions,
                                  keep_most_important(shuffled, shuffled.num_gaussians // COARSE_BLOCK**2).positions)

"""The splat budget (`app.budget`): the accepted range, exact counts, the dropping rule and the merging rule on
constructed scenes (moments kept, depth edges not merged), and the images they leave of a real tiny-preset
scene: merging closer to the full scene than dropping, dropping closer than keeping the most opaque."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from app.budget import (
    BudgetError,
    apply_budget,
    budget_count,
    check_max_gaussians,
    keep_most_important,
    parse_max_gaussians,
)
from app.budget.cut import cut_count, fold_pyramid, pyramid_cut
from app.budget.importance import importance, transmittance
from app.budget.moments import covariances, full_matrices, projected_areas
from app.budget.pyramid import SUMS_WIDTH, grid_of, merge_to_budget, run_sums, smallest
from app.errors import InvalidRequestError
from app.formats import read_ply
from app.gaussians import GaussianScene
from app.outputs import encode
from app.render import camera_path, input_camera, render
from app.render.camera import scaled_size
from tests.helpers import prediction_of


def scene_of(positions: list[list[float]], scales: list[list[float]], opacities: list[float]) -> GaussianScene:
    n = len(positions)
    return GaussianScene(
        positions=np.asarray(positions, np.float32), scales=np.asarray(scales, np.float32),
        rotations=np.tile(np.float32([1, 0, 0, 0]), (n, 1)), colors=np.full((n, 3), 0.5, np.float32),
        opacities=np.asarray(opacities, np.float32), f_px=500.0, image_width=600, image_height=400,
    )


@pytest.mark.parametrize("budget", [0, -1, -0.5, 0.0, math.nan, math.inf, 101, 1.5, 2.0, True, "10", None])
def test_impossible_budgets_name_the_accepted_range(budget: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"from 1 to 100 or a fraction in \(0, 1\]") as error:
        budget_count(budget, 100)  # type: ignore[arg-type]
    assert error.value.status == 422


@pytest.mark.parametrize(("budget", "count"), [(1, 1), (37, 37), (100, 100), (np.int64(5), 5), (0.25, 25),
                                               (1.0, 100), (0.001, 1), (0.125, 12)])
def test_counts_and_fractions(budget: int | float, count: int) -> None:
    assert budget_count(budget, 100) == count


def test_kept_count_is_exact_and_in_order(tiny_photo_scene: GaussianScene) -> None:
    n = tiny_photo_scene.num_gaussians
    for budget in (1, 1000, n - 1, 0.1, 0.5):
        kept = keep_most_important(tiny_photo_scene, budget)
        assert kept.num_gaussians == budget_count(budget, n)
        rows = {row.tobytes(): i for i, row in enumerate(tiny_photo_scene.positions)}
        index = np.array([rows[row.tobytes()] for row in kept.positions])
        assert (np.diff(index) > 0).all()  # original order, no repeats
    assert keep_most_important(tiny_photo_scene, None) is tiny_photo_scene
    assert keep_most_important(tiny_photo_scene, n) is tiny_photo_scene


def test_big_opaque_near_ones_outrank_tiny_transparent_ones() -> None:
    scene = scene_of(
        positions=[[0, 0, 30], [0.1, 0, 1], [0, 0, 2], [0.5, 0.3, 2], [0, 0, -1], [0.2, 0.1, 1.5]],
        scales=[[0.01, 0.01, 0.01], [0.05, 0.05, 0.01], [0.002, 0.002, 0.002], [0.1, 0.08, 0.05],
                [1, 1, 1], [0.04, 0.03, 0.02]],
        opacities=[0.2, 0.9, 0.05, 0.8, 1.0, 0.99],
    )
    # The most opaque of all sits behind the camera; a tiny far one and a tiny faint one matter least.
    kept = keep_most_important(scene, 3)
    np.testing.assert_array_equal(kept.positions, scene.positions[[1, 3, 5]])
    scores = importance(scene)
    assert scores[4] == 0 and scores[[0, 2]].max() < scores[[1, 3, 5]].min()
    # opacity 0.8, 1-sigma ellipse of 0.1 x 0.08 m at 2 m (slightly off-axis): about pi * 25 * 20 px^2,
    # alone in its cell (transmittance 1)
    assert scores[3] == pytest.approx(0.8 * math.sqrt(math.pi * 25 * 20), rel=0.15)


def test_hidden_ones_rank_below_visible_ones() -> None:
    # Two equal Gaussians on the optical axis, one behind an opaque wall of Gaussians, one in the open.
    wall = [[dx, dy, 1.0] for dx in (-0.01, 0.0, 0.01) for dy in (-0.01, 0.0, 0.01)]
    scene = scene_of(positions=[*wall, [0.0, 0.0, 3.0], [0.5, 0.3, 3.0]],
                     scales=[[0.02, 0.02, 0.02]] * 9 + [[0.05, 0.05, 0.05]] * 2, opacities=[0.99] * 9 + [0.9, 0.9])
    scores = importance(scene)
    assert scores[9] < 0.01 * scores[10]


def test_json_states_the_kept_and_the_predicted_counts(tiny_photo_scene: GaussianScene) -> None:
    kept = keep_most_important(tiny_photo_scene, 0.01)
    prediction = replace(prediction_of(tiny_photo_scene), scene=kept, num_predicted=tiny_photo_scene.num_gaussians)
    body = json.loads(encode(prediction, "json", encoding="base64"))
    assert body["metadata"]["num_gaussians"] == kept.num_gaussians == round(0.01 * tiny_photo_scene.num_gaussians)
    assert body["metadata"]["total_gaussians"] == tiny_photo_scene.num_gaussians
    with pytest.raises(InvalidRequestError, match="max_gaussians must be a count"):
        keep_most_important(tiny_photo_scene, tiny_photo_scene.num_gaussians + 1)


@pytest.mark.parametrize(("text", "value"), [("1", 1), (" 100000 ", 100_000), ("0.25", 0.25), ("1.0", 1.0),
                                             ("1e-3", 0.001), (str(10**30), 10**30)])
def test_a_typed_budget_is_a_count_or_a_fraction(text: str, value: float) -> None:
    parsed = parse_max_gaussians(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["0", "-1", "-0.5", "0.0", "1.5", "1e3", "2.0", "nan", "inf", "-inf", "", "many",
                                  "0x10", "1/4", "25%"])
def test_a_typed_budget_out_of_range_names_the_range(text: str) -> None:
    with pytest.raises(BudgetError, match=r"a count from 1 to the number predicted, or a fraction in \(0, 1\]"):
        parse_max_gaussians(text)


@pytest.mark.parametrize("value", [0, -3, True, 1.5, 0.0, float("nan"), float("inf"), "10"])
def test_a_given_budget_out_of_range_is_refused(value: object) -> None:
    with pytest.raises(BudgetError, match="max_gaussians must be"):
        check_max_gaussians(value)  # type: ignore[arg-type]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_a_quarter_looks_better_than_the_most_opaque_quarter(tiny_photo_scene: GaussianScene) -> None:
    camera = input_camera(tiny_photo_scene, scaled_size(600, 400, 150))

    def image(scene: GaussianScene) -> np.ndarray:
        return render(scene, camera).color.clamp(0, 1).numpy()

    full = image(tiny_photo_scene)
    k = budget_count(0.25, tiny_photo_scene.num_gaussians)
    most_opaque = np.sort(np.argsort(-tiny_photo_scene.opacities, kind="stable")[:k])
    ours = psnr(image(keep_most_important(tiny_photo_scene, 0.25)), full)
    opacity_only = psnr(image(tiny_photo_scene.select(most_opaque)), full)
    assert ours > opacity_only + 0.5, (ours, opacity_only)


def wall(side: int, depths: np.ndarray, seed: int = 0) -> GaussianScene:
    """One layer of `side` x `side` Gaussians on the grid of a 600 x 400 photo (f_px 500), each at the depth
    `depths[row, column]` in metres, with random colours, opacities in [0.3, 0.6] and random shapes of about a
    third of a grid cell."""
    rng = np.random.default_rng(seed)
    row, column = np.divmod(np.arange(side * side), side)
    z = depths.reshape(-1).astype(np.float64)
    u, v = (column + 0.5) * 600 / side - 300, (row + 0.5) * 400 / side - 200
    positions = np.stack([u * z / 500, v * z / 500, z], axis=1)
    rotations = rng.normal(size=(side * side, 4))
    return GaussianScene(
        positions=positions.astype(np.float32),
        scales=(np.sort(rng.uniform(0.2, 0.4, (side * side, 3)), axis=1)[:, ::-1] * (400 / side) * z[:, None] / 500
                ).astype(np.float32),
        rotations=(rotations / np.linalg.norm(rotations, axis=1, keepdims=True)).astype(np.float32),
        colors=rng.uniform(0, 1, (side * side, 3)).astype(np.float32),
        opacities=rng.uniform(0.3, 0.6, side * side).astype(np.float32), f_px=500.0, image_width=600,
        image_height=400,
    )


def moments(scene: GaussianScene) -> dict[str, np.ndarray]:
    """The totals a merge keeps: sum w, sum w mean, sum w colour, sum w (covariance + mean mean^T), with
    w = opacity x projected area at the input view."""
    w = scene.opacities.astype(np.float64) * projected_areas(scene)
    mean = scene.positions.astype(np.float64)
    second = full_matrices(covariances(scene)) + mean[:, :, None] * mean[:, None, :]
    return {"weight": w.sum(), "mean": w @ mean, "colour": w @ scene.colors.astype(np.float64),
            "second": np.einsum("n,nij->ij", w, second)}


def test_the_cut_merges_where_a_merge_costs_less_than_the_gaussians_it_saves() -> None:
    # Four leaves; two nodes of two leaves above them (costs 0.1 and 10); one root (cost 100). At a price of 1
    # per Gaussian kept, the cheap pair merges (0.1 + 1 < 2), the dear one does not (10 + 1 > 2), nor the
    # root (100 + 1 > 1.1 + 2): three Gaussians. At a price of 200 everything merges into the root.
    costs = [np.zeros(4), np.array([0.1, 10.0]), np.array([100.0])]
    parents = [np.array([0, 0, 1, 1]), np.array([0, 0])]
    count, merges = pyramid_cut(costs, parents, 1.0)
    assert count == 3
    np.testing.assert_array_equal(merges[1], [True, False])
    np.testing.assert_array_equal(merges[2], [False])
    assert pyramid_cut(costs, parents, 200.0)[0] == 1
    assert pyramid_cut(costs, parents, 0.0)[0] == 4


def test_the_folded_pyramid_counts_what_the_cut_keeps() -> None:
    # Random pyramids with nodes of one child, some dearer than their child (folded), some cheaper (kept):
    # the bisection's count (cut_count on fold_pyramid) is pyramid_cut's, at every price.
    rng = np.random.default_rng(3)
    for _ in range(100):
        sizes, parents = [int(rng.integers(5, 60))], []
        while sizes[-1] > 1:
            above = max(1, int(sizes[-1] * rng.uniform(0.3, 1.0)))
            parents.append(rng.permutation(np.r_[np.arange(above), rng.integers(0, above, sizes[-1] - above)]))
            sizes.append(above)
        costs = [np.zeros(sizes[0])] + [rng.choice([0.0, 0.5, 1.0, 3.0], size) * rng.uniform(0, 2, size)
                                        for size in sizes[1:]]
        folded = fold_pyramid(costs, parents)
        for price in (1e-3, 0.1, 0.7, 1.0, 2.5, 10.0):
            assert cut_count(folded, price) == pyramid_cut(costs, parents, price)[0]


def test_run_sums_add_as_reduceat_does_bit_for_bit() -> None:
    # Runs of 2 to 300 rows of values of very different sizes (where the order of the additions shows).
    rng = np.random.default_rng(0)
    for longest in (3, 9, 12, 40, 300):
        lengths = rng.integers(2, longest, 400)
        values = rng.normal(size=(lengths.sum(), SUMS_WIDTH)) * 10.0 ** rng.integers(-17, 3, (lengths.sum(),
                                                                                               SUMS_WIDTH))
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        want = np.add.reduceat(values, starts, axis=0)
        np.testing.assert_array_equal(run_sums(values, starts, lengths).view(np.int64), want.view(np.int64))


def test_smallest_picks_what_a_stable_sort_puts_first() -> None:
    rng = np.random.default_rng(1)
    for trial in range(100):
        values = rng.integers(0, 5, 40).astype(float) if trial % 2 else rng.normal(size=40)
        values[rng.integers(0, 40, 3)] = np.nan if trial % 3 == 0 else -0.0
        for count in range(41):
            want = np.zeros(40, dtype=bool)
            want[np.argsort(values, kind="stable")[:count]] = True
            np.testing.assert_array_equal(smallest(values, count), want)


def test_transmittance_sorts_by_cell_then_depth_as_lexsort_does(tiny_photo_scene: GaussianScene) -> None:
    # float32 centres take the one-key sort (cell, depth bits); float64 ones numpy's lexsort: the same light.
    scene = tiny_photo_scene
    wide = replace(scene, positions=scene.positions.astype(np.float64))
    opacity = scene.opacities.astype(np.float64)
    areas = projected_areas(scene)
    np.testing.assert_array_equal(transmittance(scene, opacity, areas), transmittance(wide, opacity, areas))


def test_a_merged_wall_keeps_its_moments_and_its_coverage() -> None:
    # A 4 x 4 wall at 2 m, on its grid: a budget of 4 merges each 2 x 2 block into one Gaussian (none
    # dropped first: drop_below=0).
    scene = wall(4, np.full((4, 4), 2.0))
    assert grid_of(scene) == (1, 4)
    merged = merge_to_budget(scene, 4, (1, 4), drop_below=0.0)
    assert merged.num_gaussians == 4
    before, after = moments(scene), moments(merged)
    for name in before:  # float32 storage of the merged values: agreement to about 1e-6
        np.testing.assert_allclose(after[name], before[name], rtol=2e-5, atol=1e-9)
    # Each merged one sits at its block's weighted centre, in the grid order of its block's first Gaussian.
    block = ((np.arange(16) // 4) // 2) * 2 + (np.arange(16) % 4) // 2
    w = scene.opacities.astype(np.float64) * projected_areas(scene)
    for b in range(4):
        centre = w[block == b] @ scene.positions[block == b] / w[block == b].sum()
        np.testing.assert_allclose(merged.positions[b], centre, rtol=1e-5)
    # The light the block added spreads over the merged one's larger ellipse: less opaque, not transparent.
    assert np.all(merged.opacities < scene.opacities.max()) and np.all(merged.opacities > 0.05)
    np.testing.assert_allclose(np.linalg.norm(merged.rotations, axis=1), 1, rtol=1e-6)
    assert np.all(np.diff(merged.scales, axis=1) <= 0)


def test_a_depth_edge_is_not_merged_across() -> None:
    # Left half at 1 m, right half at 5 m: a budget of half merges neighbours on each side, never across.
    depths = np.where(np.arange(4)[None, :] < 2, 1.0, 5.0).repeat(4, axis=0)
    scene = wall(4, depths)
    merged = merge_to_budget(scene, 8, (1, 4), drop_below=0.0)
    assert merged.num_gaussians == 8
    np.testing.assert_allclose(np.sort(merged.positions[:, 2]), [1.0] * 4 + [5.0] * 4, rtol=1e-6)
    # At 2 the pyramid's top level merges what is left (each side into one).
    top = merge_to_budget(scene, 2, (1, 4), drop_below=0.0)
    np.testing.assert_allclose(np.sort(top.positions[:, 2]), [1.0, 5.0], rtol=1e-6)


def test_a_scene_off_its_grid_is_budgeted_by_dropping(tiny_photo_scene: GaussianScene) -> None:
    shuffled = tiny_photo_scene.select(np.random.default_rng(0).permutation(tiny_photo_scene.num_gaussians))
    assert grid_of(tiny_photo_scene) == (2, 256) and grid_of(shuffled) is None
    np.testing.assert_array_equal(apply_budget(shuffled, 0.25).positions, keep_most_important(shuffled, 0.25).positions)
    assert apply_budget(tiny_photo_scene, None) is tiny_photo_scene
    assert apply_budget(tiny_photo_scene, tiny_photo_scene.num_gaussians) is tiny_photo_scene


def test_merged_counts_are_exact(tiny_photo_scene: GaussianScene) -> None:
    n = tiny_photo_scene.num_gaussians
    for budget in (1, 1000, n - 1, 0.1, 0.5):
        merged = apply_budget(tiny_photo_scene, budget)
        assert merged.num_gaussians == budget_count(budget, n)
        assert np.isfinite(merged.positions).all() and np.isfinite(merged.scales).all()
    with pytest.raises(BudgetError, match="max_gaussians must be a count"):
        apply_budget(tiny_photo_scene, n + 1)


@pytest.mark.parametrize("fraction", [0.25, 0.1])
def test_a_merged_ply_renders_closer_to_the_full_scene_than_dropping(tiny_photo_scene: GaussianScene,
                                                                    fraction: float) -> None:
    # The budgeted PLY, read back, holds the count asked for; our renderer's images of it at the input view
    # and along the orbit are closer to the full scene's than those of the dropping rule's.
    k = budget_count(fraction, tiny_photo_scene.num_gaussians)
    merged = apply_budget(tiny_photo_scene, fraction)
    read_back = read_ply(encode(replace(prediction_of(tiny_photo_scene), scene=merged), "ply"))
    assert read_back.num_gaussians == k
    cameras = camera_path(tiny_photo_scene, "orbit", 3, scaled_size(600, 400, 150))

    def mse(scene: GaussianScene) -> float:
        full = [render(tiny_photo_scene, camera).color.clamp(0, 1).numpy() for camera in cameras]
        return float(np.mean([np.mean((render(scene, camera).color.clamp(0, 1).numpy() - image) ** 2)
                              for camera, image in zip(cameras, full, strict=True)]))

    merged_db, dropped_db = -10 * math.log10(mse(read_back)), -10 * math.log10(
        mse(keep_most_important(tiny_photo_scene, fraction)))
    assert merged_db > dropped_db + 1.0, (merged_db, dropped_db)

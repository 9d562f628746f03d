"""The splat budget (`app.budget`): the accepted range, exact counts, the rule on a constructed scene, and the
image it leaves at the input view of a real tiny-preset scene, against keeping the most opaque."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from app.budget import (
    BudgetError,
    budget_count,
    check_max_gaussians,
    importance,
    keep_most_important,
    parse_max_gaussians,
)
from app.errors import InvalidRequestError
from app.gaussians import GaussianScene
from app.outputs import encode
from app.render import input_camera, render
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

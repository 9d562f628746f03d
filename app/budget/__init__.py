"""A splat budget: fewer Gaussians, up to a count or a fraction, by merging neighbours and dropping the rest.

`apply_budget` applies one. Two rules, both vectorised (numpy; no loop over Gaussians): on SHARP's grid,
neighbours merge (`pyramid`: a pyramid of the grid, cut where merging loses least, `cut`; each merge keeps
its children's moments, `moments`); off it, the least important go (`importance`). The budget itself, a
count or a fraction, is `count`; the coarse level of detail the page shows first is `coarse`.
"""

from __future__ import annotations

from app.budget.coarse import coarse_level
from app.budget.count import ACCEPTED, BudgetError, MaxGaussians, budget_count, check_max_gaussians, parse_max_gaussians
from app.budget.importance import keep_most_important
from app.budget.pyramid import grid_of, merge_to_budget
from app.gaussians import GaussianScene

__all__ = ["ACCEPTED", "BudgetError", "MaxGaussians", "apply_budget", "budget_count", "check_max_gaussians",
           "coarse_level", "keep_most_important", "parse_max_gaussians"]


def apply_budget(scene: GaussianScene, max_gaussians: MaxGaussians | None) -> GaussianScene:
    """The scene with exactly `budget_count` Gaussians: merged on its grid (`merge_to_budget`) when the scene
    is on one (`grid_of`: a prediction, or a PLY written from one), else its most important kept
    (`keep_most_important`). None keeps every Gaussian (the scene itself), as does a budget of all of them.

    Raises:
        BudgetError: a budget outside the accepted range (see `budget_count`).
    """
    if max_gaussians is None:
        return scene
    if budget_count(max_gaussians, scene.num_gaussians) == scene.num_gaussians:
        return scene
    grid = grid_of(scene)
    if grid is None:
        return keep_most_important(scene, max_gaussians)
    return merge_to_budget(scene, max_gaussians, grid)

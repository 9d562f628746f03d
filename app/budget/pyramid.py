"""The merge rule (`merge_to_budget`, what `app.budget.apply_budget` uses for a scene on its grid): a pyramid
of SHARP's grid, cut where merging loses least.

SHARP predicts its Gaussians on a square grid over the photo, ``layers x side x side`` (2 x 768 x 768 at
full size, 2 x 256 x 256 for `tiny`), stored layer by layer, row by row (index = (layer * side + row) *
side + column). `grid_of` recognises that layout from the count and from the centres (each projects near
its cell at the input view). First the least important go (`app.budget.importance`): those whose
importance is under ``DROP_BELOW`` x the mean, least important first, at most as many as the budget removes
(the second layer where the first hides it, and faint ones: dropping them costs the image little, merging
them would smear them into what is seen). Then a pyramid of that grid: at level l the cells are blocks of
2^l x 2^l grid cells, one layer at a time. In a block, the nodes of the level below are sorted by depth and
split where a depth gap exceeds ``SLOPE x 2^l x pitch / f_px`` of the depth (pitch: a grid cell in pixels),
so that a foreground edge never merges with the background behind it; each run of similar depth is one
node of level l (its leaves: the Gaussians under it). A node's cost is what one Gaussian in place of its
leaves loses where the photo sees them, ``sum importance_i x (|colour_i - colour|^2 + SPREAD_COST x
|pixel_i - pixel|^2 / pitch^2)`` (colour the merged one, pixel_i a leaf's centre at the input view, pixel
their importance-weighted mean): detail of colour, and of shape (one Gaussian over a wide area blurs what
many drew). The budget is a cut of the pyramid, chosen per region, not per level (`app.budget.cut`); the
last few over are dropped by importance. Each node of the cut becomes one Gaussian that keeps the moments
of its leaves (`app.budget.moments`); Gaussians not merged keep their values bit for bit. The output is in
grid order (each Gaussian where its first child was).
"""

from __future__ import annotations

import math

import numpy as np

from app.budget.count import MaxGaussians, budget_count
from app.budget.cut import choose_cut
from app.budget.importance import transmittance
from app.budget.moments import UPPER, covariances, merged_gaussians, projected_areas
from app.gaussians import GaussianScene

SLOPE = 2.0
"""Depth gap that splits a block before merging, in units of the block's width at that depth: at level l
a gap over ``SLOPE x 2^l x pitch / f_px`` of the depth (measured, docs/formats.md)."""

DROP_BELOW = 0.25
"""Gaussians whose importance is under this fraction of the mean are dropped before any merge (at most as
many as the budget removes): SHARP's second layer where the first hides it, and faint ones (measured,
docs/formats.md)."""

SPREAD_COST = 1e-3
"""Weight of a merge's spread (squared pixels at the input view, over the squared grid pitch) against its
colour loss (squared colour differences) in a node's cost (measured, docs/formats.md)."""

GRID_LAYERS = (2, 1)
"""Layer counts `grid_of` tries (SHARP predicts two)."""


def grid_of(scene: GaussianScene) -> tuple[int, int] | None:
    """(layers, side) when the scene's Gaussians are laid out as SHARP predicts them (module docstring):
    ``layers x side x side`` of them and, at the input view, the centres of most projecting within a cell of
    their own grid cell (median over a sample). None otherwise (another count, another order)."""
    n = scene.num_gaussians
    for layers in GRID_LAYERS:
        side = math.isqrt(n // layers)
        if side < 2 or layers * side * side != n:
            continue
        index = np.arange(0, n, max(1, n // 4096))
        row, column = (index // side) % side, index % side
        x, y, z = np.asarray(scene.positions[index], dtype=np.float64).T
        with np.errstate(divide="ignore", invalid="ignore"):
            u = scene.f_px * x / z + scene.image_width / 2
            v = scene.f_px * y / z + scene.image_height / 2
        pitch_u, pitch_v = scene.image_width / side, scene.image_height / side
        off_u = np.abs(u - (column + 0.5) * pitch_u)
        off_v = np.abs(v - (row + 0.5) * pitch_v)
        if np.median(np.nan_to_num(off_u, nan=np.inf)) <= pitch_u \
                and np.median(np.nan_to_num(off_v, nan=np.inf)) <= pitch_v:
            return layers, side
    return None


def level_sums(scene: GaussianScene, keep: np.ndarray, weight: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """The sums a pyramid node carries, for the Gaussians `keep` of `scene` as its leaves (one node each).

    Args:
        keep: (M,) indices into the scene. weight: (M,) opacity x projected area in pixels (the moments'
            weight). score: (M,) their importance (the cost's weight).

    Returns:
        Per node: ``w`` (M,), ``wp`` (M, 3) w x centre, ``wpp`` (M, 6) w x (covariance + centre centre^T)
        (`UPPER`), ``wc`` (M, 3) w x colour; ``i``, ``ic``, ``icc`` the importance, importance x colour and
        importance x |colour|^2; ``iu``, ``iuu`` importance x the centre's pixel (u, v) at the input view and
        x |(u, v)|^2; ``leaves`` the count of leaves; ``first`` the lowest scene index among them.
    """
    position = np.asarray(scene.positions, dtype=np.float64)[keep]
    color = np.asarray(scene.colors, dtype=np.float64)[keep]
    second = covariances(scene.select(keep)) + np.stack([position[:, i] * position[:, j] for i, j in UPPER], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel = np.nan_to_num(scene.f_px * position[:, :2] / position[:, 2:], nan=0.0, posinf=0.0, neginf=0.0)
    return {
        "w": weight, "wp": weight[:, None] * position, "wpp": weight[:, None] * second, "wc": weight[:, None] * color,
        "i": score, "ic": score[:, None] * color, "icc": score * np.sum(color * color, axis=1),
        "iu": score[:, None] * pixel, "iuu": score * np.sum(pixel * pixel, axis=1),
        "leaves": np.ones(keep.size), "first": keep.copy(),
    }


def node_costs(sums: dict[str, np.ndarray], pitch: float) -> np.ndarray:
    """(G,) what replacing each node's leaves by one Gaussian loses (module docstring): ``sum importance_i x
    (|colour_i - colour|^2 + SPREAD_COST x |pixel_i - pixel|^2 / pitch^2)``, from the node's sums
    (`level_sums`), with colour the merged one and pixel the importance-weighted mean. 0 for a leaf."""
    color = sums["wc"] / sums["w"][:, None]
    color_loss = sums["icc"] - 2 * np.sum(color * sums["ic"], axis=1) + np.sum(color * color, axis=1) * sums["i"]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = sums["iuu"] - np.nan_to_num(np.sum(sums["iu"] ** 2, axis=1) / sums["i"])
    cost = np.maximum(color_loss, 0.0) + SPREAD_COST * np.maximum(spread, 0.0) / pitch**2
    return np.where(sums["leaves"] > 1, cost, 0.0)


def merge_to_budget(scene: GaussianScene, max_gaussians: MaxGaussians, grid: tuple[int, int], *,
                    drop_below: float = DROP_BELOW) -> GaussianScene:
    """The scene merged on its grid's pyramid to exactly `budget_count` Gaussians (module docstring).

    Args:
        scene: the Gaussians, laid out as `grid` says (`grid_of`).
        max_gaussians: the budget.
        grid: (layers, side).
        drop_below: those under this fraction of the mean importance are dropped first (0: only merges, but
            for the last few).

    Raises:
        BudgetError: a budget outside the accepted range (see `budget_count`).
    """
    n = scene.num_gaussians
    target = budget_count(max_gaussians, n)
    _, side = grid
    image_area = float(max(scene.image_width, 1) * max(scene.image_height, 1))
    opacity = np.clip(np.nan_to_num(np.asarray(scene.opacities, dtype=np.float64), nan=0.0), 0.0, 1.0)
    areas = np.minimum(projected_areas(scene), image_area)
    weight = np.maximum(opacity * areas, 1e-12)
    score = opacity * np.sqrt(areas) * transmittance(scene, opacity, areas)
    # The least important first (under drop_below x the mean), at most as many as the budget removes.
    dropped = min(n - target, int(np.count_nonzero(score < drop_below * score.mean())))
    keep = np.sort(np.argsort(score, kind="stable")[dropped:]) if dropped else np.arange(n)
    levels, costs, parents = build_pyramid(scene, keep, weight[keep], score[keep], side, math.sqrt(image_area) / side)
    in_cut = choose_cut(costs, parents, target)
    chosen = list(zip(levels, in_cut, strict=True))
    nodes = {name: np.concatenate([sums[name][mask] for sums, mask in chosen]) for name in ("w", "wp", "wpp", "wc",
                                                                                         "i", "leaves", "first")}
    # The few still over the count go by importance, least first.
    excess = nodes["first"].size - target
    keep_nodes = np.argsort(nodes["i"], kind="stable")[excess:] if excess > 0 else np.arange(nodes["first"].size)
    nodes = {name: values[np.sort(keep_nodes)] for name, values in nodes.items()}
    order = np.argsort(nodes["first"], kind="stable")
    return _scene_of({name: values[order] for name, values in nodes.items()}, scene)


def build_pyramid(scene: GaussianScene, keep: np.ndarray, weight: np.ndarray, score: np.ndarray, side: int,
                  pitch: float) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray], list[np.ndarray]]:
    """The pyramid of the grid over the Gaussians `keep` of `scene` (module docstring).

    Args:
        keep: (M,) indices into the scene, ascending. weight, score: (M,) their moments' weight and importance
            (`level_sums`). side: the grid's side in cells. pitch: a grid cell in pixels.

    Returns:
        Per level (level 0 the leaves; a node of level l a run of similar depth among the nodes of level l - 1
        in one block of 2^l x 2^l grid cells of one layer): its nodes' sums (`level_sums`), their (G_l,) costs
        (`node_costs`); and per level l >= 1, (G_{l-1},) the node of level l of each node of level l - 1.
    """
    sums = level_sums(scene, keep, weight, score)
    levels, costs, parents = [sums], [np.zeros(keep.size)], []
    layer, row, column = keep // (side * side), (keep // side) % side, keep % side
    level = 0
    while (side >> level) > 1:
        level += 1
        cells = side >> level
        row, column = row >> 1, column >> 1
        block = (layer * cells + row) * cells + column
        depth = np.nan_to_num(sums["wp"][:, 2] / sums["w"], nan=0.0, posinf=0.0, neginf=0.0)
        span = max(float(depth.max() - depth.min()), 1e-30)
        order = np.argsort(block + 0.5 * (depth - depth.min()) / span, kind="stable")
        sorted_depth, sorted_block = depth[order], block[order]
        tolerance = SLOPE * 2**level * pitch / scene.f_px
        starts = np.flatnonzero(np.r_[True, (sorted_block[1:] != sorted_block[:-1])
                                      | (sorted_depth[1:] > sorted_depth[:-1] * (1 + tolerance))])
        parent = np.empty_like(order)
        parent[order] = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, order.size]))
        sums = {name: (np.minimum if name == "first" else np.add).reduceat(values[order], starts, axis=0)
                for name, values in sums.items()}
        levels.append(sums)
        costs.append(node_costs(sums, pitch))
        parents.append(parent)
        layer, row, column = sorted_block[starts] // (cells * cells), (sorted_block[starts] // cells) % cells, \
            sorted_block[starts] % cells
    return levels, costs, parents


def _scene_of(nodes: dict[str, np.ndarray], scene: GaussianScene) -> GaussianScene:
    """The GaussianScene of the cut's nodes (their sums, `level_sums`): a node of one leaf is that Gaussian
    unchanged; a merged one from its moments (opacity: its weight over the projected area of its covariance,
    at most 1)."""
    original = nodes["leaves"] == 1
    kept = nodes["first"][original]
    merged = ~original
    size = original.size
    positions = np.empty((size, 3), dtype=np.float32)
    scales = np.empty((size, 3), dtype=np.float32)
    rotations = np.empty((size, 4), dtype=np.float32)
    colors = np.empty((size, 3), dtype=np.float32)
    opacities = np.empty(size, dtype=np.float32)
    positions[original], scales[original], rotations[original] = (
        scene.positions[kept], scene.scales[kept], scene.rotations[kept])
    colors[original], opacities[original] = scene.colors[kept], scene.opacities[kept]
    (positions[merged], scales[merged], rotations[merged], colors[merged],
     opacities[merged]) = merged_gaussians(scene, nodes["w"][merged], nodes["wp"][merged], nodes["wpp"][merged],
                                           nodes["wc"][merged])
    return GaussianScene(positions=positions, scales=scales, rotations=rotations, colors=colors, opacities=opacities,
                         f_px=scene.f_px, image_width=scene.image_width, image_height=scene.image_height)

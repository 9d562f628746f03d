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
from dataclasses import dataclass

import numpy as np

from app.budget.count import MaxGaussians, budget_count
from app.budget.cut import choose_cut
from app.budget.importance import transmittance
from app.budget.moments import UPPER, covariances, merged_gaussians, screen_areas
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


SUMS = {"w": 0, "wp": slice(1, 4), "wpp": slice(4, 10), "wc": slice(10, 13), "i": 13, "ic": slice(14, 17),
        "icc": 17, "iu": slice(18, 20), "iuu": 20, "leaves": 21}
"""The columns of a row of a node's sums (`level_sums`): an int a scalar's, a slice a vector's."""

SUMS_WIDTH = 22
"""Columns in a row of sums (`SUMS`)."""


def named_sums(rows: np.ndarray) -> dict[str, np.ndarray]:
    """(G, `SUMS_WIDTH`) rows of sums -> their columns by name (`SUMS`; views, no copies)."""
    return {name: rows[:, column] for name, column in SUMS.items()}


def level_sums(scene: GaussianScene, keep: np.ndarray, weight: np.ndarray, score: np.ndarray,
               covariance: np.ndarray) -> np.ndarray:
    """The sums a pyramid node carries, for the Gaussians `keep` of `scene` as its leaves (one node each).

    Args:
        keep: (M,) indices into the scene. weight: (M,) opacity x projected area in pixels (the moments'
            weight). score: (M,) their importance (the cost's weight). covariance: (M, 6) their covariances
            (`app.budget.moments.covariances`).

    Returns:
        (M, `SUMS_WIDTH`) float64, one row per node (stored column by column: copy it to rows where rows are
        gathered), columns (`SUMS`): ``w``, ``wp`` (3) w x centre, ``wpp`` (6) w x (covariance + centre
        centre^T) (`UPPER`), ``wc`` (3) w x colour; ``i``, ``ic`` (3), ``icc`` the importance, importance x
        colour and importance x |colour|^2; ``iu`` (2), ``iuu`` importance x the centre's pixel (u, v) at the
        input view and x |(u, v)|^2; ``leaves`` the count of leaves.
    """
    position = np.asarray(scene.positions[keep], dtype=np.float64)
    color = np.asarray(scene.colors[keep], dtype=np.float64)
    second = covariance + np.stack([position[:, i] * position[:, j] for i, j in UPPER], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel = np.nan_to_num(scene.f_px * position[:, :2] / position[:, 2:], nan=0.0, posinf=0.0, neginf=0.0)
    columns = np.empty((keep.size, SUMS_WIDTH), order="F")  # filled column by column
    sums = named_sums(columns)
    np.multiply(weight[:, None], position, out=sums["wp"])
    np.multiply(weight[:, None], second, out=sums["wpp"])
    np.multiply(weight[:, None], color, out=sums["wc"])
    np.multiply(score[:, None], color, out=sums["ic"])
    np.multiply(score[:, None], pixel, out=sums["iu"])
    sums["w"][:], sums["i"][:], sums["leaves"][:] = weight, score, 1
    sums["icc"][:], sums["iuu"][:] = score * np.sum(color * color, axis=1), score * np.sum(pixel * pixel, axis=1)
    return columns


def node_costs(sums: dict[str, np.ndarray], pitch: float) -> np.ndarray:
    """(G,) what replacing each node's leaves by one Gaussian loses (module docstring): ``sum importance_i x
    (|colour_i - colour|^2 + SPREAD_COST x |pixel_i - pixel|^2 / pitch^2)``, from the node's sums
    (`named_sums`), with colour the merged one and pixel the importance-weighted mean. 0 for a leaf."""
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
    covariance = covariances(scene)
    areas = np.minimum(screen_areas(scene.positions, covariance, scene.f_px), image_area)
    weight = np.maximum(opacity * areas, 1e-12)
    score = opacity * np.sqrt(areas) * transmittance(scene, opacity, areas)
    # The least important first (under drop_below x the mean), at most as many as the budget removes.
    dropped = min(n - target, int(np.count_nonzero(score < drop_below * score.mean())))
    keep = np.flatnonzero(~smallest(score, dropped))
    pyramid = build_pyramid(scene, keep, weight[keep], score[keep], covariance[keep], side,
                            math.sqrt(image_area) / side)
    in_cut = choose_cut(pyramid.costs, pyramid.parents, target)
    rows = np.concatenate([level_rows[mask] for level_rows, mask in zip(pyramid.rows, in_cut, strict=True)])
    first = np.concatenate([level_first[mask] for level_first, mask in zip(pyramid.first, in_cut, strict=True)])
    # The few still over the count go by importance, least first.
    excess = first.size - target
    if excess > 0:
        leaf = rows < pyramid.leaves
        node_importance = np.empty(rows.size)
        node_importance[leaf] = score[first[leaf]]
        node_importance[~leaf] = pyramid.sums[rows[~leaf] - pyramid.leaves, SUMS["i"]]
        kept = np.flatnonzero(~smallest(node_importance, excess))
        rows, first = rows[kept], first[kept]
    # Grid order: each node where its first leaf was (the first leaves are distinct scene indices).
    slot = np.full(n, -1)
    slot[first] = np.arange(first.size)
    order = slot[slot >= 0]
    rows, first = rows[order], first[order]
    merged = rows >= pyramid.leaves
    return _scene_of(merged, pyramid.sums[rows[merged] - pyramid.leaves], first, scene)


def smallest(values: np.ndarray, count: int) -> np.ndarray:
    """(N,) bool: the `count` smallest of (N,) `values`, of equal ones the earlier (NaN last): the ones
    ``np.argsort(values, kind="stable")[:count]`` names, found by a partition instead of a sort."""
    chosen = np.zeros(values.size, dtype=bool)
    if count <= 0:
        return chosen
    if count >= values.size:
        chosen[:] = True
        return chosen
    threshold = np.partition(values, count - 1)[count - 1]
    if np.isnan(threshold):
        chosen = ~np.isnan(values)
        tied = np.isnan(values)
    else:
        chosen = values < threshold
        tied = values == threshold
    chosen[np.flatnonzero(tied)[:count - np.count_nonzero(chosen)]] = True
    return chosen


@dataclass(frozen=True)
class Pyramid:
    """A merging pyramid of the grid (`build_pyramid`), level 0 the leaves.

    Attributes:
        leaves: M, the count of its leaves (level 0's nodes), whose rows are 0 to M - 1.
        sums: (R, `SUMS_WIDTH`) the sums (`level_sums`) of its nodes of several children: row M + r's in
            ``sums[r]``. A leaf's are its Gaussian's (not stored); a node of one child has its child's row.
        rows: per level l, (G_l,) each node's row.
        first: per level, (G_l,) the lowest scene index among each node's leaves.
        costs: per level, (G_l,) each node's cost (`node_costs`; 0 for the leaves).
        parents: per level l >= 1, (G_{l-1},) the node of level l of each node of level l - 1.
    """

    leaves: int
    sums: np.ndarray
    rows: list[np.ndarray]
    first: list[np.ndarray]
    costs: list[np.ndarray]
    parents: list[np.ndarray]


def build_pyramid(scene: GaussianScene, keep: np.ndarray, weight: np.ndarray, score: np.ndarray,
                  covariance: np.ndarray, side: int, pitch: float) -> Pyramid:
    """The pyramid of the grid over the Gaussians `keep` of `scene` (module docstring): at level l >= 1, a node
    is a run of similar depth among the nodes of level l - 1 in one block of 2^l x 2^l grid cells of one layer;
    its sums are its children's, added in the run's order (`np.add.reduceat`).

    Args:
        keep: (M,) indices into the scene, ascending. weight, score: (M,) their moments' weight and importance;
            covariance: (M, 6) their covariances (`level_sums`). side: the grid's side in cells. pitch: a grid
            cell in pixels.
    """
    m = keep.size
    sums = np.empty((max(m - 1, 1), SUMS_WIDTH))  # the nodes of several children: at most m - 1
    row_depth, row_cost = np.empty(2 * m), np.zeros(2 * m)
    with np.errstate(divide="ignore", invalid="ignore"):  # a leaf's depth, as `_depths` has it from its sums
        wp_z = weight * np.asarray(scene.positions[keep, 2], dtype=np.float64)
        row_depth[:m] = np.nan_to_num(wp_z / weight, nan=0.0, posinf=0.0, neginf=0.0)
    used = m
    rows, first = np.arange(m), keep.copy()
    pyramid = Pyramid(m, sums, [rows], [first], [np.zeros(m)], [])
    layer, row, column = keep // (side * side), (keep // side) % side, keep % side
    level = 0
    while (side >> level) > 1:
        level += 1
        cells = side >> level
        row, column = row >> 1, column >> 1
        block = (layer * cells + row) * cells + column
        depth = row_depth[rows]
        span = max(float(depth.max() - depth.min()), 1e-30)
        order = np.argsort(block + 0.5 * (depth - depth.min()) / span, kind="stable")
        sorted_depth, sorted_block = depth[order], block[order]
        tolerance = SLOPE * 2**level * pitch / scene.f_px
        starts = np.flatnonzero(np.r_[True, (sorted_block[1:] != sorted_block[:-1])
                                      | (sorted_depth[1:] > sorted_depth[:-1] * (1 + tolerance))])
        lengths = np.diff(np.r_[starts, order.size])
        parent = np.empty_like(order)
        parent[order] = np.repeat(np.arange(starts.size), lengths)
        # A run of one is its child, row and all; a run of several gets a row of its children's sums.
        rows, first = rows[order[starts]], first[order[starts]]
        several = np.flatnonzero(lengths > 1)
        if several.size:
            run_lengths = lengths[several]
            run_starts = np.r_[0, np.cumsum(run_lengths)[:-1]]
            members = order[np.arange(run_lengths.sum()) + np.repeat(starts[several] - run_starts, run_lengths)]
            # The members' sums: a leaf's from its Gaussian (each leaf is a member once at most), the others'
            # from their rows.
            member_rows = pyramid.rows[-1][members]
            values = np.empty((members.size, SUMS_WIDTH))
            leaf = member_rows < m
            leaf_ids = member_rows[leaf]
            values[leaf] = level_sums(scene, keep[leaf_ids], weight[leaf_ids], score[leaf_ids], covariance[leaf_ids])
            values[~leaf] = sums[member_rows[~leaf] - m]
            new = slice(used, used + several.size)
            sums[new.start - m:new.stop - m] = run_sums(values, run_starts, run_lengths)
            new_sums = sums[new.start - m:new.stop - m]
            row_cost[new], row_depth[new] = node_costs(named_sums(new_sums), pitch), _depths(new_sums)
            rows[several] = np.arange(new.start, new.stop)
            first[several] = np.minimum.reduceat(pyramid.first[-1][members], run_starts)
            used = new.stop
        pyramid.rows.append(rows)
        pyramid.first.append(first)
        pyramid.costs.append(row_cost[rows])
        pyramid.parents.append(parent)
        layer, row, column = layer[order[starts]], row[order[starts]], column[order[starts]]  # a child's block
    return Pyramid(m, sums[:used - m], pyramid.rows, pyramid.first, pyramid.costs, pyramid.parents)


def run_sums(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(R, `SUMS_WIDTH`) the sums of runs of rows, bit for bit ``np.add.reduceat(values, starts, axis=0)`` (each
    run's first row plus the sum of the rest: in turn up to 7 of them, numpy's pairwise sum from 8), at a
    fraction of its cost where most runs are short (reduceat walks each run's columns one by one).

    Args:
        values: (T, `SUMS_WIDTH`) rows, run after run. starts: (R,) where each run starts, ascending from 0.
            lengths: (R,) each run's length, at least 2.
    """
    # Runs by length, longest first (a stable radix sort of 8 - min(length, 8)): for each k below 8 the runs
    # longer than k are then a prefix.
    by_length = np.argsort((8 - np.minimum(lengths, 8)).astype(np.uint8), kind="stable")
    first, sorted_lengths = starts[by_length], lengths[by_length]
    longer = np.searchsorted(-np.minimum(sorted_lengths, 8), -np.arange(min(int(sorted_lengths[0]), 8)))
    rest = values[first + 1]
    for k in range(2, longer.size):  # rows 2 to 7 of each run, in turn
        rest[:longer[k]] += values[first[:longer[k]] + k]
    total = values[first] + rest
    pairwise = np.flatnonzero(sorted_lengths > 8)  # 8 or more after the first: numpy's pairwise sum
    if pairwise.size:
        local = np.r_[0, np.cumsum(sorted_lengths[pairwise])[:-1]]
        members = np.arange(sorted_lengths[pairwise].sum()) + np.repeat(first[pairwise] - local,
                                                                      sorted_lengths[pairwise])
        total[pairwise] = np.add.reduceat(values[members], local, axis=0)
    out = np.empty_like(total)
    out[by_length] = total
    return out


def _depths(rows: np.ndarray) -> np.ndarray:
    """(G,) the weighted mean depth (z) of nodes from their (G, `SUMS_WIDTH`) sums, 0 where undefined."""
    sums = named_sums(rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(sums["wp"][:, 2] / sums["w"], nan=0.0, posinf=0.0, neginf=0.0)


def _scene_of(merged: np.ndarray, sums: np.ndarray, first: np.ndarray, scene: GaussianScene) -> GaussianScene:
    """The GaussianScene of the cut's G nodes: (G,) whether each is merged (a node of several leaves), the
    (merged, `SUMS_WIDTH`) sums of those (`level_sums`), (G,) each one's first leaf. A leaf is that Gaussian
    unchanged; a merged one is made from its moments (opacity: its weight over the projected area of its
    covariance, at most 1)."""
    original = ~merged
    kept = first[original]
    size = original.size
    positions = np.empty((size, 3), dtype=np.float32)
    scales = np.empty((size, 3), dtype=np.float32)
    rotations = np.empty((size, 4), dtype=np.float32)
    colors = np.empty((size, 3), dtype=np.float32)
    opacities = np.empty(size, dtype=np.float32)
    positions[original], scales[original], rotations[original] = (
        scene.positions[kept], scene.scales[kept], scene.rotations[kept])
    colors[original], opacities[original] = scene.colors[kept], scene.opacities[kept]
    nodes = named_sums(sums)
    (positions[merged], scales[merged], rotations[merged], colors[merged],
     opacities[merged]) = merged_gaussians(scene, nodes["w"], nodes["wp"], nodes["wpp"], nodes["wc"])
    return GaussianScene(positions=positions, scales=scales, rotations=rotations, colors=colors, opacities=opacities,
                         f_px=scene.f_px, image_width=scene.image_width, image_height=scene.image_height)

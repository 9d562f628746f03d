"""A splat budget: fewer Gaussians, up to a count or a fraction, by merging neighbours and dropping the rest.

Two rules, both vectorised (numpy; no loop over Gaussians):

**Merge** (`merge_to_budget`, what `apply_budget` uses for a scene on its grid). SHARP predicts its
Gaussians on a square grid over the photo, ``layers x side x side`` (2 x 768 x 768 at full size, 2 x 256 x
256 for `tiny`), stored layer by layer, row by row (index = (layer * side + row) * side + column).
`grid_of` recognises that layout from the count and from the centres (each projects near its cell at the
input view). First the least important go: those whose importance (below) is under ``DROP_BELOW`` x the
mean, least important first, at most as many as the budget removes (the second layer where the first hides
it, and faint ones: dropping them costs the image little, merging them would smear them into what is seen).
Then a pyramid of that grid: at level l the cells are blocks of 2^l x 2^l grid cells, one layer at a time.
In a block, the nodes of the level below are sorted by depth and split where a depth gap exceeds
``SLOPE x 2^l x pitch / f_px`` of the depth (pitch: a grid cell in pixels), so that a foreground edge never
merges with the background behind it; each run of similar depth is one node of level l (its leaves: the
Gaussians under it). A node's cost is what one Gaussian in place of its leaves loses where the photo sees
them, ``sum importance_i x (|colour_i - colour|^2 + SPREAD_COST x |pixel_i - pixel|^2 / pitch^2)`` (colour
the merged one, pixel_i a leaf's centre at the input view, pixel their importance-weighted mean): detail of
colour, and of shape (one Gaussian over a wide area blurs what many drew). The budget is a cut of the
pyramid (each leaf under exactly one node of the cut), chosen per region, not per level: for a price per
Gaussian kept, bottom up, a node merges where its cost plus one price is under the best of its children's
(`pyramid_cut`: a flat region merges into a few large Gaussians, a detailed one keeps its own); the price is
found by bisection so that the cut keeps the count or a little more. Where it keeps more (the count moves
in steps), the nodes all of whose children are in the cut merge too, those losing least per Gaussian saved
first; the last few over are dropped by importance.

A merge keeps the moments of its children, weighted by ``w_i = opacity_i x projected area_i`` (what each
adds to the input view, in pixels):

    w = sum w_i,  mean = sum w_i mean_i / w,  colour = sum w_i colour_i / w,
    covariance = sum w_i (covariance_i + (mean_i - mean)(mean_i - mean)^T) / w,
    opacity = min(1, w / projected area of the merged covariance)

so the merged Gaussian covers the pixels its children covered, with the light they added (the opacity
keeps the coverage, not the children's opacity: four side-by-side Gaussians of opacity 0.6 make one four
times as large of opacity about 0.6, not 1 - 0.4^4). Its scales and rotation are the covariance's
eigen-decomposition (descending, right-handed). The merged one's weight is its children's sum, so
``sum w``, ``sum w mean``, ``sum w colour`` and ``sum w (covariance + mean mean^T)`` over what is merged
are kept exactly. Gaussians not merged keep their values bit for bit. The output is in grid order (each
Gaussian where its first child was).

**Drop** (`keep_most_important`, for a scene not on its grid, e.g. a SOG file, whose Gaussians are in
Morton order; its importance also picks the hidden ones and scores the merge candidates): each Gaussian is
scored by what it shows in the photo's own view,

    importance = opacity * sqrt(min(projected area, image area)) * transmittance,

- projected area: its 1-sigma ellipse in pixels at the input camera, ``pi * sqrt(det S2)`` with
  ``S2 = J R diag(s^2) R^T J^T`` (J the pinhole Jacobian at its centre, f_px / z); on screen, not in
  metres, because SHARP's Gaussians grow with depth (one per input pixel);
- transmittance: the light left when its centre is reached, front to back, in cells of 8 x 8 pixels:
  ``prod (1 - a_j)`` over the Gaussians j nearer in the same cell, ``a_j = opacity_j * min(1, area_j / 64)``.
  A Gaussian behind an opaque surface (SHARP predicts a second layer behind the first) shows nothing;
- Gaussians behind the camera (z <= 0) or whose centre projects outside the image score 0.

A Gaussian adds opacity x footprint x transmittance to the pixels it covers, so this product ranks what
removing it would change. The square root of the area (instead of the area) and the 8-pixel cells were
measured: at a 25 % budget of a tiny-preset scene, PSNR at the input view against the full scene was 25.5
dB keeping the most opaque, 24.4 dB with opacity x area, 31.1 dB with opacity x transmittance, 35.1 dB with
opacity x area^0.75 x transmittance and 37.4 dB with this rule (large Gaussians overlap many others, so
their area overstates what they alone contribute). Orbit views stay near the input view, so the same
visibility mostly holds there. The kept Gaussians keep their original order.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from app.errors import InvalidRequestError
from app.gaussians import GaussianScene

CELL_PX = 8.0
"""Side in pixels of the cells in which transmittance is accumulated."""

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

BISECTIONS = 24
"""Bisection steps (on the logarithm of the price per Gaussian kept) that find the cut of the pyramid."""

GRID_LAYERS = (2, 1)
"""Layer counts `grid_of` tries (SHARP predicts two)."""

MaxGaussians = int | float
"""A budget: an int count >= 1, or a float fraction in (0, 1]."""

ACCEPTED = "a count from 1 to the number predicted, or a fraction in (0, 1]"
"""What a budget may be, in the words every refusal uses."""


class BudgetError(InvalidRequestError, ValueError):
    """A budget out of range: a 422 `validation_error`; also a ValueError, so that a form field's validator
    reports it with the field's location like any other bad field."""


def check_max_gaussians(max_gaussians: MaxGaussians | None) -> MaxGaussians | None:
    """`max_gaussians` if it may be a budget of some scene: None (keep all), an int >= 1 or a float in (0, 1].

    Each edge calls this (or `parse_max_gaussians`) where it parses its input; the count it cannot know yet
    is checked by `budget_count` (the pipeline does so before decoding the photo).

    Raises:
        BudgetError: naming the accepted range.
    """
    if max_gaussians is None:
        return None
    if isinstance(max_gaussians, Integral) and not isinstance(max_gaussians, bool) and max_gaussians >= 1:
        return int(max_gaussians)
    if isinstance(max_gaussians, Real) and not isinstance(max_gaussians, (bool, Integral)) \
            and math.isfinite(max_gaussians) and 0 < max_gaussians <= 1:
        return float(max_gaussians)
    raise BudgetError(f"max_gaussians must be {ACCEPTED}, got {max_gaussians!r}")


def parse_max_gaussians(text: str) -> MaxGaussians:
    """A budget as a user types it: digits are a count (``100000``), anything else a fraction (``0.25``).

    Raises:
        BudgetError: not a number, or out of range (see `check_max_gaussians`), naming the accepted range.
    """
    cleaned = text.strip()
    try:
        value: MaxGaussians = int(cleaned) if cleaned.lstrip("+-").isdigit() else float(cleaned)
    except ValueError:
        raise BudgetError(f"max_gaussians must be {ACCEPTED}, got {text!r}") from None
    checked = check_max_gaussians(value)
    assert checked is not None
    return checked


def budget_count(max_gaussians: MaxGaussians, num_gaussians: int) -> int:
    """The number of Gaussians a budget keeps out of `num_gaussians`.

    An int is a count (1 to `num_gaussians`); a float is a fraction in (0, 1] of `num_gaussians`, rounded
    to the nearest count and at least 1.

    Raises:
        BudgetError: anything else (0, negative, NaN, above the count, a fraction over 1, a bool), naming
            the accepted range.
    """
    accepted = BudgetError(f"max_gaussians must be a count from 1 to {num_gaussians:,} or a fraction in (0, 1], "
                           f"got {max_gaussians!r}")
    if isinstance(max_gaussians, bool):
        raise accepted
    if isinstance(max_gaussians, Integral):
        if not 1 <= int(max_gaussians) <= num_gaussians:
            raise accepted
        return int(max_gaussians)
    if isinstance(max_gaussians, Real) and math.isfinite(max_gaussians) and 0 < max_gaussians <= 1 \
            and num_gaussians >= 1:
        return max(1, min(num_gaussians, round(float(max_gaussians) * num_gaussians)))
    raise accepted


def rotation_matrices(rotations: np.ndarray) -> np.ndarray:
    """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) float64 rotation matrices."""
    q = np.asarray(rotations, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    w, x, y, z = q.T
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=1).reshape(-1, 3, 3)


UPPER = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
"""The entries of a symmetric 3 x 3 matrix kept in its 6-vector form (xx, xy, xz, yy, yz, zz)."""


def covariances(scene: GaussianScene) -> np.ndarray:
    """(N, 6) float64 covariances R diag(s^2) R^T in metres^2, as upper triangles (`UPPER`)."""
    scaled = rotation_matrices(scene.rotations) * np.asarray(scene.scales, dtype=np.float64)[:, None, :]
    return np.stack([np.einsum("nk,nk->n", scaled[:, i], scaled[:, j]) for i, j in UPPER], axis=1)


def full_matrices(upper: np.ndarray) -> np.ndarray:
    """(N, 6) upper triangles (`UPPER`) -> (N, 3, 3) symmetric matrices."""
    return upper[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(-1, 3, 3)


def screen_areas(positions: np.ndarray, covariance: np.ndarray, f_px: float) -> np.ndarray:
    """(N,) float64 area in pixels of the 1-sigma ellipses of Gaussians with (N, 3) centres and (N, 6)
    covariances (`UPPER`) at a pinhole camera at the origin of focal length `f_px` (0 behind the camera):
    ``pi * sqrt(det(J covariance J^T))``, J = [[a, 0, b], [0, a, c]] the pinhole Jacobian at the centre."""
    px, py, pz = np.asarray(positions, dtype=np.float64).T
    xx, xy, xz, yy, yz, zz = np.asarray(covariance, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.where(pz > 0, f_px / pz, 0.0)
        b, c = -a * px * a / f_px, -a * py * a / f_px
        s00 = a * a * xx + 2 * a * b * xz + b * b * zz
        s11 = a * a * yy + 2 * a * c * yz + c * c * zz
        s01 = a * a * xy + a * c * xz + a * b * yz + b * c * zz
        areas = math.pi * np.sqrt(np.maximum(s00 * s11 - s01 * s01, 0.0))
    return np.nan_to_num(areas, nan=0.0, posinf=0.0)


def projected_areas(scene: GaussianScene) -> np.ndarray:
    """(N,) float64 area in pixels of each Gaussian's 1-sigma ellipse at the input view (0 behind the camera)."""
    return screen_areas(scene.positions, covariances(scene), scene.f_px)


def transmittance(scene: GaussianScene, opacity: np.ndarray, areas: np.ndarray,
                  cell: float = CELL_PX) -> np.ndarray:
    """(N,) float64 light left at each Gaussian's centre, front to back within `cell`-pixel cells (0 when
    its centre is behind the camera or outside the image)."""
    x, y, z = np.asarray(scene.positions, dtype=np.float64).T
    ahead = np.isfinite(x) & np.isfinite(y) & (z > 0)
    safe_z = np.where(ahead, z, 1.0)
    column = np.floor((scene.f_px * np.where(ahead, x, 0) / safe_z + scene.image_width / 2) / cell)
    row = np.floor((scene.f_px * np.where(ahead, y, 0) / safe_z + scene.image_height / 2) / cell)
    columns, rows = math.ceil(scene.image_width / cell), math.ceil(scene.image_height / cell)
    inside = ahead & (column >= 0) & (column < columns) & (row >= 0) & (row < rows)
    cell_id = np.where(inside, row * columns + column, -1).astype(np.int64)
    alpha = np.clip(opacity * np.minimum(1.0, areas / (cell * cell)), 0.0, 0.999)
    order = np.lexsort((np.where(ahead, z, np.inf), cell_id))
    log_clear = np.log1p(-alpha[order])
    total = np.cumsum(log_clear)
    ids = cell_id[order]
    first = np.maximum.accumulate(np.where(np.r_[True, ids[1:] != ids[:-1]], np.arange(ids.size), 0))
    before = total - log_clear - (total[first] - log_clear[first])  # sum over the nearer ones in the cell
    light = np.empty_like(alpha)
    light[order] = np.exp(before)
    return np.where(inside, light, 0.0)


def importance(scene: GaussianScene) -> np.ndarray:
    """(N,) float64 opacity * sqrt(min(projected area, image area)) * transmittance (module docstring)."""
    image_area = float(max(scene.image_width, 1) * max(scene.image_height, 1))
    opacity = np.clip(np.nan_to_num(np.asarray(scene.opacities, dtype=np.float64), nan=0.0), 0.0, 1.0)
    areas = np.minimum(projected_areas(scene), image_area)
    return opacity * np.sqrt(areas) * transmittance(scene, opacity, areas)


def keep_most_important(scene: GaussianScene, max_gaussians: MaxGaussians | None) -> GaussianScene:
    """The scene with only its `budget_count` most important Gaussians, in their original order.

    None keeps every Gaussian (the scene itself). Among equal scores the earlier ones are kept.

    Raises:
        BudgetError: a budget outside the accepted range (see `budget_count`).
    """
    if max_gaussians is None:
        return scene
    n = scene.num_gaussians
    k = budget_count(max_gaussians, n)
    if k == n:
        return scene
    scores = importance(scene)
    ranked = np.argsort(-scores, kind="stable")[:k]
    return scene.select(np.sort(ranked))


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
    # The pyramid: level 0 the leaves; a node of level l a run of similar depth among the nodes of level l - 1
    # in one block of 2^l x 2^l grid cells of one layer; parents[l - 1] maps each node of l - 1 to its node.
    sums = level_sums(scene, keep, weight[keep], score[keep])
    levels, costs, parents = [sums], [np.zeros(keep.size)], []
    layer, row, column = keep // (side * side), (keep // side) % side, keep % side
    pitch = math.sqrt(image_area) / side
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
    # The cut: the smallest price per Gaussian kept whose cut keeps at least the count (bisection in log).
    positive = np.concatenate([cost[cost > 0] for cost in costs])
    low = math.log(positive.min()) - 1 if positive.size else 0.0
    high = math.log(positive.sum()) + 1 if positive.size else 1.0
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        count, _ = pyramid_cut(costs, parents, math.exp(middle))
        if count == target:
            low = middle
            break
        low, high = (middle, high) if count > target else (low, middle)
    count, merged = pyramid_cut(costs, parents, math.exp(low))
    if count < target:  # only where merges of no cost (identical centres and colours) overshoot
        count, merged = pyramid_cut(costs, parents, 0.0)
    # The cut's count moves in steps: where it keeps more than the count, merge more of the nodes all of whose
    # children are in the cut, those losing least per Gaussian saved first, without going under the count.
    in_cut = cut_members(merged, parents)
    excess = sum(int(mask.sum()) for mask in in_cut) - target
    if excess > 0:
        candidates = []  # (level, its nodes ready to merge, Gaussians each saves, loss per Gaussian saved)
        for level in range(1, len(levels)):
            parent, size = parents[level - 1], costs[level].size
            children = np.bincount(parent, minlength=size)
            whole = np.bincount(parent, in_cut[level - 1], size) == children
            below = np.bincount(parent, np.where(in_cut[level - 1], costs[level - 1], 0.0), size)
            ready = np.flatnonzero(whole & (children > 1) & ~merged[level])
            saves = children[ready] - 1
            candidates.append((level, ready, saves, (costs[level][ready] - below[ready]) / saves))
        saved = np.concatenate([candidate[2] for candidate in candidates])
        rank = np.argsort(np.concatenate([candidate[3] for candidate in candidates]), kind="stable")
        take = np.zeros(saved.size, dtype=bool)
        take[rank[:int(np.searchsorted(np.cumsum(saved[rank]), excess, side="right"))]] = True
        offset = 0
        for level, ready, _, _ in candidates:
            merged[level][ready[take[offset:offset + ready.size]]] = True
            offset += ready.size
        in_cut = cut_members(merged, parents)
    chosen = list(zip(levels, in_cut, strict=True))
    nodes = {name: np.concatenate([sums[name][mask] for sums, mask in chosen]) for name in ("w", "wp", "wpp", "wc",
                                                                                         "i", "leaves", "first")}
    # The few still over the count go by importance, least first.
    excess = nodes["first"].size - target
    keep_nodes = np.argsort(nodes["i"], kind="stable")[excess:] if excess > 0 else np.arange(nodes["first"].size)
    nodes = {name: values[np.sort(keep_nodes)] for name, values in nodes.items()}
    order = np.argsort(nodes["first"], kind="stable")
    return _scene_of({name: values[order] for name, values in nodes.items()}, scene)


def pyramid_cut(costs: list[np.ndarray], parents: list[np.ndarray], price: float) -> tuple[int, list[np.ndarray]]:
    """The cut of the pyramid that minimises total cost + `price` x Gaussians kept (bottom up: a node merges
    where its cost plus one price is under the best of its children's).

    Args:
        costs: per level, (G_l,) each node's cost (`node_costs`; level 0 the leaves, 0).
        parents: per level l >= 1, (G_{l-1},) the node of level l of each node of level l - 1.
        price: the cost of keeping one Gaussian more.

    Returns:
        (the cut's count of Gaussians, per level the (G_l,) bool of nodes that merge; level 0's is None).
    """
    best = np.full(costs[0].size, price)
    count = np.ones(costs[0].size)
    merges: list[np.ndarray] = [np.zeros(0, dtype=bool)]
    for cost, parent in zip(costs[1:], parents, strict=True):
        children_best = np.bincount(parent, best, cost.size)
        children_count = np.bincount(parent, count, cost.size)
        merge = cost + price < children_best
        best = np.where(merge, cost + price, children_best)
        count = np.where(merge, 1.0, children_count)
        merges.append(merge)
    return int(count.sum()), merges


def cut_members(merges: list[np.ndarray], parents: list[np.ndarray]) -> list[np.ndarray]:
    """Per level, the (G_l,) bool of the nodes in the cut (`pyramid_cut`'s merges): those that merge with no
    node above them merging, and the leaves (level 0) under no merging node."""
    covered = np.zeros(merges[-1].size, dtype=bool)
    members = []
    for level in range(len(merges) - 1, 0, -1):
        members.append(merges[level] & ~covered)
        covered = (covered | merges[level])[parents[level - 1]]
    members.append(~covered)
    return members[::-1]


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


def merged_gaussians(scene: GaussianScene, weight: np.ndarray, wp: np.ndarray, wpp: np.ndarray,
                     wc: np.ndarray) -> tuple[np.ndarray, ...]:
    """The Gaussians that keep the moments of what each merges (module docstring), from their sums: (M,)
    ``w``, (M, 3) ``w x centre``, (M, 6) ``w x (covariance + centre centre^T)`` (`UPPER`), (M, 3) ``w x
    colour``. Returns their (M, 3) positions, (M, 3) scales, (M, 4) rotations, (M, 3) colours, (M,) opacities
    (float64; opacity = w / the merged one's projected area at `scene`'s camera, at most 1)."""
    mean = wp / weight[:, None]
    covariance = wpp / weight[:, None] - np.stack([mean[:, i] * mean[:, j] for i, j in UPPER], axis=1)
    image_area = float(max(scene.image_width, 1) * max(scene.image_height, 1))
    area = np.minimum(screen_areas(mean, covariance, scene.f_px), image_area)
    variances, axes = np.linalg.eigh(full_matrices(covariance))
    variances, axes = variances[:, ::-1], axes[:, :, ::-1].copy()  # descending
    axes[np.linalg.det(axes) < 0, :, 2] *= -1  # right-handed: a rotation
    return (mean, np.sqrt(np.maximum(variances, 0.0)), matrices_to_quaternions(axes), wc / weight[:, None],
            np.clip(weight / np.maximum(area, 1e-12), 0.0, 1.0))


COARSE_BLOCK = 4
"""Side in grid cells of the blocks `coarse_level` merges into one Gaussian (16 into 1)."""


def coarse_level(scene: GaussianScene, block: int = COARSE_BLOCK) -> GaussianScene:
    """A coarse level of detail of the scene, fast (one fixed level of the pyramid, no cut, no loop).

    On its grid (`grid_of`, side a multiple of `block`), each `block` x `block` block of a layer is merged
    into one Gaussian that keeps its members' moments (module docstring), or into two where its depths span
    more than ``SLOPE x block x pitch / f_px`` (relative): those nearer than the middle of its log-depth range
    and those farther, so that a foreground edge is not smeared into the background behind it (one Gaussian
    over both would be a streak along the line of sight). Block by block, near before far: between
    ``num_gaussians / block^2`` and twice that. Off the grid: its ``1 / block^2`` most important
    (`keep_most_important`)."""
    grid = grid_of(scene)
    n = scene.num_gaussians
    if block <= 1 or n <= 1:
        return scene
    if grid is None or grid[1] % block:
        return keep_most_important(scene, max(1, n // (block * block)))
    layers, side = grid
    cells = side // block
    members = np.arange(n).reshape(layers, cells, block, cells, block).transpose(0, 1, 3, 2, 4)
    members = members.reshape(-1, block * block)  # (blocks, block^2) indices, block by block
    position = np.asarray(scene.positions, dtype=np.float64)
    covariance = covariances(scene)
    opacity = np.clip(np.nan_to_num(np.asarray(scene.opacities, dtype=np.float64), nan=0.0), 0.0, 1.0)
    # 1e-12: a group whose members add nothing (transparent, behind the camera) still gets a finite mean.
    weight = opacity * screen_areas(position, covariance, scene.f_px) + 1e-12
    log_depth = np.log(np.clip(np.nan_to_num(position[members, 2], nan=1e-6), 1e-6, None))
    low, high = log_depth.min(axis=1, keepdims=True), log_depth.max(axis=1, keepdims=True)
    gap = math.log1p(SLOPE * block * (scene.image_width / side) / scene.f_px)
    far = (high - low > gap) & (log_depth > (low + high) / 2)
    group = (2 * np.arange(members.shape[0])[:, None] + far).ravel()  # (blocks x block^2,) near, far per block
    used, group = np.unique(group, return_inverse=True)
    member = members.ravel()
    w = weight[member]

    def total(values: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(group, w * values[member, k], used.size) for k in range(values.shape[1])], axis=1)

    second = covariance + np.stack([position[:, i] * position[:, j] for i, j in UPPER], axis=1)
    positions, scales, rotations, colors, opacities = merged_gaussians(
        scene, np.bincount(group, w, used.size), total(position), total(second),
        total(np.asarray(scene.colors, dtype=np.float64)))
    return GaussianScene(positions=positions.astype(np.float32), scales=scales.astype(np.float32),
                         rotations=rotations.astype(np.float32), colors=colors.astype(np.float32),
                         opacities=opacities.astype(np.float32), f_px=scene.f_px, image_width=scene.image_width,
                         image_height=scene.image_height)


def matrices_to_quaternions(rotations: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices -> (N, 4) unit quaternions (w, x, y, z), w >= 0 (Shepperd's method: each
    row from its largest component, for accuracy)."""
    r = rotations
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    four_squares = np.stack([1 + trace, 1 + 2 * r[:, 0, 0] - trace, 1 + 2 * r[:, 1, 1] - trace,
                             1 + 2 * r[:, 2, 2] - trace], axis=1)  # 4w^2, 4x^2, 4y^2, 4z^2
    wx, wy, wz = r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]
    xy, xz, yz = r[:, 0, 1] + r[:, 1, 0], r[:, 0, 2] + r[:, 2, 0], r[:, 1, 2] + r[:, 2, 1]
    candidates = np.stack([
        np.stack([four_squares[:, 0], wx, wy, wz], axis=1),
        np.stack([wx, four_squares[:, 1], xy, xz], axis=1),
        np.stack([wy, xy, four_squares[:, 2], yz], axis=1),
        np.stack([wz, xz, yz, four_squares[:, 3]], axis=1),
    ], axis=1)
    q = candidates[np.arange(r.shape[0]), np.argmax(four_squares, axis=1)]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.where(q[:, :1] < 0, -1.0, 1.0)

"""A splat budget: fewer Gaussians, up to a count or a fraction, by merging neighbours and dropping the rest.

Two rules, both vectorised (numpy; no loop over Gaussians):

**Merge** (`merge_to_budget`, what `apply_budget` uses for a scene on its grid). SHARP predicts its
Gaussians on a square grid over the photo, ``layers x side x side`` (2 x 768 x 768 at full size, 2 x 256 x
256 for `tiny`), stored layer by layer, row by row (index = (layer * side + row) * side + column).
`grid_of` recognises that layout from the count and from the centres (each projects near its cell at the
input view). First the least important go: those whose importance (below) is under ``DROP_BELOW`` x the
mean, least important first, at most as many as the budget removes (the second layer where the first hides
it, and faint ones: dropping them costs the image little, merging them would smear them into what is seen).
Then the budget climbs a pyramid of that grid: at level l the cells are blocks of 2^l x 2^l grid
cells, one layer at a time. In a block, the Gaussians (of the level below) are sorted by depth and split
where a depth gap exceeds ``SLOPE x 2^l x pitch / f_px`` of the depth (pitch: a grid cell in pixels),
so that a foreground edge never merges with the background behind it; each run of similar depth is one
merge candidate, costing ``sum importance_i x |colour_i - merged colour|^2`` (the colour detail lost where
the photo looks at it). The cheapest candidates merge first, a level at a time, until the count is
reached; the few left over at the last level (fewer than one block) are dropped by importance.

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

DROP_BELOW = 1.0
"""Gaussians whose importance is under this fraction of the mean are dropped before any merge (at most as
many as the budget removes): SHARP's second layer where the first hides it, and faint ones (measured,
docs/formats.md)."""

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


def merge_moments(weights: np.ndarray, positions: np.ndarray, covariance: np.ndarray, colors: np.ndarray,
                  groups: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge Gaussians by group, keeping their weighted moments (module docstring).

    Args:
        weights: (N,) > 0, opacity x projected area in pixels.
        positions: (N, 3) metres. covariance: (N, 6) metres^2 (`UPPER`). colors: (N, 3).
        groups: (N,) int, the group of each, in [0, num_groups); every group non-empty.

    Returns:
        (num_groups,) weights (the sums), (num_groups, 3) means, (num_groups, 6) covariances (the
        children's plus the spread of their means) and (num_groups, 3) colours, all float64.
    """
    total = np.bincount(groups, weights, num_groups)

    def mean(values: np.ndarray) -> np.ndarray:  # (N, C) -> (G, C) weighted means
        return np.stack([np.bincount(groups, weights * values[:, c], num_groups) for c in range(values.shape[1])],
                        axis=1) / total[:, None]

    means = mean(positions)
    spread = positions - means[groups]
    second = covariance + np.stack([spread[:, i] * spread[:, j] for i, j in UPPER], axis=1)
    return total, means, mean(second), mean(colors)


def merge_to_budget(scene: GaussianScene, max_gaussians: MaxGaussians, grid: tuple[int, int], *,
                    drop_below: float = DROP_BELOW) -> GaussianScene:
    """The scene merged up its grid's pyramid to exactly `budget_count` Gaussians (module docstring).

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
    positions = np.asarray(scene.positions, dtype=np.float64)
    covariance = covariances(scene)
    areas = np.minimum(screen_areas(positions, covariance, scene.f_px), image_area)
    # The Gaussians of the current level (float64), and where each came from.
    nodes = {
        "position": positions,
        "covariance": covariance,
        "color": np.asarray(scene.colors, dtype=np.float64),
        "weight": np.maximum(opacity * areas, 1e-12),
        "importance": opacity * np.sqrt(areas) * transmittance(scene, opacity, areas),
        "first": np.arange(n),  # the first (lowest) index of the Gaussians merged into it: the output order
        "source": np.arange(n),  # its index in `scene` if it is one of its Gaussians unchanged, else -1
    }
    # The least important first (under drop_below x the mean), then merges.
    importance_all = nodes["importance"]
    dropped = min(n - target, int(np.count_nonzero(importance_all < drop_below * importance_all.mean())))
    if dropped:
        visible = np.sort(np.argsort(importance_all, kind="stable")[dropped:])
        nodes = {name: values[visible] for name, values in nodes.items()}
    index = nodes["first"]
    layer, row, column = index // (side * side), (index // side) % side, index % side
    pitch = math.sqrt(image_area) / side
    level = 0
    while nodes["first"].size > target and (side >> level) > 1:
        level += 1
        cells = side >> level
        row, column = row >> 1, column >> 1
        block = (layer * cells + row) * cells + column
        # Runs of similar depth within each block, contiguous once sorted by block then depth: the candidates.
        depth = np.nan_to_num(nodes["position"][:, 2], nan=0.0, posinf=0.0, neginf=0.0)
        span = max(float(depth.max() - depth.min()), 1e-30)
        order = np.argsort(block + 0.5 * (depth - depth.min()) / span, kind="stable")
        sorted_depth, sorted_block = depth[order], block[order]
        tolerance = SLOPE * 2**level * pitch / scene.f_px
        starts = np.flatnonzero(np.r_[True, (sorted_block[1:] != sorted_block[:-1])
                                      | (sorted_depth[1:] > sorted_depth[:-1] * (1 + tolerance))])
        size = np.diff(np.r_[starts, order.size])
        group = np.empty_like(order)
        group[order] = np.repeat(np.arange(starts.size), size)
        # The colour each candidate would have, and the detail it would lose.
        weight = nodes["weight"]
        total = np.add.reduceat(weight[order], starts)
        color = np.add.reduceat((weight[:, None] * nodes["color"])[order], starts, axis=0) / total[:, None]
        lost = nodes["importance"] * np.sum((nodes["color"] - color[group]) ** 2, axis=1)
        cost = np.where(size > 1, np.add.reduceat(lost[order], starts), np.inf)
        # The cheapest candidates, as many as the count allows (each removes size - 1 Gaussians).
        ranked = np.argsort(cost, kind="stable")
        removed = np.cumsum(size[ranked] - 1)
        mergeable = int(np.count_nonzero(size > 1))
        chosen_count = min(mergeable, int(np.searchsorted(removed, nodes["first"].size - target, side="right")))
        chosen = np.zeros(starts.size, dtype=bool)
        chosen[ranked[:chosen_count]] = True
        members = chosen[group]
        renumbered = np.cumsum(chosen) - 1
        weight, mean, merged_covariance, merged_color = merge_moments(
            weight[members], nodes["position"][members], nodes["covariance"][members], nodes["color"][members],
            renumbered[group[members]], chosen_count)
        merged = {
            "position": mean, "covariance": merged_covariance, "color": merged_color, "weight": weight,
            "importance": np.add.reduceat(nodes["importance"][order], starts)[chosen],
            "first": np.minimum.reduceat(nodes["first"][order], starts)[chosen],
            "source": np.full(chosen_count, -1),
        }
        stays = np.flatnonzero(~members)
        nodes = {name: np.concatenate([np.take(values, stays, axis=0), merged[name]])
                 for name, values in nodes.items()}
        merged_block = sorted_block[starts][chosen]
        layer = np.concatenate([layer[stays], merged_block // (cells * cells)])
        row = np.concatenate([row[stays], (merged_block // cells) % cells])
        column = np.concatenate([column[stays], merged_block % cells])
        if chosen_count < mergeable:
            break
    excess = nodes["first"].size - target
    keep = np.argsort(nodes["importance"], kind="stable")[excess:] if excess > 0 else slice(None)
    nodes = {name: values[keep] for name, values in nodes.items()}
    order = np.argsort(nodes["first"], kind="stable")
    nodes = {name: values[order] for name, values in nodes.items()}
    return _scene_of(nodes, scene)


def _scene_of(nodes: dict[str, np.ndarray], scene: GaussianScene) -> GaussianScene:
    """The GaussianScene of the merged nodes: originals unchanged, merged ones from their moments (opacity:
    their weight over the projected area of their covariance, at most 1)."""
    source = nodes["source"]
    original = source >= 0
    kept = source[original]
    merged = ~original
    positions = np.empty((source.size, 3), dtype=np.float32)
    scales = np.empty((source.size, 3), dtype=np.float32)
    rotations = np.empty((source.size, 4), dtype=np.float32)
    colors = np.empty((source.size, 3), dtype=np.float32)
    opacities = np.empty(source.size, dtype=np.float32)
    positions[original], scales[original], rotations[original] = (
        scene.positions[kept], scene.scales[kept], scene.rotations[kept])
    colors[original], opacities[original] = scene.colors[kept], scene.opacities[kept]
    covariance = nodes["covariance"][merged]
    image_area = float(max(scene.image_width, 1) * max(scene.image_height, 1))
    area = np.minimum(screen_areas(nodes["position"][merged], covariance, scene.f_px), image_area)
    variances, axes = np.linalg.eigh(full_matrices(covariance))
    variances, axes = variances[:, ::-1], axes[:, :, ::-1].copy()  # descending
    axes[np.linalg.det(axes) < 0, :, 2] *= -1  # right-handed: a rotation
    positions[merged], colors[merged] = nodes["position"][merged], nodes["color"][merged]
    scales[merged] = np.sqrt(np.maximum(variances, 0.0))
    rotations[merged] = matrices_to_quaternions(axes)
    opacities[merged] = np.clip(nodes["weight"][merged] / np.maximum(area, 1e-12), 0.0, 1.0)
    return GaussianScene(positions=positions, scales=scales, rotations=rotations, colors=colors, opacities=opacities,
                         f_px=scene.f_px, image_width=scene.image_width, image_height=scene.image_height)


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

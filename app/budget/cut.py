"""The cut of a merging pyramid (`app.budget.pyramid`) that keeps a budget: each leaf under exactly one node
of the cut, chosen per region, not per level.

For a price per Gaussian kept, bottom up, a node merges where its cost plus one price is under the best of
its children's (`pyramid_cut`: a flat region merges into a few large Gaussians, a detailed one keeps its
own); the price is found by bisection so that the cut keeps the count or a little more (`choose_cut`; each
step counts on the pyramid with its nodes that can never merge folded away, `fold_pyramid`, `cut_count`).
Where it keeps more (the count moves in steps), the nodes all of whose children are in the cut merge too,
those losing least per Gaussian saved first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BISECTIONS = 24
"""Bisection steps (on the logarithm of the price per Gaussian kept) that find the cut of the pyramid."""



def choose_cut(costs: list[np.ndarray], parents: list[np.ndarray], target: int) -> list[np.ndarray]:
    """The cut that keeps `target` Gaussians or, where merges alone cannot reach it, the fewest above it
    (module docstring).

    Args:
        costs: per level, (G_l,) each node's cost (`app.budget.pyramid.node_costs`; level 0 the leaves, 0).
        parents: per level l >= 1, (G_{l-1},) the node of level l of each node of level l - 1.
        target: the count to keep.

    Returns:
        Per level, the (G_l,) bool of the nodes in the cut (`cut_members`).
    """
    # The smallest price per Gaussian kept whose cut keeps at least the count (bisection in log).
    positive = np.concatenate([cost[cost > 0] for cost in costs])
    low = math.log(positive.min()) - 1 if positive.size else 0.0
    high = math.log(positive.sum()) + 1 if positive.size else 1.0
    folded = fold_pyramid(costs, parents)
    for _ in range(BISECTIONS):
        middle = 0.5 * (low + high)
        count = cut_count(folded, math.exp(middle))
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
        for level in range(1, len(costs)):
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
    return in_cut


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


@dataclass(frozen=True)
class FoldedLevel:
    """One level of a `FoldedPyramid`: its K nodes that stay and their C children (in `pyramid_cut`'s order),
    of which I are not leaves.

    Attributes:
        parent: (C,) each child's node among the K. inner: (I,) which children are not leaves, and
            inner_ids: (I,) their ids among the nodes above level 0. leaves: (K,) each node's leaf children, as
            a float. costs: (K,) the nodes' costs.
    """

    parent: np.ndarray
    inner: np.ndarray
    inner_ids: np.ndarray
    leaves: np.ndarray
    costs: np.ndarray


@dataclass(frozen=True)
class FoldedPyramid:
    """A pyramid (`pyramid_cut`'s costs and parents) with each node that can never merge folded into its only
    child: a node of one child whose cost is at least its child's (in `app.budget.pyramid`, every node of one
    child: it has its child's sums). Such a node's best and count in `pyramid_cut` are its child's, bit for bit
    (its cost plus the price is never under its child's best), so `cut_count` computes them once.

    Attributes:
        levels: per level l >= 1, its nodes that stay (ids above level 0: 0, 1, ..., level by level).
        top: the top level's nodes: their ids above level 0, -1 for a leaf.
    """

    levels: list[FoldedLevel]
    top: np.ndarray


def fold_pyramid(costs: list[np.ndarray], parents: list[np.ndarray]) -> FoldedPyramid:
    """The pyramid of `costs` and `parents` (`pyramid_cut`) with its nodes that never merge folded (see
    `FoldedPyramid`)."""
    ids, below_costs = np.full(costs[0].size, -1), costs[0]  # -1: a leaf
    next_id = 0
    levels = []
    for cost, parent in zip(costs[1:], parents, strict=True):
        children = np.bincount(parent, minlength=cost.size)
        only_child = np.zeros(cost.size, dtype=np.int64)
        only_child[parent] = np.arange(parent.size)  # a node's last child; its only one where it has one
        folds = (children == 1) & (cost >= below_costs[only_child])
        stays = ~folds
        size = int(np.count_nonzero(stays))
        level_ids = np.empty(cost.size, dtype=np.int64)
        level_ids[folds] = ids[only_child[folds]]
        level_ids[stays] = next_id + np.arange(size)
        child_ids = ids[np.flatnonzero(stays[parent])]  # ascending: the order bincount adds them in pyramid_cut
        child_parent = (np.cumsum(stays) - 1)[parent[stays[parent]]]
        inner = np.flatnonzero(child_ids >= 0)
        leaves = np.bincount(child_parent[child_ids < 0], minlength=size).astype(np.float64)
        levels.append(FoldedLevel(child_parent, inner, child_ids[inner], leaves, cost[stays]))
        next_id += size
        ids, below_costs = level_ids, cost
    return FoldedPyramid(levels, ids)


def cut_count(folded: FoldedPyramid, price: float) -> int:
    """`pyramid_cut`'s count of Gaussians at `price` (> 0), bit for bit, on the folded pyramid."""
    size = sum(level.costs.size for level in folded.levels)
    best, count = np.empty(size), np.empty(size)
    start = 0
    for level in folded.levels:
        values = np.full(level.parent.size, price)  # a leaf's best: the price
        values[level.inner] = best[level.inner_ids]
        children_best = np.bincount(level.parent, values, level.costs.size)
        inner_count = np.bincount(level.parent[level.inner], count[level.inner_ids], level.costs.size)
        merge = level.costs + price < children_best
        best[start:start + level.costs.size] = np.where(merge, level.costs + price, children_best)
        count[start:start + level.costs.size] = np.where(merge, 1.0, level.leaves + inner_count)
        start += level.costs.size
    return int(np.where(folded.top >= 0, count[folded.top], 1.0).sum())


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

"""The cut of a merging pyramid (`app.budget.pyramid`) that keeps a budget: each leaf under exactly one node
of the cut, chosen per region, not per level.

For a price per Gaussian kept, bottom up, a node merges where its cost plus one price is under the best of
its children's (`pyramid_cut`: a flat region merges into a few large Gaussians, a detailed one keeps its
own); the price is found by bisection so that the cut keeps the count or a little more (`choose_cut`).
Where it keeps more (the count moves in steps), the nodes all of whose children are in the cut merge too,
those losing least per Gaussian saved first.
"""

from __future__ import annotations

import math

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

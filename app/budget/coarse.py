"""A coarse level of detail of a scene (`coarse_level`, the ``coarse`` output: what the page shows first),
made fast: one fixed level of the merging pyramid, no cut, no loop."""

from __future__ import annotations

import math

import numpy as np

from app.budget.importance import keep_most_important
from app.budget.moments import UPPER, covariances, merged_gaussians, screen_areas
from app.budget.pyramid import SLOPE, grid_of
from app.gaussians import GaussianScene

COARSE_BLOCK = 8
"""Side in grid cells of the blocks `coarse_level` merges into one Gaussian (64 into 1): at full size 1/64 to
1/32 of the Gaussians, a file of about 0.6 MB that Spark shows in about 2 s in software WebGL (16 into 1: 2.4 MB,
about 7 s; docs/page.md "Levels of detail")."""


def coarse_level(scene: GaussianScene, block: int = COARSE_BLOCK) -> GaussianScene:
    """A coarse level of detail of the scene, fast (one fixed level of the pyramid, no cut, no loop).

    On its grid (`grid_of`, side a multiple of `block`), each `block` x `block` block of a layer is merged
    into one Gaussian that keeps its members' moments (`app.budget.moments`), or into two where its depths span
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
    present = np.zeros(2 * members.shape[0], dtype=bool)  # the groups that have members, numbered in order
    present[group] = True
    used, group = np.flatnonzero(present), (np.cumsum(present) - 1)[group]
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

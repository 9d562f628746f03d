"""Scale alignment of a clip's scenes: each frame's Gaussians scaled about the camera so that its depths
agree with the previous frame's.

A single photo's metric scale is a guess, and the guess wobbles from frame to frame; the wobble shows as a
scene that breathes. The rule (`align=scale`):

1. Each scene's depth map on a coarse grid (`depth_grid`): the image is cut into `GRID_CELLS` cells on its
   longer side (square cells), each Gaussian of opacity >= `MIN_OPACITY` falls in the cell its centre
   projects to (pinhole, the scene's `f_px`, principal point at the image centre), and a cell's depth is the
   median camera-space z of its Gaussians (NaN: no Gaussian).
2. The ratio of frame k-1's depth to frame k's, cell by cell, over the cells with a depth in both; its median
   is the step r_k (1 when the frames share no cell). Both grids are the raw predictions', so a step never
   depends on how earlier frames were scaled.
3. The factor chains: s_0 = 1, s_k = s_{k-1} * r_k. Frame k's positions and scales are multiplied by s_k
   (rotations, colours, opacities and the camera stay).

A frame repeated gives ratios of exactly 1, so its factor is exactly 1 and its files are the unscaled
prediction's. The steps only need each frame's raw grid, so frames predicted in any order (in parallel)
are aligned afterwards, in order, to the same factors.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from app.gaussians import GaussianScene
from app.prediction import Prediction

GRID_CELLS = 64
"""Cells on the longer side of the image."""
MIN_OPACITY = 0.5
"""Gaussians fainter than this do not count towards a cell's depth."""


def depth_grid(scene: GaussianScene, cells: int = GRID_CELLS) -> np.ndarray:
    """(rows, cols) float64 depths in metres of `scene` on the grid of rule 1 (NaN where no Gaussian)."""
    width, height = scene.image_width, scene.image_height
    cell_px = max(width, height) / cells
    cols, rows = max(1, round(width / cell_px)), max(1, round(height / cell_px))
    positions = scene.positions.astype(np.float64)
    z = positions[:, 2]
    visible = (scene.opacities >= MIN_OPACITY) & (z > 0) & np.isfinite(z)
    x, y, z = positions[visible, 0], positions[visible, 1], z[visible]
    u = scene.f_px * x / z + width / 2
    v = scene.f_px * y / z + height / 2
    column = np.floor(u / width * cols).astype(np.int64)
    row = np.floor(v / height * rows).astype(np.int64)
    inside = (column >= 0) & (column < cols) & (row >= 0) & (row < rows)
    cell, z = (row * cols + column)[inside], z[inside]
    grid = np.full(rows * cols, np.nan)
    if cell.size:
        order = np.lexsort((z, cell))
        cell, z = cell[order], z[order]
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        counts = np.diff(np.r_[starts, cell.size])
        lower = z[starts + (counts - 1) // 2]
        upper = z[starts + counts // 2]
        grid[cell[starts]] = (lower + upper) / 2
    return grid.reshape(rows, cols)


def scale_step(previous: np.ndarray, current: np.ndarray) -> float:
    """r_k of rule 2: the median of previous / current over the cells with a depth in both (1.0 if none)."""
    if previous.shape != current.shape:
        return 1.0
    shared = np.isfinite(previous) & np.isfinite(current) & (current > 0)
    if not shared.any():
        return 1.0
    return float(np.median(previous[shared] / current[shared]))


def scaled(prediction: Prediction, factor: float) -> Prediction:
    """The prediction with its Gaussians scaled by `factor` about the camera (the same object if 1)."""
    if factor == 1.0:
        return prediction
    scene = prediction.scene
    scene = dataclasses.replace(scene, positions=(scene.positions * np.float32(factor)).astype(np.float32),
                                scales=(scene.scales * np.float32(factor)).astype(np.float32))
    return dataclasses.replace(prediction, scene=scene)


class ScaleChain:
    """Rule 3 over a clip's frames in order: `chain(prediction)` is the frame scaled by its factor, which is
    then `chain.factor`."""

    def __init__(self) -> None:
        self.factor = 1.0
        self._previous: np.ndarray | None = None

    def step(self, grid: np.ndarray) -> float:
        """The factor of the next frame, whose raw depth grid is `grid`."""
        if self._previous is not None:
            self.factor *= scale_step(self._previous, grid)
        self._previous = grid
        return self.factor

    def __call__(self, prediction: Prediction) -> Prediction:
        return scaled(prediction, self.step(depth_grid(prediction.scene)))

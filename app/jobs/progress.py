"""A job's progress: how far it is in [0, 1], from the stage it is in (and, for a clip, the frame)."""

from __future__ import annotations

STAGE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("decode", 0.02), ("preprocess", 0.02), ("forward", 0.88), ("postprocess", 0.03), ("encode", 0.05),
)
"""The share of a job's progress each stage covers, in order; the forward pass is ~90 % of the time on
any device, the rest is small (measured: postprocess is 2 % of the forward on CPU, encoding less)."""

_STAGE_START = {name: sum(w for _, w in STAGE_WEIGHTS[:i]) for i, (name, _) in enumerate(STAGE_WEIGHTS)}
_STAGE_WEIGHT = dict(STAGE_WEIGHTS)


def overall_progress(stage: str, fraction: float, frame: int | None = None, frames: int | None = None) -> float:
    """A job's progress in [0, 1] when `stage` is `fraction` done; for a clip, of frame `frame` (1-based) of
    `frames` (each frame an equal share; its preview render counts as the end of its encode)."""
    if frame is not None and frames:
        within = 1.0 if stage == "preview" else overall_progress(stage, fraction)
        return min(1.0, (frame - 1 + within) / frames)
    if stage not in _STAGE_START:
        return 0.0
    return min(1.0, _STAGE_START[stage] + _STAGE_WEIGHT[stage] * max(0.0, min(1.0, fraction)))

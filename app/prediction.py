"""What a prediction is, as data: the scene, where its focal length came from, the model that made it, timings.

Plain dataclasses with no torch, so that format writers, the HTTP layer and job storage can use them
without loading the network code.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.gaussians import GaussianScene
from app.vocabulary import FocalSource, WeightsSource


@dataclass(frozen=True)
class ModelInfo:
    """What is loaded: reported by the CLI, `/`, `/health` and every prediction, so that a test model is
    never mistaken for SHARP."""

    preset: str
    weights: WeightsSource
    checkpoint: str | None
    device: str
    dtype: str
    num_gaussians: int
    internal_resolution: int

    def summary(self) -> dict[str, str]:
        """The four fields every response carries: preset, weights, device, dtype."""
        return {"preset": self.preset, "weights": self.weights, "device": self.device, "dtype": self.dtype}


@dataclass(frozen=True)
class Prediction:
    """One photo's result.

    Attributes:
        name: the output file stem (the photo's name without directory and suffix).
        scene: the Gaussians and the camera they were predicted for.
        f_px_source: where `scene.f_px` came from.
        model: the model that made it.
        num_predicted: how many Gaussians the model predicted; `scene` has fewer when a budget kept only
            some (`app.budget`). Left out (0), the scene's own count.

    How long it took is not part of it: `app.pipeline.run` reports that beside it.
    """

    name: str
    scene: GaussianScene
    f_px_source: FocalSource
    model: ModelInfo
    num_predicted: int = 0

    def __post_init__(self) -> None:
        if not self.num_predicted:
            object.__setattr__(self, "num_predicted", self.scene.num_gaussians)

"""The SHARP predictor: a loaded network plus the pre- and post-processing around it.

`SharpPredictor.predict(image)` is the whole pipeline for one photo:
resize to the network's square input -> network -> unprojection to metric camera space.
One predictor holds one network on one device; calls are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from app import weights as weights_io
from app.gaussians import GaussianScene
from app.model import SharpNetwork, build_network
from app.model.network import fill_synthetic_weights
from app.model.precision import precision_context
from app.settings import OFFICIAL_CHECKPOINT_URL, DeviceName, DTypeName, Settings, default_cache_dir
from app.unproject import unproject_to_camera

if TYPE_CHECKING:
    from app.imaging import LoadedImage

LOGGER = logging.getLogger(__name__)

WeightsSource = Literal["official", "file", "synthetic"]
FocalSource = Literal["request", "exif", "default"]


def select_device(name: DeviceName | str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was requested but Apple MPS is not available on this machine")
    return device


@dataclass(frozen=True)
class ModelInfo:
    """What is loaded: reported by the CLI, `/`, and `/health`, so a test model is never mistaken for SHARP."""

    preset: str
    weights: WeightsSource
    checkpoint: str | None
    device: str
    dtype: str
    num_gaussians: int
    internal_resolution: int


@dataclass
class Prediction:
    """One photo's result: the scene, where its focal length came from, and stage timings (ms)."""

    scene: GaussianScene
    f_px_source: FocalSource
    timings_ms: dict[str, float] = field(default_factory=dict)


class SharpPredictor:
    """A network on a device, ready to turn `LoadedImage`s into `GaussianScene`s."""

    def __init__(self, network: SharpNetwork, *, weights: WeightsSource, checkpoint: str | None = None,
                 device: torch.device | str = "cpu", dtype: DTypeName = "float32") -> None:
        self.device = torch.device(device)
        if dtype == "float16" and self.device.type == "cpu":
            # CPU autocast supports it, but it is slower than float32 there; bfloat16 is the fast CPU option.
            raise ValueError("dtype float16 is only supported on GPUs; use float32 or bfloat16 on the CPU")
        self.dtype = dtype
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.info = ModelInfo(
            preset=network.config.name, weights=weights, checkpoint=checkpoint, device=str(self.device),
            dtype=dtype, num_gaussians=network.config.num_gaussians,
            internal_resolution=network.config.internal_resolution,
        )
        self._lock = threading.Lock()
        if self.device.type == "cuda":
            # cuDNN's TF32 convolutions are PyTorch's default (the reference runs with them);
            # matmul TF32 is our opt-in "tf32" mode.
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"

    @classmethod
    def load(cls, preset: str = "sharp", *, checkpoint: Path | None = None,
             checkpoint_url: str = OFFICIAL_CHECKPOINT_URL, checkpoint_sha256: str | None = None,
             cache_dir: Path | None = None, offline: bool = False,
             device: DeviceName | str = "auto", dtype: DTypeName = "float32", synthetic: bool | None = None,
             progress: bool = True) -> SharpPredictor:
        """Build the network for `preset` and load its weights.

        Weights: an explicit `checkpoint` file; else, for the `sharp` preset, the cached or
        downloaded checkpoint from `checkpoint_url`; the `tiny` preset (or `synthetic=True`)
        gets deterministic synthetic weights.
        """
        target = select_device(device)
        use_synthetic = (preset != "sharp" and checkpoint is None) if synthetic is None else synthetic
        if use_synthetic:
            network = build_network(preset)
            fill_synthetic_weights(network)
            return cls(network, weights="synthetic", device=target, dtype=dtype)

        path = weights_io.resolve_checkpoint(
            checkpoint, url=checkpoint_url, cache_dir=cache_dir or default_cache_dir(), sha256=checkpoint_sha256,
            offline=offline, progress=progress,
        )
        official = checkpoint is None and checkpoint_url == OFFICIAL_CHECKPOINT_URL
        source: WeightsSource = "official" if official else "file"
        state_dict = weights_io.load_state_dict(path, mmap=True)
        network = build_network(preset, device="meta")
        weights_io.load_weights(network, state_dict, assign=True)
        return cls(network, weights=source, checkpoint=str(path), device=target, dtype=dtype)

    @classmethod
    def from_settings(cls, settings: Settings, *, progress: bool = True) -> SharpPredictor:
        return cls.load(
            settings.preset, checkpoint=settings.checkpoint, checkpoint_url=settings.checkpoint_url,
            checkpoint_sha256=settings.checkpoint_sha256, cache_dir=settings.cache_dir, offline=settings.offline,
            device=settings.device, dtype=settings.dtype, progress=progress,
        )

    def predict(self, image: LoadedImage, f_px: float | None = None) -> Prediction:
        """Predict the Gaussians of one photo.

        Args:
            image: the decoded photo (its EXIF focal length is used when `f_px` is None).
            f_px: focal length override in pixels of the original image; must be finite and > 0.
        """
        if f_px is not None and not (f_px > 0 and f_px < float("inf")):
            raise ValueError(f"f_px must be a finite number > 0, got {f_px}")
        focal = float(f_px) if f_px is not None else image.f_px
        focal_source: FocalSource = "request" if f_px is not None else image.f_px_source
        timings: dict[str, float] = {}
        with self._lock, torch.inference_mode():
            with self._stage(timings, "preprocess"):
                network_input = self.preprocess(image)
                disparity_factor = torch.tensor([focal / image.width], dtype=torch.float32, device=self.device)
            with self._stage(timings, "forward"), self._autocast():
                gaussians = self.network(network_input, disparity_factor)
            with self._stage(timings, "postprocess"):
                scene = unproject_to_camera(gaussians, focal, image.width, image.height)
        return Prediction(scene=scene, f_px_source=focal_source, timings_ms=timings)

    def preprocess(self, image: LoadedImage) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) float32 in [0, 1]: bilinear, align_corners=True, no antialiasing.

        The aspect ratio is not kept: the network always sees a square, and the unprojection
        restores the true proportions.
        """
        pixels = torch.tensor(image.rgb, device=self.device).permute(2, 0, 1)[None].float() / 255.0
        size = self.info.internal_resolution
        return F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # float32/tf32: a null context; bfloat16: the mixed policy; float16: autocast (app/model/precision.py).
        return precision_context(self.network, self.dtype, self.device.type)

    @contextlib.contextmanager
    def _stage(self, timings: dict[str, float], name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[name] = (time.perf_counter() - start) * 1000.0

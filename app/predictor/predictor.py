"""The SHARP predictor: a loaded network plus the pre- and post-processing around it.

`SharpPredictor.predict(image)` turns one decoded photo into its Gaussians: resize to the network's square
input (`preprocess`) -> network -> unprojection to metric camera space (`unproject`). Decoding the photo
and encoding the result are not its business (`app.pipeline` does both around it). One predictor holds
one network on one device; calls are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from app import weights as weights_io
from app.devices import select_device
from app.model.network import SharpNetwork, build_network, fill_synthetic_weights
from app.model.precision import precision_context
from app.model.presets import get_preset
from app.prediction import ModelInfo, Prediction
from app.predictor import progress as forward_progress
from app.predictor.preprocess import resize_for_network
from app.predictor.unproject import network_disparity_factor, unproject_to_camera
from app.settings import Settings, default_cache_dir
from app.vocabulary import DeviceName, DTypeName, FocalSource, ProgressCallback, WeightsSource

if TYPE_CHECKING:
    from app.imaging import LoadedImage

LOGGER = logging.getLogger(__name__)

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
             checkpoint_url: str | None = None, checkpoint_sha256: str | None = None,
             cache_dir: Path | None = None, offline: bool = False,
             device: DeviceName | str = "auto", dtype: DTypeName = "float32", synthetic: bool | None = None,
             progress: bool = True) -> SharpPredictor:
        """Build the network for `preset` and load its weights.

        Weights: an explicit `checkpoint` file; else the cached or downloaded checkpoint from
        `checkpoint_url` (default: the preset's official one); a preset without official weights
        (`tiny`), or `synthetic=True`, gets deterministic synthetic weights.
        """
        target = select_device(device)
        official_url = get_preset(preset).checkpoint_url
        url = checkpoint_url or official_url
        use_synthetic = (url is None and checkpoint is None) if synthetic is None else synthetic
        if use_synthetic:
            network = build_network(preset)
            fill_synthetic_weights(network)
            return cls(network, weights="synthetic", device=target, dtype=dtype)

        path = weights_io.resolve_checkpoint(
            checkpoint, url=url or "", cache_dir=cache_dir or default_cache_dir(), sha256=checkpoint_sha256,
            offline=offline, progress=progress,
        )
        official = checkpoint is None and url == official_url
        source: WeightsSource = "official" if official else "file"
        state_dict = weights_io.load_state_dict(path, mmap=True)
        network = build_network(preset, device="meta")
        weights_io.load_weights(network, state_dict, assign=True)
        return cls(network, weights=source, checkpoint=str(path), device=target, dtype=dtype)

    @classmethod
    def from_settings(cls, settings: Settings, *, progress: bool = True) -> SharpPredictor:
        return cls.load(
            settings.preset, checkpoint=settings.checkpoint, checkpoint_url=settings.weights_url,
            checkpoint_sha256=settings.weights_sha256, cache_dir=settings.cache_dir, offline=settings.offline,
            device=settings.device, dtype=settings.dtype, progress=progress,
        )

    def predict(self, image: LoadedImage, f_px: float | None = None, progress: ProgressCallback | None = None,
                timings_ms: dict[str, float] | None = None) -> Prediction:
        """Predict the Gaussians of one photo.

        Args:
            image: the decoded photo (its EXIF focal length is used when `f_px` is None).
            f_px: focal length override in pixels of the original image, finite and > 0 (the edges that take
                it from users check it with `app.focal.check_f_px`).
            progress: called with (stage, fraction) at each stage's start and end and, during the
                forward pass, after each of the network's leaf modules (`app.predictor.progress`).
                An exception it raises stops the prediction.
            timings_ms: when given, the duration in milliseconds of each stage (preprocess, forward,
                postprocess) is stored in it.
        """
        focal = float(f_px) if f_px is not None else image.f_px
        focal_source: FocalSource = "request" if f_px is not None else image.f_px_source
        timings = timings_ms if timings_ms is not None else {}
        if progress is not None:
            forward_progress.flop_profile(self.network.config)  # made once per config, outside the timings
        with self._lock, torch.inference_mode():
            with self._stage(timings, "preprocess", progress):
                network_input = self.preprocess(image)
                factor, depth_scale = network_disparity_factor(focal, image.width)
                disparity_factor = torch.tensor([factor], dtype=torch.float32, device=self.device)
            with self._stage(timings, "forward", progress), self._autocast(), self._hooks(progress):
                gaussians = self.network(network_input, disparity_factor)
            with self._stage(timings, "postprocess", progress):
                scene = unproject_to_camera(gaussians, focal, image.width, image.height, depth_scale=depth_scale)
        return Prediction(name=image.name, scene=scene, f_px_source=focal_source, model=self.info)

    def preprocess(self, image: LoadedImage) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, S, S) float32 in [0, 1]: bilinear, align_corners=True, no antialiasing.

        The aspect ratio is not kept: the network always sees a square, and the unprojection
        restores the true proportions.
        """
        return resize_for_network(image.rgb, self.info.internal_resolution).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        # float32/tf32: a null context; bfloat16: the mixed policy; float16: autocast (app/model/precision.py).
        return precision_context(self.network, self.dtype, self.device.type)

    def _hooks(self, progress: ProgressCallback | None) -> contextlib.AbstractContextManager:
        if progress is None:
            return contextlib.nullcontext()
        return forward_progress.reporting(self.network, self.network.config, progress)

    @contextlib.contextmanager
    def _stage(self, timings: dict[str, float], name: str, progress: ProgressCallback | None) -> Iterator[None]:
        if progress is not None:
            progress(name, 0.0)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings[name] = (time.perf_counter() - start) * 1000.0
        if progress is not None:
            progress(name, 1.0)

"""The inference service: one model per process, loaded once, fed one prediction at a time.

`InferenceService.infer(data, ...)` is the whole request path below HTTP: admit the request into a
bounded queue, decode the upload in a worker thread, run `SharpPredictor.predict` on the service's
single prediction thread, and hand back the scene with the stage timings. The event loop never runs
any of that work itself, so `/health` keeps answering while a prediction runs.

Admission: at most `1 + settings.max_queue` requests are admitted at a time (the one predicting and
`max_queue` waiting, decoding included); one more raises `QueueFullError` instead of piling up
uploads and decoded images in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum

import anyio.to_thread

from app.imaging import LoadedImage, load_image
from app.predictor import ModelInfo, Prediction, SharpPredictor
from app.settings import Settings

LOGGER = logging.getLogger(__name__)

LOADING_RETRY_AFTER_S = 5
"""Retry-After (seconds) suggested while the model is still loading."""

_INITIAL_PREDICT_ESTIMATE_S = 2.0
_ESTIMATE_WEIGHT = 0.2

Loader = Callable[[Settings], SharpPredictor]
"""Builds the predictor from the settings; runs on the loading thread."""


def default_loader(settings: Settings) -> SharpPredictor:
    """`SharpPredictor.from_settings`, without a download progress bar (logs are not a terminal)."""
    return SharpPredictor.from_settings(settings, progress=False)


class ModelState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


class ServiceUnavailableError(RuntimeError):
    """The service cannot take this request now; `retry_after_s` is a hint, None if retrying won't help."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class ModelLoadingError(ServiceUnavailableError):
    code = "model_loading"


class ModelFailedError(ServiceUnavailableError):
    code = "model_unavailable"


class QueueFullError(ServiceUnavailableError):
    code = "queue_full"


@dataclass
class Inference:
    """One request's result: the scene (in `prediction`), the model that made it, the output file stem
    and all stage timings."""

    name: str
    prediction: Prediction
    model: ModelInfo
    timings_ms: dict[str, float] = field(default_factory=dict)


class InferenceService:
    """Owns the predictor, its loading thread, the prediction thread and the admission counter.

    Args:
        settings: limits (`max_queue`, `max_pixels`) and, for background loading, the model to load.
        predictor: an already loaded predictor; the service is then ready at once.
        loader: how `start()` builds the predictor in the background (default: from the settings).
            Tests pass a loader that waits on an event to observe the "loading" state.
    """

    def __init__(self, settings: Settings, predictor: SharpPredictor | None = None, *,
                 loader: Loader = default_loader) -> None:
        self.settings = settings
        self._loader = loader
        self._predictor = predictor
        self._state = ModelState.READY if predictor is not None else ModelState.LOADING
        self._error: str | None = None
        self._load_thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharp-predict")
        self._lock = threading.Lock()
        self._admitted = 0
        self._predicting = 0
        self._predict_estimate_s = _INITIAL_PREDICT_ESTIMATE_S
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the model on a background thread unless it is loaded or loading already (idempotent)."""
        with self._lock:
            if self._state is not ModelState.LOADING or self._load_thread is not None:
                return
            self._load_thread = threading.Thread(target=self._load, name="sharp-load", daemon=True)
            self._load_thread.start()

    def _load(self) -> None:
        LOGGER.info("Loading the %s model (device %s, dtype %s)", self.settings.preset, self.settings.device,
                    self.settings.dtype)
        start = time.perf_counter()
        try:
            predictor = self._loader(self.settings)
        except Exception as exc:
            LOGGER.exception("Loading the model failed")
            with self._lock:
                self._error = str(exc) or type(exc).__name__
                self._state = ModelState.ERROR
            return
        with self._lock:
            self._predictor = predictor
            self._state = ModelState.READY
        LOGGER.info("Model ready in %.1f s: %s", time.perf_counter() - start, predictor.info)

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading has finished (successfully or not); False on timeout."""
        thread = self._load_thread
        if thread is not None:
            thread.join(timeout)
        return self._state is not ModelState.LOADING

    def close(self) -> None:
        """Stop taking work: queued predictions are cancelled, a running one finishes on its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------------------------------- status

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def error(self) -> str | None:
        """Why loading failed (the loader's message, e.g. a `CheckpointError`'s), else None."""
        return self._error

    @property
    def predictor(self) -> SharpPredictor | None:
        return self._predictor

    @property
    def queue_depth(self) -> int:
        """Requests admitted and not yet predicting (decoding, or waiting for the prediction thread)."""
        with self._lock:
            return self._admitted - self._predicting

    @property
    def in_progress(self) -> int:
        """Predictions running now (0 or 1)."""
        return self._predicting

    def require_predictor(self) -> SharpPredictor:
        """The loaded predictor, or `ModelLoadingError` / `ModelFailedError`."""
        predictor = self._predictor
        if predictor is not None:
            return predictor
        if self._state is ModelState.ERROR:
            raise ModelFailedError(f"The model could not be loaded: {self._error}")
        raise ModelLoadingError("The model is still loading; retry shortly.", LOADING_RETRY_AFTER_S)

    # ------------------------------------------------------------------------------------ inference

    async def infer(self, data: bytes, *, filename: str | None, f_px: float | None) -> Inference:
        """Decode `data` and predict its Gaussians, off the event loop.

        Raises:
            ModelLoadingError, ModelFailedError: no model to run.
            QueueFullError: more than `max_queue` requests are already waiting.
            ImageError: the upload is not a usable image (see `app.imaging`).
        """
        predictor = self.require_predictor()
        with self._admission():
            start = time.perf_counter()
            image = await anyio.to_thread.run_sync(self._decode, data, filename)
            decode_ms = (time.perf_counter() - start) * 1000.0
            loop = asyncio.get_running_loop()
            prediction = await loop.run_in_executor(self._executor, self._predict, predictor, image, f_px)
        return Inference(name=image.name, prediction=prediction, model=predictor.info,
                         timings_ms={"decode": decode_ms, **prediction.timings_ms})

    def _decode(self, data: bytes, filename: str | None) -> LoadedImage:
        return load_image(data, name=filename or None, max_pixels=self.settings.max_pixels)

    def _predict(self, predictor: SharpPredictor, image: LoadedImage, f_px: float | None) -> Prediction:
        with self._lock:
            self._predicting += 1
        start = time.perf_counter()
        try:
            return predictor.predict(image, f_px=f_px)
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self._predicting -= 1
                self._predict_estimate_s += _ESTIMATE_WEIGHT * (elapsed - self._predict_estimate_s)

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        capacity = 1 + self.settings.max_queue
        with self._lock:
            if self._admitted >= capacity:
                retry_after = max(1, math.ceil(self._predict_estimate_s * self._admitted))
                raise QueueFullError(
                    f"The server is busy: {self._admitted} requests are in progress or queued "
                    f"(limit {capacity}); retry later.",
                    retry_after,
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

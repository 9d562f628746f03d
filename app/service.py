"""The inference service: one model per process, loaded once, fed one prediction at a time.

It runs the steps of `app.pipeline` on the right threads: decoding on worker threads (at most
`DECODE_CONCURRENCY` at once, so N large uploads do not hold N full-size images in memory), the forward
pass on the service's single prediction thread, encoding on worker threads. The event loop never runs
any of that work itself, so `/health` keeps answering while a prediction runs.

Admission: at most `1 + settings.max_queue` predictions are admitted at a time (the one predicting and
`max_queue` waiting, decoding included); one more raises `QueueFullError` instead of piling up uploads.

Loading: on a background thread at start. A failure that may be transient (the network, a server
error) is retried with exponential backoff; a permanent one (a wrong or corrupt checkpoint, offline with
nothing cached) leaves the service in `error` until it is restarted.
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
from typing import Any

import anyio
import anyio.to_thread

from app import pipeline
from app.errors import SharpError
from app.forward_progress import ProgressCallback
from app.outputs import get_format
from app.prediction import Prediction
from app.predictor import SharpPredictor
from app.settings import Settings
from app.vocabulary import ModelState

LOGGER = logging.getLogger(__name__)

LOADING_RETRY_AFTER_S = 5
"""Retry-After (seconds) suggested while the model is still loading."""
LOAD_BACKOFF_S = (5.0, 300.0)
"""First and largest wait (seconds) between retries of a load that failed for a transient reason."""
DECODE_CONCURRENCY = 2
"""Uploads decoded at the same time; the others wait (admitted) without holding decoded pixels."""

_INITIAL_PREDICT_ESTIMATE_S = 2.0
_ESTIMATE_WEIGHT = 0.2

Loader = Callable[[Settings], SharpPredictor]
"""Builds the predictor from the settings; runs on the loading thread."""


def default_loader(settings: Settings) -> SharpPredictor:
    """`SharpPredictor.from_settings`, without a download progress bar (logs are not a terminal)."""
    return SharpPredictor.from_settings(settings, progress=False)


class ServiceUnavailableError(SharpError):
    """The service cannot take this request now; `retry_after_s` is a hint, None if retrying won't help."""

    code = "unavailable"
    status = 503


class ModelLoadingError(ServiceUnavailableError):
    code = "model_loading"
    retryable = True


class ModelFailedError(ServiceUnavailableError):
    code = "model_unavailable"


class QueueFullError(ServiceUnavailableError):
    code = "queue_full"
    retryable = True


class InferenceService:
    """Owns the predictor, its loading thread, the prediction thread and the admission counter.

    Args:
        settings: limits (`max_queue`, `max_pixels`) and, for background loading, the model to load.
        predictor: an already loaded predictor; the service is then ready at once.
        loader: how `start()` builds the predictor in the background (default: from the settings).
            Tests pass a loader that waits on an event, or fails, to observe the other states.
        load_backoff_s: first and largest wait between load retries (tests shorten it).
    """

    def __init__(self, settings: Settings, predictor: SharpPredictor | None = None, *,
                 loader: Loader = default_loader, load_backoff_s: tuple[float, float] = LOAD_BACKOFF_S) -> None:
        self.settings = settings
        self._loader = loader
        self._load_backoff_s = load_backoff_s
        self._predictor = predictor
        self._state = ModelState.READY if predictor is not None else ModelState.LOADING
        self._error: SharpError | None = None
        self._next_load_at: float | None = None
        self._load_thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sharp-predict")
        self._decode_limiter = anyio.CapacityLimiter(DECODE_CONCURRENCY)
        self._render_limiter = anyio.CapacityLimiter(1)
        self._lock = threading.Lock()
        self._admitted = 0
        self._predicting = 0
        self._predict_estimate_s = _INITIAL_PREDICT_ESTIMATE_S
        self.started_at = time.monotonic()
        if predictor is not None:
            _warn_if_synthetic(predictor)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the model on a background thread unless it is loaded or loading already (idempotent)."""
        with self._lock:
            if self._state is not ModelState.LOADING or self._load_thread is not None:
                return
            self._load_thread = threading.Thread(target=self._load, name="sharp-load", daemon=True)
            self._load_thread.start()

    def _load(self) -> None:
        delay, max_delay = self._load_backoff_s
        attempt = 1
        while not self._closed.is_set():
            LOGGER.info("Loading the %s model (device %s, dtype %s), attempt %d", self.settings.preset,
                        self.settings.device, self.settings.dtype, attempt)
            start = time.perf_counter()
            try:
                predictor = self._loader(self.settings)
            except Exception as exc:  # any loader failure becomes the service's `error` state
                error = exc if isinstance(exc, SharpError) else SharpError(
                    str(exc) or type(exc).__name__, code="model_load_failed", status=503)
                retry = error.retryable
                LOGGER.error("Loading the model failed (%s): %s%s", error.code, error.message,
                             f"; retrying in {delay:.0f} s" if retry else "", exc_info=not isinstance(exc, SharpError))
                with self._lock:
                    self._error = error
                    self._state = ModelState.ERROR
                    self._next_load_at = time.monotonic() + delay if retry else None
                if not retry or self._closed.wait(delay):
                    return
                with self._lock:
                    self._state = ModelState.LOADING
                delay, attempt = min(max_delay, 2 * delay), attempt + 1
                continue
            with self._lock:
                self._predictor = predictor
                self._state = ModelState.READY
                self._error = self._next_load_at = None
            LOGGER.info("Model ready in %.1f s: %s", time.perf_counter() - start, predictor.info)
            _warn_if_synthetic(predictor)
            return

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading has finished for good (ready, or failed without retry); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._state is ModelState.LOADING or (self._state is ModelState.ERROR and self._next_load_at):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Stop taking work: queued predictions are cancelled, a running one finishes on its thread."""
        self._closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --------------------------------------------------------------------------------------- status

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def error(self) -> SharpError | None:
        """Why loading failed (a `CheckpointError` or another `SharpError`), else None."""
        return self._error

    @property
    def predictor(self) -> SharpPredictor | None:
        return self._predictor

    @property
    def queue_depth(self) -> int:
        """Predictions admitted and not yet running (decoding, or waiting for the prediction thread)."""
        with self._lock:
            return self._admitted - self._predicting

    @property
    def predict_estimate_s(self) -> float:
        """A running average of a prediction's duration in seconds (for Retry-After hints)."""
        return self._predict_estimate_s

    @property
    def in_progress(self) -> int:
        """Predictions running now (0 or 1)."""
        return self._predicting

    def require_predictor(self) -> SharpPredictor:
        """The loaded predictor, or `ModelLoadingError` / `ModelFailedError` (with Retry-After when a
        load retry is scheduled)."""
        predictor = self._predictor
        if predictor is not None:
            return predictor
        if self._state is ModelState.ERROR:
            error = self._error
            next_load_at = self._next_load_at
            code = error.code if error else "model_load_failed"
            if next_load_at is not None:
                wait = max(1, math.ceil(next_load_at - time.monotonic()))
                raise ModelFailedError(f"The model could not be loaded ({code}); the server retries in {wait} s.",
                                       retry_after_s=wait)
            raise ModelFailedError(f"The model could not be loaded ({code}); the server's operator must fix "
                                   "its configuration (see the server log).")
        raise ModelLoadingError("The model is still loading; retry shortly.", retry_after_s=LOADING_RETRY_AFTER_S)

    # ------------------------------------------------------------------------------------ inference

    async def predict(self, data: bytes, *, filename: str | None, f_px: float | None) -> Prediction:
        """Decode `data` and predict its Gaussians (`pipeline.decode` + `pipeline.predict`), off the event loop.

        Raises:
            ModelLoadingError, ModelFailedError: no model to run.
            QueueFullError: more than `max_queue` requests are already waiting.
            ImageError: the upload is not a usable image (see `app.imaging`).
            InvalidRequestError: `f_px` out of range.
        """
        self.require_predictor()
        with self._admission():
            return await self.predict_decoded(await self.decode(data, filename=filename), f_px=f_px)

    async def decode(self, data: bytes, *, filename: str | None) -> pipeline.DecodedImage:
        """`pipeline.decode` on a worker thread (at most `DECODE_CONCURRENCY` at once); `ImageError` if unusable."""
        return await anyio.to_thread.run_sync(self._decode, data, filename, limiter=self._decode_limiter)

    async def predict_decoded(self, decoded: pipeline.DecodedImage, *, f_px: float | None,
                              progress: ProgressCallback | None = None) -> Prediction:
        """`pipeline.predict` on the prediction thread, outside the admission count (the job worker's way in:
        its own queue bounds what waits). `progress` is called on that thread (see `SharpPredictor.predict`)."""
        predictor = self.require_predictor()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._predict, predictor, decoded, f_px, progress)

    async def encode(self, prediction: Prediction, format_name: str, **options: Any) -> pipeline.EncodedOutput:
        """`pipeline.encode` on a worker thread; renders (images, videos) one at a time, as they use every core."""
        limiter = self._render_limiter if get_format(format_name).kind == "render" else None
        return await anyio.to_thread.run_sync(lambda: pipeline.encode(prediction, format_name, **options),
                                              limiter=limiter)

    def _decode(self, data: bytes, filename: str | None) -> pipeline.DecodedImage:
        return pipeline.decode(data, name=filename, max_pixels=self.settings.max_pixels)

    def _predict(self, predictor: SharpPredictor, decoded: pipeline.DecodedImage, f_px: float | None,
                 progress: ProgressCallback | None = None) -> Prediction:
        with self._lock:
            self._predicting += 1
        start = time.perf_counter()
        try:
            return pipeline.predict(predictor, decoded, f_px, progress)
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
                    retry_after_s=retry_after,
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1


def _warn_if_synthetic(predictor: SharpPredictor) -> None:
    if predictor.info.weights == "synthetic":
        LOGGER.warning("Serving the %s preset with SYNTHETIC weights: its outputs are NOT SHARP predictions "
                       "(every response says so in X-Sharp-Weights).", predictor.info.preset)

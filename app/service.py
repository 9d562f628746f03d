"""The inference service: one model per process, loaded once, fed one prediction at a time.

It schedules `app.pipeline.run`, and does nothing else with a request: each run goes to a worker thread
(the event loop never runs any of it, so `/health` keeps answering while a prediction runs), and the
service's `Slots` make the runs take turns inside: at most `DECODE_CONCURRENCY` decoding at once (so N
large uploads do not hold N full-size images in memory), one forward pass at a time on the model, one
render at a time (renders use every core).

Admission: at most `1 + settings.max_queue` predictions are admitted at a time (the one predicting and
`max_queue` waiting, decoding included); one more raises `QueueFullError` instead of piling up uploads.

Loading: on a background thread at start. A failure that may be transient (the network, a server
error) is retried with exponential backoff; a permanent one (a wrong or corrupt checkpoint, offline with
nothing cached) leaves the service in `error` until it is restarted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread

from app import pipeline
from app.budget import MaxGaussians
from app.errors import SharpError
from app.predictor import SharpPredictor
from app.settings import Settings
from app.vocabulary import ModelState, ProgressCallback

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


class ShuttingDownError(ServiceUnavailableError):
    code = "shutting_down"


class InferenceService:
    """Owns the predictor, its loading thread, the slots runs take turns in and the admission counter.

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
        self._lock = threading.Lock()
        self._decoding = threading.BoundedSemaphore(DECODE_CONCURRENCY)
        self._model_turn_lock = threading.Lock()
        self._rendering = threading.Lock()
        self._slots = pipeline.Slots(decode=lambda: self._decoding, model=self._model_turn,
                                     render=lambda: self._rendering)
        # The runs' own threads: the admitted ones plus the job worker's, apart from anyio's default pool.
        self._run_threads = anyio.CapacityLimiter(2 + settings.max_queue)
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

    def close(self) -> None:
        """Stop taking work: runs still waiting for the model fail (`shutting_down`), a running one finishes."""
        self._closed.set()

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

    async def run(self, source: bytes | Path, *, filename: str | None, f_px: float | None,
                  outputs: pipeline.Outputs, max_gaussians: MaxGaussians | None = None,
                  progress: ProgressCallback | None = None,
                  admit: bool = True, sink: pipeline.OutputSink | None = None) -> pipeline.RunResult:
        """`pipeline.run` on a worker thread, in this service's slots (see the module docstring).

        Args:
            source, filename, f_px, outputs, max_gaussians, progress, sink: as for `pipeline.run`
                (`progress` and `sink` are called on the worker thread).
            admit: count this run against the queue limit (False: the job worker, whose own queue bounds
                what waits).

        Raises:
            ModelLoadingError, ModelFailedError: no model to run.
            QueueFullError: more than `max_queue` requests are already waiting.
            ShuttingDownError: the service closed while this run waited for the model.
            and what `pipeline.run` raises.
        """
        predictor = self.require_predictor()
        with self._admission() if admit else contextlib.nullcontext():
            work = functools.partial(pipeline.run, predictor, source, outputs, filename=filename, f_px=f_px,
                                     max_gaussians=max_gaussians, max_pixels=self.settings.max_pixels,
                                     progress=progress, slots=self._slots, sink=sink)
            return await anyio.to_thread.run_sync(work, limiter=self._run_threads)

    @contextlib.contextmanager
    def _model_turn(self) -> Iterator[None]:
        """The model slot: one prediction at a time, counted and timed (for `in_progress` and Retry-After)."""
        with self._model_turn_lock:
            if self._closed.is_set():
                raise ShuttingDownError("The server is shutting down; retry on another instance or later.",
                                        retry_after_s=LOADING_RETRY_AFTER_S)
            with self._lock:
                self._predicting += 1
            start = time.perf_counter()
            try:
                yield
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

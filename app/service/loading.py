"""The service's model: one per process, loaded once on a background thread, with retries.

A failure that may be transient (the network, a server error) is retried with exponential backoff, the
model staying in `error` (503 `model_unavailable` with Retry-After and the fix in its message) until a load
succeeds; each retry logs one line. A permanent failure (a wrong or corrupt checkpoint, offline with
nothing cached) leaves it in `error` until the process is restarted.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.errors import SharpError
from app.service.errors import ModelFailedError, ModelLoadingError
from app.settings import Settings
from app.vocabulary import ModelState

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports the service (and `app.http`) without it
    from app.predictor import SharpPredictor

LOGGER = logging.getLogger(__name__)

LOADING_RETRY_AFTER_S = 5
"""Retry-After (seconds) suggested while the model is still loading."""
LOAD_BACKOFF_S = (5.0, 300.0)
"""First and largest wait (seconds) between retries of a load that failed for a transient reason."""
NO_CHECKPOINT_CODES = ("checkpoint_unavailable", "checkpoint_download_failed")
"""Load failures whose fix is to give the server a checkpoint (their 503 message says how)."""

Loader = Callable[[Settings], "SharpPredictor"]
"""Builds the predictor from the settings; runs on the loading thread."""


def default_loader(settings: Settings) -> SharpPredictor:
    """`SharpPredictor.from_settings`, without a download progress bar (logs are not a terminal)."""
    from app.predictor import SharpPredictor  # torch, imported where a model is loaded

    return SharpPredictor.from_settings(settings, progress=False)


class ModelLoading:
    """The predictor of a service, its loading thread and its state (`loading`, `ready`, `error`).

    Args:
        settings: the model to load.
        predictor: an already loaded predictor; the state is then `ready` at once.
        loader: how `start()` builds the predictor in the background.
        load_backoff_s: first and largest wait between load retries.
        closed: set when the service closes: no more retries.
    """

    def __init__(self, settings: Settings, predictor: SharpPredictor | None, *, loader: Loader,
                 load_backoff_s: tuple[float, float], closed: threading.Event) -> None:
        self.settings = settings
        self._loader = loader
        self._load_backoff_s = load_backoff_s
        self._predictor = predictor
        self._state = ModelState.READY if predictor is not None else ModelState.LOADING
        self._error: SharpError | None = None
        self._next_load_at: float | None = None
        self._load_thread: threading.Thread | None = None
        self._closed = closed
        self._lock = threading.Lock()
        if predictor is not None:
            _warn_if_synthetic(predictor)

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
                if attempt == 1 or not retry:
                    LOGGER.error("Loading the model failed (%s): %s%s", error.code, error.message,
                                 f"; retrying in {delay:.0f} s" if retry else "",
                                 exc_info=not isinstance(exc, SharpError))
                else:  # the same story as the first time, told in one line
                    LOGGER.warning("Loading the model failed again (%s, attempt %d); retrying in %.0f s",
                                   error.code, attempt, delay)
                # The state stays `error` (not `loading`) through the retries: clients are told the truth.
                with self._lock:
                    self._error = error
                    self._state = ModelState.ERROR
                    self._next_load_at = time.monotonic() + delay if retry else None
                if not retry or self._closed.wait(delay):
                    return
                delay, attempt = min(max_delay, 2 * delay), attempt + 1
                continue
            with self._lock:
                self._predictor = predictor
                self._state = ModelState.READY
                self._error = self._next_load_at = None
            LOGGER.info("Model ready in %.1f s: %s", time.perf_counter() - start, predictor.info)
            _warn_if_synthetic(predictor)
            return


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

    def require_predictor(self) -> SharpPredictor:
        """The loaded predictor, or `ModelLoadingError` (the first load is under way) / `ModelFailedError` (a
        load failed: with Retry-After while the server retries, until a load succeeds)."""
        predictor = self._predictor
        if predictor is not None:
            return predictor
        if self._state is ModelState.ERROR:
            next_load_at = self._next_load_at
            wait = None if next_load_at is None else max(1, math.ceil(next_load_at - time.monotonic()))
            raise ModelFailedError(self.unavailable_message() or "", retry_after_s=wait)
        raise ModelLoadingError("The model is still loading; retry shortly.", retry_after_s=LOADING_RETRY_AFTER_S)

    def unavailable_message(self) -> str | None:
        """Why there is no model, for clients (503 `model_unavailable`, `/health`): the error code, whether the
        server retries, and how an operator fixes it; no paths, no exception text. None unless loading failed."""
        error = self._error
        if self._state is not ModelState.ERROR or error is None:
            return None
        next_load_at = self._next_load_at
        if next_load_at is not None:
            wait = max(1, math.ceil(next_load_at - time.monotonic()))
            outlook = f"the server retries in {wait} s, but that will not help until its operator fixes this"
        else:
            outlook = "the server's operator must fix its configuration and restart it (see the server log)"
        message = f"The model could not be loaded ({error.code}); {outlook}."
        url = self.settings.weights_url
        if error.code in NO_CHECKPOINT_CODES and url:
            message += (f" To fix: let the server download {url}, or download that file and set SHARP_CHECKPOINT "
                        "to its path, or set SHARP_PRESET=tiny to serve the small test network.")
        return message


def _warn_if_synthetic(predictor: SharpPredictor) -> None:
    if predictor.info.weights == "synthetic":
        LOGGER.warning("Serving the %s preset with SYNTHETIC weights: its outputs are NOT SHARP predictions "
                       "(every response says so in X-Sharp-Weights).", predictor.info.preset)

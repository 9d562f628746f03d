"""The inference service: one model per process, loaded once, fed one prediction at a time.

It schedules `app.pipeline.run`, and does nothing else with a request: each run goes to a worker thread
(the event loop never runs any of it, so `/health` keeps answering while a prediction runs), and the
service's `Slots` make the runs take turns inside: at most `DECODE_CONCURRENCY` decoding at once (so N
large uploads do not hold N full-size images in memory), one forward pass at a time on the model, one
render at a time (renders use every core).

Admission: at most `1 + settings.max_queue` requests are admitted at a time (predictions and renders
alike: the one running and `max_queue` waiting, decoding included); one more raises `QueueFullError`
instead of piling up uploads. An admitted request holds its place until its run has ended, render included.

Cancellation (`app.cancel`): a run whose awaiting task is cancelled (its client hung up, the server shuts
down, Modal cancels a job) stops at its next check, the model's next block, the renderer's next frame or a
clip's next step, and its slots are free again.

Memory: a photo holds hundreds of MB while it is decoded and predicted (a 7000 x 7000 PNG: 147 MB of RGB,
196 MB inside Pillow). Such buffers must go back to the system when freed, which glibc's malloc does only
for blocks it mmapped: by default it raises its mmap threshold to the size of each mmapped block freed (up
to 32 MB), so later photos' buffers (Pillow allocates in 16 MB blocks) come from its heaps, which keep
them. `start` fixes the threshold at `MMAP_THRESHOLD_BYTES` (`fix_mmap_threshold`). Six concurrent
7000 x 7000 uploads: peak RSS 2.4 GB and 1.7 GB kept after, before; see `bench/memory.py --cases server`.

Loading: on a background thread at start. A failure that may be transient (the network, a server
error) is retried with exponential backoff, the service staying in `error` (503 `model_unavailable` with
Retry-After and the fix in its message) until a load succeeds; each retry logs one line. A permanent
failure (a wrong or corrupt checkpoint, offline with nothing cached) leaves the service in `error` until
it is restarted.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from app import pipeline
from app.budget import MaxGaussians
from app.cancel import run_cancellable
from app.errors import SharpError
from app.prediction import Prediction
from app.sequence import FileSink, SequenceProgress, run_sequence
from app.sequence.fanout import FramePredictions
from app.settings import Settings
from app.video import Sampling, VideoLimits
from app.vocabulary import AlignMode, ModelState, ProgressCallback

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports this module (and `app.http`) without it
    from app.predictor import SharpPredictor

LOGGER = logging.getLogger(__name__)

LOADING_RETRY_AFTER_S = 5
"""Retry-After (seconds) suggested while the model is still loading."""
LOAD_BACKOFF_S = (5.0, 300.0)
"""First and largest wait (seconds) between retries of a load that failed for a transient reason."""
NO_CHECKPOINT_CODES = ("checkpoint_unavailable", "checkpoint_download_failed")
"""Load failures whose fix is to give the server a checkpoint (their 503 message says how)."""
DECODE_CONCURRENCY = 2
"""Uploads decoded, or decoded and waiting for the model, at the same time; the others wait (admitted)
without holding decoded pixels (`app.pipeline.Slots.decode`)."""
MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations from this size up are mmapped by glibc, so freeing them gives the memory back (module docstring)."""


def fix_mmap_threshold(size: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc's malloc mmap every allocation of `size` bytes or more (and stop moving that threshold);
    True if it did, False where malloc is not glibc's."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        return False


_M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number (malloc.h)."""

_INITIAL_PREDICT_ESTIMATE_S = 2.0
_ESTIMATE_WEIGHT = 0.2

T = TypeVar("T")

_thread = threading.local()
"""`admitted`: whether the run on this worker thread was admitted (counts in `queue_depth`)."""

Loader = Callable[[Settings], "SharpPredictor"]
"""Builds the predictor from the settings; runs on the loading thread."""


def default_loader(settings: Settings) -> SharpPredictor:
    """`SharpPredictor.from_settings`, without a download progress bar (logs are not a terminal)."""
    from app.predictor import SharpPredictor  # torch, imported where a model is loaded

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
        self._render_turn_lock = threading.Lock()
        self._slots = pipeline.Slots(decode=lambda: self._decoding, model=self._model_turn,
                                     render=self._render_turn)
        # The runs' own threads: the admitted ones plus the job worker's, apart from anyio's default pool.
        self._run_threads = anyio.CapacityLimiter(2 + settings.max_queue)
        self._admitted = 0
        self._running = {"model": 0, "render": 0}  # runs in each slot now
        self._admitted_busy = 0  # admitted runs in the model or render slot now
        self._predict_estimate_s = _INITIAL_PREDICT_ESTIMATE_S
        self.started_at = time.monotonic()
        if predictor is not None:
            _warn_if_synthetic(predictor)

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the model on a background thread unless it is loaded or loading already (idempotent); fix
        malloc's mmap threshold (module docstring)."""
        fix_mmap_threshold()
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
    def backend(self) -> str | None:
        """Where predictions run when not here: None, they run here. A front that forwards them (Modal's CPU
        container, `deploy.front.FrontService`) says `waiting` until a GPU container has answered, then
        `answered`."""
        return None

    @property
    def queue_depth(self) -> int:
        """Requests admitted and waiting (decoding, or waiting for the model or the renderer)."""
        with self._lock:
            return self._admitted - self._admitted_busy

    @property
    def predict_estimate_s(self) -> float:
        """A running average of a prediction's duration in seconds (for Retry-After hints)."""
        return self._predict_estimate_s

    @property
    def in_progress(self) -> int:
        """Runs in the model or the renderer now (0 to 2: one prediction, one render; jobs included)."""
        with self._lock:
            return sum(self._running.values())

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

    # ------------------------------------------------------------------------------------ inference

    async def run(self, source: bytes | Path | Prediction, *, filename: str | None, f_px: float | None,
                  outputs: pipeline.Outputs, max_gaussians: MaxGaussians | None = None,
                  progress: ProgressCallback | None = None,
                  admit: bool = True, sink: pipeline.OutputSink | None = None,
                  timings_ms: Mapping[str, float] | None = None) -> pipeline.RunResult:
        """`pipeline.run` on a worker thread, in this service's slots (see the module docstring).

        Args:
            source, filename, f_px, outputs, max_gaussians, progress, sink, timings_ms: as for `pipeline.run`
                (`progress` and `sink` are called on the worker thread; a kept prediction as `source` is only
                encoded, in the render slot for a render).
            admit: count this run against the queue limit (False: the job worker, whose own queue bounds
                what waits).

        Raises:
            ModelLoadingError, ModelFailedError: no model to run.
            QueueFullError: more than `max_queue` requests are already waiting.
            ShuttingDownError: the service closed while this run waited for the model.
            and what `pipeline.run` raises.

        Cancelling the awaiting task (a client that hung up, a shutdown) stops the run at its next check, a
        block of the network or a frame of a render, and holds its admission until it has stopped.
        """
        predictor = self.require_predictor()

        def work(check: ProgressCallback) -> pipeline.RunResult:
            def checked(stage: str, fraction: float) -> None:  # at every block of the network and frame of a render
                check(stage, fraction)
                if progress is not None:
                    progress(stage, fraction)

            return pipeline.run(predictor, source, outputs, filename=filename, f_px=f_px,
                                max_gaussians=max_gaussians, max_pixels=self.settings.max_pixels,
                                progress=checked, slots=self._slots, sink=sink, timings_ms=timings_ms)

        return await self._on_thread(work, admit=admit)

    async def run_sequence(self, source: bytes | Path, *, f_px: float | None, outputs: pipeline.Outputs,
                           sampling: Sampling, align: AlignMode, sink: FileSink,
                           max_gaussians: MaxGaussians | None = None, progress: SequenceProgress | None = None,
                           elsewhere: FramePredictions | None = None) -> dict[str, Any]:
        """`app.sequence.run_sequence` of a clip on a worker thread, each frame in this service's slots (so
        photos' requests take turns with its frames on the model); not admitted (the job queue bounds what
        waits). Cancelled as `run` is. Returns the manifest; raises what `require_predictor` and
        `run_sequence` raise."""
        predictor = self.require_predictor()

        def work(check: ProgressCallback) -> dict[str, Any]:
            def checked(frame: int, frames: int, stage: str, fraction: float) -> None:
                check(stage, fraction)
                if progress is not None:
                    progress(frame, frames, stage, fraction)

            return run_sequence(predictor, source, outputs, sink=sink, limits=VideoLimits.from_settings(self.settings),
                                sampling=sampling, f_px=f_px, align=align, max_gaussians=max_gaussians,
                                progress=checked, slots=self._slots, elsewhere=elsewhere)

        return await self._on_thread(work, admit=False)

    async def _on_thread(self, work: Callable[[ProgressCallback], T], *, admit: bool) -> T:
        """`work(check)` on one of the runs' threads, stopped at its next `check` once cancelled (`app.cancel`)."""
        def mark() -> None:
            _thread.admitted = admit

        with self._admission() if admit else contextlib.nullcontext():
            return await run_cancellable(work, limiter=self._run_threads, on_thread=mark)

    @contextlib.contextmanager
    def _model_turn(self) -> Iterator[None]:
        """The model slot: one prediction at a time, counted and timed (for `in_progress` and Retry-After)."""
        with self._model_turn_lock:
            if self._closed.is_set():
                raise ShuttingDownError("The server is shutting down; retry on another instance or later.",
                                        retry_after_s=LOADING_RETRY_AFTER_S)
            start = time.perf_counter()
            try:
                with self._busy("model"):
                    yield
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self._predict_estimate_s += _ESTIMATE_WEIGHT * (elapsed - self._predict_estimate_s)

    @contextlib.contextmanager
    def _render_turn(self) -> Iterator[None]:
        """The render slot: one render at a time (renders use every core), counted."""
        with self._render_turn_lock, self._busy("render"):
            yield

    @contextlib.contextmanager
    def _busy(self, slot: str) -> Iterator[None]:
        """Counts the run on this thread as running (`in_progress`), not waiting (`queue_depth`)."""
        admitted = getattr(_thread, "admitted", False)
        with self._lock:
            self._running[slot] += 1
            self._admitted_busy += admitted
        try:
            yield
        finally:
            with self._lock:
                self._running[slot] -= 1
                self._admitted_busy -= admitted

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

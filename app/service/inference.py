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

The model itself (one per process, loaded in the background with retries) is `app.service.loading`; the
memory a photo held is given back as `app.service.memory` says.
"""

from __future__ import annotations

import contextlib
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
from app.service.errors import QueueFullError, ShuttingDownError
from app.service.loading import LOAD_BACKOFF_S, LOADING_RETRY_AFTER_S, Loader, ModelLoading, default_loader
from app.service.memory import fix_mmap_threshold
from app.settings import Settings
from app.video import Sampling, VideoLimits
from app.vocabulary import AlignMode, ModelState, ProgressCallback

if TYPE_CHECKING:  # torch: the front (deploy/front.py) imports this module (and `app.http`) without it
    from app.predictor import SharpPredictor

DECODE_CONCURRENCY = 2
"""Uploads decoded, or decoded and waiting for the model, at the same time; the others wait (admitted)
without holding decoded pixels (`app.pipeline.Slots.decode`)."""

_INITIAL_PREDICT_ESTIMATE_S = 2.0
_ESTIMATE_WEIGHT = 0.2

T = TypeVar("T")

_thread = threading.local()
"""`admitted`: whether the run on this worker thread was admitted (counts in `queue_depth`)."""


class InferenceService:
    """Owns the model (`ModelLoading`: the predictor and its loading thread), the slots runs take turns in and
    the admission counter.

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
        self._closed = threading.Event()
        self._model = ModelLoading(settings, predictor, loader=loader, load_backoff_s=load_backoff_s,
                                   closed=self._closed)
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

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the model on a background thread unless it is loaded or loading already (idempotent); fix
        malloc's mmap threshold (`app.service.memory`)."""
        fix_mmap_threshold()
        self._model.start()

    def close(self) -> None:
        """Stop taking work: runs still waiting for the model fail (`shutting_down`), a running one finishes."""
        self._closed.set()

    # --------------------------------------------------------------------------------------- status

    @property
    def state(self) -> ModelState:
        return self._model.state

    @property
    def error(self) -> SharpError | None:
        """Why loading failed (a `CheckpointError` or another `SharpError`), else None."""
        return self._model.error

    @property
    def predictor(self) -> SharpPredictor | None:
        return self._model.predictor

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
        return self._model.require_predictor()

    def unavailable_message(self) -> str | None:
        """Why there is no model, for clients (503 `model_unavailable`, `/health`): the error code, whether the
        server retries, and how an operator fixes it; no paths, no exception text. None unless loading failed."""
        return self._model.unavailable_message()

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
                           elsewhere: FramePredictions | None = None, preview_later: bool = False) -> dict[str, Any]:
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
                                progress=checked, slots=self._slots, elsewhere=elsewhere, preview_later=preview_later)

        return await self._on_thread(work, admit=False)

    async def render_preview(self, clip: bytes | Path, manifest: Mapping[str, Any],
                             read: Callable[[str], bytes | None], *, source: str) -> bytes:
        """`app.sequence.preview.render_preview` of a clip that has run, on a worker thread, each frame's render
        in the render slot, on the model's device; not admitted. Cancelled as `run` is (at the next frame).
        Raises what `require_predictor` and `render_preview` raise."""
        device = self.require_predictor().device

        def work(check: ProgressCallback) -> bytes:
            from app.sequence.preview import render_preview  # torch: the front imports this module without it

            return render_preview(clip, manifest, read, source=source, device=device, slots=self._slots,
                                  limits=VideoLimits.from_settings(self.settings),
                                  progress=lambda frame, frames: check("preview", frame / frames))

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

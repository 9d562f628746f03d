"""The inference service: one model per process, loaded once, fed one prediction at a time.

`InferenceService` (`inference`: scheduling `app.pipeline.run` on worker threads, admission, slots) owns
the model (`loading`: background loading with retries); `errors` says why it cannot take a request now;
`memory` gives back what a photo held.
"""

from app.service.errors import (
    ModelFailedError,
    ModelLoadingError,
    QueueFullError,
    ServiceUnavailableError,
    ShuttingDownError,
)
from app.service.inference import DECODE_CONCURRENCY, InferenceService
from app.service.loading import LOADING_RETRY_AFTER_S, Loader, default_loader
from app.service.memory import fix_mmap_threshold

__all__ = ["DECODE_CONCURRENCY", "LOADING_RETRY_AFTER_S", "InferenceService", "Loader", "ModelFailedError",
           "ModelLoadingError", "QueueFullError", "ServiceUnavailableError", "ShuttingDownError", "default_loader",
           "fix_mmap_threshold"]

"""The one lifecycle of every GPU class (`ModelContainer`), and the checkpoint on the cache Volume.

`modal_api.SharpAPI`, `modal_api.SharpJobWorker`, `modal_api.SharpFrameWorker` and `modal_app.SharpModel`
subclass `ModelContainer` and add only what they expose. A container start runs, in order: `load_weights`
(imports and weights into CPU memory, captured by the memory snapshot when snapshots are on), then
`move_to_gpu` after every (re)start; `shutdown` when the container stops. Each input then runs on
`self.service` (an `InferenceService`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modal

from deploy.config import (
    CACHE_MOUNT,
    CACHE_VOLUME_NAME,
    JOBS_MOUNT,
    TIMEOUT_S,
    api_key_secret,
    gpu_type,
    memory_snapshot,
    scaledown_window,
)
from deploy.images import cache_volume, gpu_image, jobs_volume

if TYPE_CHECKING:
    from app.jobs.store import JobStore
    from app.predictor import SharpPredictor
    from app.service import InferenceService
    from app.settings import Settings

LOGGER = logging.getLogger(__name__)


def secrets() -> list[modal.Secret]:
    """The Modal Secret named by `SHARP_API_KEY_SECRET` (it holds `SHARP_API_KEY`), if set."""
    name = api_key_secret()
    return [modal.Secret.from_name(name)] if name else []


def gpu_cls_options(*, jobs: bool = False) -> dict[str, Any]:
    """Keyword arguments of `@app.cls` for a `ModelContainer` (`jobs`: with the jobs Volume at `/jobs`)."""
    volumes = {str(CACHE_MOUNT): cache_volume, **({str(JOBS_MOUNT): jobs_volume} if jobs else {})}
    return {
        "image": gpu_image,
        "gpu": gpu_type(),
        "volumes": volumes,
        "secrets": secrets(),
        "timeout": TIMEOUT_S,
        "scaledown_window": scaledown_window(),
        "enable_memory_snapshot": memory_snapshot(),
    }


class ModelContainer:
    """A GPU container holding one model; subclasses add the methods (`@modal.method`, `@modal.asgi_app`)."""

    settings: Settings
    predictor: SharpPredictor
    service: InferenceService

    @modal.enter(snap=memory_snapshot())
    def load_weights(self) -> None:
        """Imports and weights into CPU memory (captured by the memory snapshot)."""
        self.settings = container_settings()
        self.predictor = load_on_cpu(self.settings, cache_volume)

    @modal.enter(snap=False)
    def move_to_gpu(self) -> None:
        """After every (re)start: the network onto the GPU, and the service that feeds it."""
        from app.service import InferenceService

        self.settings = container_settings()  # re-read: a Secret may have changed since the snapshot
        self.predictor = move_to_device(self.predictor, self.settings)
        self.service = InferenceService(self.settings, self.predictor)

    @modal.exit()
    def shutdown(self) -> None:
        """Cancel queued predictions when the container stops."""
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


# ------------------------------------------------------------------------------ in-container loading


def running_in_container() -> bool:
    """True inside a Modal container; False for local runs (`.local()`, tests)."""
    return not modal.is_local()


def container_settings() -> Settings:
    """The service settings, read from the container's environment (see `container_env`)."""
    from app.settings import Settings

    return Settings()


def prepare_checkpoint(
    settings: Settings, volume: Any = None, *, in_container: bool | None = None
) -> Path | None:
    """Make sure the checkpoint the settings need is in the cache dir (the volume), downloading it once.

    Returns its path, or None when the preset runs on synthetic weights (e.g. `tiny`) and needs no file.
    Inside a container, a missing file first triggers `volume.reload()` (another container may have
    committed it since this one mounted the volume), and a fresh download is followed by
    `volume.commit()` so that later containers find it. Outside a container the volume is left alone.
    """
    from app import weights

    if in_container is None:
        in_container = running_in_container()
    sync = volume is not None and in_container

    if settings.checkpoint is not None:  # SHARP_CHECKPOINT, e.g. /cache/my-finetune.pt (`modal volume put`)
        path = Path(settings.checkpoint)
        if sync and not path.is_file():
            volume.reload()
        return path
    url = settings.weights_url
    if url is None:  # a preset without official weights (tiny) runs on synthetic ones
        return None

    dest = weights.cached_checkpoint_path(url, settings.cache_dir)
    if sync and not dest.is_file():
        volume.reload()
    had_it = dest.is_file()
    path = weights.resolve_checkpoint(
        None, url=url, cache_dir=settings.cache_dir, sha256=settings.weights_sha256,
        offline=settings.offline, progress=False,
    )
    if sync and (not had_it or settings.weights_sha256):  # a download, or a new `.sha256` sidecar
        LOGGER.info("Committing %s to the volume %s.", path, CACHE_VOLUME_NAME)
        volume.commit()
    return path


def load_on_cpu(settings: Settings, volume: Any = None) -> SharpPredictor:
    """Step 1 of a container start (`@modal.enter(snap=True)`): weights into CPU memory, no GPU touched.

    With memory snapshots this runs once per snapshot and its result (imports, network, weights) is
    restored on later cold starts. The weights are copied out of the memory-mapped checkpoint into
    ordinary memory, so the snapshot does not depend on the volume's file staying mapped. CUDA is not
    initialised here: Modal's CPU snapshots are taken without a usable GPU.
    """
    import torch

    from app.predictor import SharpPredictor

    prepare_checkpoint(settings, volume)
    cpu_settings = settings.model_copy(update={"device": "cpu", "dtype": "float32"})
    predictor = SharpPredictor.from_settings(cpu_settings, progress=False)
    with torch.no_grad():
        predictor.network._apply(torch.Tensor.clone)  # mmap'ed file pages -> anonymous RAM
    return predictor


def job_store(settings: Settings) -> JobStore:
    """The jobs' directories on the jobs volume (`JOBS_MOUNT`), with the settings' time to live and size cap."""
    from app.jobs.store import JobStore

    return JobStore(Path(JOBS_MOUNT), ttl_s=settings.job_ttl_s, max_bytes=settings.jobs_max_bytes)


def move_to_device(predictor: SharpPredictor, settings: Settings) -> SharpPredictor:
    """Step 2 (`@modal.enter(snap=False)`, after any restore): network to `SHARP_DEVICE` in `SHARP_DTYPE`."""
    from app.devices import select_device
    from app.predictor import SharpPredictor

    device = select_device(settings.device)
    info = predictor.info
    return SharpPredictor(
        predictor.network, weights=info.weights, checkpoint=info.checkpoint, device=device,
        dtype=settings.dtype,
    )

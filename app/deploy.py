"""The Modal pieces shared by `modal_api.py` (HTTP API) and `modal_app.py` (function API).

One image, one weights volume, one set of container options and one model-loading path, so the two
deploy files differ only in what they expose. Everything here is read at deploy time (`modal deploy`,
`modal run`, `modal serve`) from the *local* environment:

* `SHARP_GPU` - GPU type for the model containers (default `A100`; e.g. `H100`, `L40S`, `A100-80GB`).
* `SHARP_SCALEDOWN_WINDOW` - seconds an idle container is kept warm (default 300).
* `SHARP_PROXY_AUTH=1` - the web endpoint requires Modal proxy-auth headers (`Modal-Key`/`Modal-Secret`).
* `SHARP_API_KEY_SECRET=<name>` - attach that Modal Secret (it should hold `SHARP_API_KEY`).
* `SHARP_MEMORY_SNAPSHOT=0` - turn memory snapshots off (they are on by default).
* `SHARP_MAX_CONTAINERS` - most GPU containers running jobs at once (default 10; `modal_api.SharpJobWorker`).
* the service settings in `PASSTHROUGH_ENV` are copied into the container image's environment.

This module must stay cheap to import (no torch, no pydantic at module level): it is imported by the
deploy files locally and again in every container, including the lightweight forwarding functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import modal

if TYPE_CHECKING:
    from app.jobs.store import JobStore
    from app.predictor import SharpPredictor
    from app.settings import Settings

LOGGER = logging.getLogger(__name__)

CACHE_VOLUME_NAME = "sharp-model-cache"
"""The Modal Volume holding downloaded checkpoints (created on first deploy)."""
CACHE_MOUNT = PurePosixPath("/cache")
"""Where the volume is mounted in containers; it is the container's `SHARP_CACHE_DIR`."""

JOBS_VOLUME_NAME = "sharp-jobs"
"""The Modal Volume holding jobs' state and results (`app.jobs.modal`), shared by web and GPU containers."""
JOBS_MOUNT = PurePosixPath("/jobs")

DEFAULT_GPU = "A100"
DEFAULT_MAX_CONTAINERS = 10
DEFAULT_SCALEDOWN_WINDOW_S = 300
MAX_CONCURRENT_INPUTS = 10
"""Requests (or method calls) one container takes at once; the predictor still runs one forward at a time."""
TIMEOUT_S = 900
"""Per-input and container-startup limit: covers the first container's ~2.8 GB checkpoint download."""
PYTHON_VERSION = "3.11"

PASSTHROUGH_ENV: tuple[str, ...] = (
    "SHARP_PRESET",
    "SHARP_CHECKPOINT",
    "SHARP_CHECKPOINT_URL",
    "SHARP_CHECKPOINT_SHA256",
    "SHARP_OFFLINE",
    "SHARP_DEVICE",
    "SHARP_DTYPE",
    "SHARP_MAX_UPLOAD_MB",
    "SHARP_MAX_PIXELS",
    "SHARP_MAX_QUEUE",
    "SHARP_UPLOAD_TIMEOUT_S",
    "SHARP_CORS_ORIGINS",
    "SHARP_LOG_LEVEL",
    "SHARP_JOB_TTL_S",
    "SHARP_JOBS_MAX_BYTES",
)
"""Service settings copied from the deploy environment into the container image (when set and non-empty).

`SHARP_API_KEY` is deliberately absent: a key must not be baked into an image, use a Modal Secret
(`SHARP_API_KEY_SECRET`). `SHARP_CACHE_DIR` is always the volume mount.
"""

CONTAINER_DEFAULTS: dict[str, str] = {
    "SHARP_DEVICE": "cuda",
    "SHARP_MAX_QUEUE": str(MAX_CONCURRENT_INPUTS - 1),
}
"""Container settings that differ from the local defaults (a deploy-time value wins). A GPU container must
fail loudly, not fall back to the CPU, if CUDA is unusable; and the service's queue (1 predicting +
`SHARP_MAX_QUEUE` waiting) must admit all the inputs Modal routes to one container, or the last ones
get 503 `queue_full` while Modal could have sent them to another container."""

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

_TRUE = {"1", "true", "yes", "on"}


# ------------------------------------------------------------------------------------ deploy options


def gpu_type(environ: Mapping[str, str] | None = None) -> str:
    """The GPU to request: `SHARP_GPU` at deploy time, else `A100`."""
    environ = os.environ if environ is None else environ
    return (environ.get("SHARP_GPU") or "").strip() or DEFAULT_GPU


def scaledown_window(environ: Mapping[str, str] | None = None) -> int:
    """Seconds an idle container is kept: `SHARP_SCALEDOWN_WINDOW`, else 300 (Modal allows 2..3600)."""
    environ = os.environ if environ is None else environ
    raw = (environ.get("SHARP_SCALEDOWN_WINDOW") or "").strip()
    if not raw:
        return DEFAULT_SCALEDOWN_WINDOW_S
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"SHARP_SCALEDOWN_WINDOW must be a whole number of seconds, got {raw!r}") from None
    if not 2 <= value <= 3600:
        raise ValueError(f"SHARP_SCALEDOWN_WINDOW must be between 2 and 3600 seconds, got {value}")
    return value


def max_containers(environ: Mapping[str, str] | None = None) -> int:
    """GPU containers that may run jobs at once: `SHARP_MAX_CONTAINERS` at deploy time, else 10."""
    environ = os.environ if environ is None else environ
    raw = (environ.get("SHARP_MAX_CONTAINERS") or "").strip()
    if not raw:
        return DEFAULT_MAX_CONTAINERS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"SHARP_MAX_CONTAINERS must be a whole number >= 1, got {raw!r}")
    return int(raw)


def proxy_auth(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the web endpoint requires Modal proxy auth: `SHARP_PROXY_AUTH=1` at deploy time."""
    environ = os.environ if environ is None else environ
    return (environ.get("SHARP_PROXY_AUTH") or "").strip().lower() in _TRUE


def memory_snapshot(environ: Mapping[str, str] | None = None) -> bool:
    """Whether to enable Modal memory snapshots: on unless `SHARP_MEMORY_SNAPSHOT=0` at deploy time."""
    environ = os.environ if environ is None else environ
    return (environ.get("SHARP_MEMORY_SNAPSHOT") or "1").strip().lower() not in {"0", "false", "no", "off"}


def secrets(environ: Mapping[str, str] | None = None) -> list[modal.Secret]:
    """The Modal Secret named by `SHARP_API_KEY_SECRET` (e.g. `sharp-api-key`), if that variable is set."""
    environ = os.environ if environ is None else environ
    name = (environ.get("SHARP_API_KEY_SECRET") or "").strip()
    return [modal.Secret.from_name(name)] if name else []


def container_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `SHARP_*` environment of the model containers."""
    environ = os.environ if environ is None else environ
    env = dict(CONTAINER_DEFAULTS)
    for name in PASSTHROUGH_ENV:
        value = environ.get(name)
        if value is not None and value.strip():
            env[name] = value
    env["SHARP_CACHE_DIR"] = str(CACHE_MOUNT)
    return env


def build_image(environ: Mapping[str, str] | None = None) -> modal.Image:
    """Debian slim + the project's dependencies (read from pyproject.toml at build time) + `app/`.

    The PyPI torch wheels for Linux x86-64 bundle CUDA, so no CUDA base image is needed. The env layer comes
    after the dependencies, so changing a setting does not reinstall anything; `app/` is mounted at
    container start (not baked in), so code changes redeploy in seconds.
    """
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install_from_pyproject(str(PYPROJECT))
        .env(container_env(environ))
        .add_local_python_source("app", ignore=_not_shipped)
    )


def _not_shipped(path: Path) -> bool:
    """What `add_local_python_source` leaves out: all but Python files and the web page (`app/web/static`)."""
    return not (path.suffix == ".py" or "static" in path.parts)


image = build_image()
cache_volume = modal.Volume.from_name(CACHE_VOLUME_NAME, create_if_missing=True)
jobs_volume = modal.Volume.from_name(JOBS_VOLUME_NAME, create_if_missing=True)


def model_cls_options(environ: Mapping[str, str] | None = None, *, jobs: bool = False) -> dict[str, Any]:
    """Keyword arguments of `@app.cls` for a class that holds the model on a GPU (`jobs`: with the jobs
    volume at `/jobs` too)."""
    volumes = {str(CACHE_MOUNT): cache_volume, **({str(JOBS_MOUNT): jobs_volume} if jobs else {})}
    return {
        "image": image,
        "gpu": gpu_type(environ),
        "volumes": volumes,
        "secrets": secrets(environ),
        "timeout": TIMEOUT_S,
        "scaledown_window": scaledown_window(environ),
        "enable_memory_snapshot": memory_snapshot(environ),
    }


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

"""What a Modal deploy reads from the local environment, and what its containers' environment holds.

Deploy-time switches, read by `modal deploy` / `modal run` / `modal serve` from the local environment:

* `SHARP_GPU` - GPU type for the model containers (default `A100`; e.g. `H100`, `L40S`, `A100-80GB`).
* `SHARP_SCALEDOWN_WINDOW` - seconds an idle GPU container is kept warm (default 300).
* `SHARP_PROXY_AUTH=1` - the web endpoint requires Modal proxy-auth headers (`Modal-Key`/`Modal-Secret`).
* `SHARP_API_KEY_SECRET=<name>` - attach that Modal Secret (it should hold `SHARP_API_KEY`).
* `SHARP_MEMORY_SNAPSHOT=0` - turn memory snapshots off (they are on by default).
* `SHARP_MAX_CONTAINERS` - most GPU containers running jobs at once, and most predicting clips' frames
  (default 10 each; `modal_api.SharpJobWorker`, `modal_api.SharpFrameWorker`).

Service settings baked into the image: only those of `BAKED_SETTINGS` (an allow-list: the model, its device
and dtype, the service's limits, jobs' time to live and size, the video limits), copied from the deploy
environment when set there. Any other `SHARP_*` variable in the deploy shell (a laptop's `SHARP_HOST`,
`SHARP_JOBS_DIR`, ...) is ignored with a warning: it means nothing in a container, or is the deploy's own
(the cache dir is the Volume, the API key a Secret). The switches above are copied too: a container
re-imports the deploy file, and must build the same classes with the same dependencies as the deploy did,
or Modal refuses to start it (`ExecutionError` on a dependency count mismatch) - so the container reads
the switches from the image, not from a laptop it cannot see. `python -m deploy check` checks each baked
value against the container (`baked_problems`).

Cheap to import (stdlib only): every image imports it.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
SETTINGS_SOURCE = ROOT / "app" / "settings.py"
TESTED_TORCH_EXTRA = "tested-torch"
"""pyproject's extra naming the torch release the project is tested with (Makefile, Dockerfile, Modal image)."""
VENDOR_DIR = ROOT / "app" / "web" / "static" / "vendor"
VENDOR_LIST = ROOT / "web" / "copy-vendor.mjs"

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
"""Requests (or method calls) one GPU container takes at once; the predictor still runs one forward at a time."""
TIMEOUT_S = 900
"""Per-input and container-startup limit: covers the first container's ~2.8 GB checkpoint download."""
PYTHON_VERSION = "3.11"
CLIP_FRAME_S = 5.0
"""A generous time for one clip frame (forward pass in the clip's GPU call; its outputs and preview in the
job's CPU call, alongside; an estimate, not measured): a clip's GPU call must fit `SHARP_VIDEO_CHUNK_WAIT_S`
plus all its frames predicted there within `TIMEOUT_S`, and so must the job's call (`baked_problems`)."""

DEPLOY_SWITCHES = ("SHARP_GPU", "SHARP_SCALEDOWN_WINDOW", "SHARP_PROXY_AUTH", "SHARP_API_KEY_SECRET",
                   "SHARP_MEMORY_SNAPSHOT", "SHARP_MAX_CONTAINERS")
"""Read when the deploy files are imported (`modal deploy` and every container), baked into the image."""
BAKED_SETTINGS = (
    "SHARP_PRESET", "SHARP_CHECKPOINT", "SHARP_CHECKPOINT_URL", "SHARP_CHECKPOINT_SHA256", "SHARP_OFFLINE",
    "SHARP_DEVICE", "SHARP_DTYPE",
    "SHARP_MAX_UPLOAD_MB", "SHARP_MAX_PIXELS", "SHARP_MAX_QUEUE", "SHARP_UPLOAD_TIMEOUT_S",
    "SHARP_UPLOAD_DEADLINE_S", "SHARP_CORS_ORIGINS", "SHARP_LOG_LEVEL",
    "SHARP_JOB_TTL_S", "SHARP_JOBS_MAX_BYTES",
    "SHARP_VIDEO_MAX_DURATION_S", "SHARP_VIDEO_MAX_FRAMES", "SHARP_VIDEO_MAX_PIXELS", "SHARP_VIDEO_CHUNK_FRAMES",
    "SHARP_VIDEO_PARALLEL_CHUNKS", "SHARP_VIDEO_CHUNK_WAIT_S",
)
"""The service settings a deploy copies from its environment into the images (the allow-list, docs/modal.md).
Left out on purpose: `SHARP_API_KEY` (a Secret), `SHARP_CACHE_DIR` (the Volume), `SHARP_JOBS_DIR` (the jobs
Volume), `SHARP_HOST` / `SHARP_PORT` (Modal serves the app), `SHARP_JOBS_MAX_QUEUED` (jobs wait in Modal's queue)."""
NOT_PASSED = ("SHARP_API_KEY", "SHARP_CACHE_DIR")
"""Settings a container has that never come from the deploy environment: the key from a Secret, the cache dir
is the Volume (`CACHE_MOUNT`)."""
DEVICES_ON_MODAL = ("cuda", "auto")
"""`SHARP_DEVICE` values a GPU container can honour (it has CUDA; no `mps`, and `cpu` would idle the GPU)."""

CONTAINER_DEFAULTS: dict[str, str] = {
    "SHARP_DEVICE": "cuda",
    "SHARP_MAX_QUEUE": str(MAX_CONCURRENT_INPUTS - 1),
}
"""Container settings that differ from the local defaults (a deploy-time value wins). A GPU container must
fail loudly, not fall back to the CPU, if CUDA is unusable; and the service's queue (1 predicting +
`SHARP_MAX_QUEUE` waiting) must admit all the inputs Modal routes to one container, or the last ones
get 503 `queue_full` while Modal could have sent them to another container."""

_TRUE = {"1", "true", "yes", "on"}


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def gpu_type(environ: Mapping[str, str] | None = None) -> str:
    """The GPU to request: `SHARP_GPU`, else `A100`."""
    return (_env(environ).get("SHARP_GPU") or "").strip() or DEFAULT_GPU


def scaledown_window(environ: Mapping[str, str] | None = None) -> int:
    """Seconds an idle GPU container is kept: `SHARP_SCALEDOWN_WINDOW`, else 300 (Modal allows 2..3600)."""
    raw = (_env(environ).get("SHARP_SCALEDOWN_WINDOW") or "").strip()
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
    """GPU containers that may run jobs at once: `SHARP_MAX_CONTAINERS`, else 10."""
    raw = (_env(environ).get("SHARP_MAX_CONTAINERS") or "").strip()
    if not raw:
        return DEFAULT_MAX_CONTAINERS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"SHARP_MAX_CONTAINERS must be a whole number >= 1, got {raw!r}")
    return int(raw)


def proxy_auth(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the web endpoint requires Modal proxy auth: `SHARP_PROXY_AUTH=1`."""
    return (_env(environ).get("SHARP_PROXY_AUTH") or "").strip().lower() in _TRUE


def memory_snapshot(environ: Mapping[str, str] | None = None) -> bool:
    """Whether to enable Modal memory snapshots: on unless `SHARP_MEMORY_SNAPSHOT=0`."""
    return (_env(environ).get("SHARP_MEMORY_SNAPSHOT") or "1").strip().lower() not in {"0", "false", "no", "off"}


def api_key_secret(environ: Mapping[str, str] | None = None) -> str | None:
    """The name of the Modal Secret holding `SHARP_API_KEY` (`SHARP_API_KEY_SECRET`), if any."""
    return (_env(environ).get("SHARP_API_KEY_SECRET") or "").strip() or None


def settings_env_names(source: Path = SETTINGS_SOURCE) -> tuple[str, ...]:
    """`SHARP_<FIELD>` for every field of `app.settings.Settings`, read from its source (its module imports
    torch, which the light image lacks): the env prefix of its `model_config` and its annotated fields."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Settings")
    prefix = None
    fields = []
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            fields.append(node.target.id)
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
              and any(isinstance(t, ast.Name) and t.id == "model_config" for t in node.targets)):
            prefix = next(ast.literal_eval(k.value) for k in node.value.keywords if k.arg == "env_prefix")
    fields = [name for name in fields if name != "model_config"]
    if prefix is None or not fields:
        raise RuntimeError(f"cannot read the Settings fields from {source}")
    return tuple(f"{prefix}{name}".upper() for name in fields)


def ignored_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """The `SHARP_*` variables set in `environ` that a deploy does not bake (neither a switch nor in
    `BAKED_SETTINGS`); a container's own (its key from the Secret, its cache dir) are not listed."""
    environ = _env(environ)
    known = {*BAKED_SETTINGS, *DEPLOY_SWITCHES, "SHARP_API_KEY"}
    return sorted(name for name, value in environ.items()
                  if name.upper().startswith("SHARP_") and name.upper() not in known and value.strip()
                  and not (name.upper() == "SHARP_CACHE_DIR" and value == str(CACHE_MOUNT)))


_WARNED: set[str] = set()
"""The ignored variables warned about already (the images are built more than once per import)."""


def container_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `SHARP_*` environment baked into the images: defaults, then every allowed setting and switch set
    (and non-empty) in `environ`, then the cache dir. In a container, `environ` already is this mapping, so
    the container's import rebuilds the same image definition as the deploy. Read from the process's own
    environment, other `SHARP_*` variables are ignored with a warning (`ignored_env`)."""
    if environ is None:
        ignored = [name for name in ignored_env() if name not in _WARNED]
        _WARNED.update(ignored)
        if ignored:
            LOGGER.warning("Not baked into the Modal image (not in deploy.config.BAKED_SETTINGS, docs/modal.md): "
                           "%s", ", ".join(ignored))
    environ = _env(environ)
    env = dict(CONTAINER_DEFAULTS)
    for name in (*BAKED_SETTINGS, *DEPLOY_SWITCHES):
        value = environ.get(name)
        if value is not None and value.strip():
            env[name] = value
    env["SHARP_CACHE_DIR"] = str(CACHE_MOUNT)
    return env


def baked_problems(env: Mapping[str, str]) -> list[str]:
    """What is wrong with a container environment (`container_env`'s) on Modal's GPU containers, one line per
    problem: a device other than `DEVICES_ON_MODAL`, a `SHARP_CHECKPOINT` outside the cache Volume's mount, a
    service queue that cannot hold the inputs Modal routes to one container at once (`MAX_CONCURRENT_INPUTS`),
    clip limits a job's call cannot finish within its timeout (`CLIP_FRAME_S`), and any other value
    `app.settings.Settings` refuses."""
    found: dict[str, str] = {}
    device = env.get("SHARP_DEVICE", "auto").strip().lower()
    if device not in DEVICES_ON_MODAL:
        found["SHARP_DEVICE"] = (f"SHARP_DEVICE={device!r}: Modal's GPU containers run CUDA; use one of "
                                 f"{', '.join(DEVICES_ON_MODAL)} (or leave it unset: cuda)")
    checkpoint = env.get("SHARP_CHECKPOINT", "").strip()
    path = PurePosixPath(checkpoint)
    if checkpoint and (not path.is_relative_to(CACHE_MOUNT) or path == CACHE_MOUNT or ".." in path.parts):
        found["SHARP_CHECKPOINT"] = (
            f"SHARP_CHECKPOINT={checkpoint!r}: not on the cache Volume (mounted at {CACHE_MOUNT}); upload it "
            f"(`modal volume put {CACHE_VOLUME_NAME} my.pt /my.pt`) and set SHARP_CHECKPOINT={CACHE_MOUNT}/my.pt, "
            "or set SHARP_CHECKPOINT_URL")
    queue = env.get("SHARP_MAX_QUEUE", "").strip()
    if queue.isdigit() and int(queue) + 1 < MAX_CONCURRENT_INPUTS:
        found["SHARP_MAX_QUEUE"] = (
            f"SHARP_MAX_QUEUE={queue}: a GPU container takes {MAX_CONCURRENT_INPUTS} inputs at once (1 predicting "
            f"+ {MAX_CONCURRENT_INPUTS - 1} waiting), so the last ones would get 503 queue_full; set it to "
            f"{MAX_CONCURRENT_INPUTS - 1} or more (or leave it unset)")
    try:
        frames = int(env.get("SHARP_VIDEO_MAX_FRAMES", "120"))
        wait_s = float(env.get("SHARP_VIDEO_CHUNK_WAIT_S", "120"))
    except ValueError:
        pass  # named by the settings' own check below
    else:
        if wait_s + frames * CLIP_FRAME_S > TIMEOUT_S:
            found["SHARP_VIDEO_CHUNK_WAIT_S"] = (
                f"SHARP_VIDEO_CHUNK_WAIT_S={wait_s:g} + SHARP_VIDEO_MAX_FRAMES={frames} x {CLIP_FRAME_S:g} s: a clip "
                f"job could outlive its call's timeout ({TIMEOUT_S} s) when its chunks wait in Modal's queue and "
                "its frames are predicted in its own container; lower one of them")
    for name, message in _settings_errors(env):
        found.setdefault(name, f"{name}={env.get(name)!r}: {message}")
    return list(found.values())


def _settings_errors(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(variable, message) for each value of `env` that `app.settings.Settings`, reading it as a container
    does (from its environment), refuses."""
    from pydantic import ValidationError

    from app.settings import Settings

    saved = {name: value for name, value in os.environ.items() if name.upper().startswith("SHARP_")}
    try:
        for name in saved:
            del os.environ[name]
        os.environ.update(env)
        Settings()
    except ValidationError as error:
        return [(f"SHARP_{str(item['loc'][0]).upper()}", item["msg"]) for item in error.errors()]
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)
    return []


def torch_requirement(pyproject: Path = PYPROJECT) -> str:
    """The pinned torch requirement (`torch==X.Y.Z`) of pyproject's `tested-torch` extra."""
    import tomllib

    with pyproject.open("rb") as file:
        specs = tomllib.load(file)["project"]["optional-dependencies"][TESTED_TORCH_EXTRA]
    if len(specs) != 1 or not specs[0].replace(" ", "").startswith("torch=="):
        raise RuntimeError(f"{pyproject}: {TESTED_TORCH_EXTRA} must be one pinned torch==X.Y.Z, got {specs}")
    return specs[0]


GPU_ONLY_REQUIREMENTS = ("torch",)
"""pyproject dependencies only the GPU side imports: the light image (the CPU front, the forwarders) leaves them out."""


def light_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """pyproject's `dependencies` but `GPU_ONLY_REQUIREMENTS` (no torch): what the light image installs. The
    front imports `app.http` (FastAPI, pydantic, multipart, the image and video probes), never torch
    (`tests/deploy/test_front_light.py` imports it with torch made unimportable)."""
    import re

    import tomllib

    with pyproject.open("rb") as file:
        dependencies = tomllib.load(file)["project"]["dependencies"]
    return [spec for spec in dependencies
            if re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower() not in GPU_ONLY_REQUIREMENTS]


def vendor_files() -> tuple[str, ...]:
    """The page's vendor files (paths under `app/web/static/vendor`), from web/copy-vendor.mjs's list."""
    import re

    text = VENDOR_LIST.read_text(encoding="utf-8")
    block = text[text.index("const FILES = ["):]
    block = block[: block.index("];")]
    return (*re.findall(r'\[\s*"[^"]+",\s*"[^"]+",\s*"([^"]+)"\s*\]', block), "versions.json")


def missing_vendor_files() -> list[str]:
    """The page's vendor files absent from `app/web/static/vendor` (`make web` builds them)."""
    return [name for name in vendor_files() if not (VENDOR_DIR / name).is_file()]


class VendorFilesMissingError(RuntimeError):
    """The page's vendor files are not built: a deploy would ship a page that cannot draw."""


def require_vendor_files() -> None:
    """Refuse to define the apps locally (so: to deploy) without the page's vendor files."""
    missing = missing_vendor_files()
    if missing:
        raise VendorFilesMissingError(
            f"the web page's vendor files are not built ({', '.join(missing)} missing under {VENDOR_DIR}): "
            "run `make web` before `modal deploy`")

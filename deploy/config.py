"""What a Modal deploy reads from the local environment, and what its containers' environment holds.

Deploy-time switches, read by `modal deploy` / `modal run` / `modal serve` from the local environment:

* `SHARP_GPU` - GPU type for the model containers (default `A100`; e.g. `H100`, `L40S`, `A100-80GB`).
* `SHARP_SCALEDOWN_WINDOW` - seconds an idle GPU container is kept warm (default 300).
* `SHARP_PROXY_AUTH=1` - the web endpoint requires Modal proxy-auth headers (`Modal-Key`/`Modal-Secret`).
* `SHARP_API_KEY_SECRET=<name>` - attach that Modal Secret (it should hold `SHARP_API_KEY`).
* `SHARP_MEMORY_SNAPSHOT=0` - turn memory snapshots off (they are on by default).
* `SHARP_MAX_CONTAINERS` - most GPU containers running jobs at once, and most predicting clips' frames
  (default 10 each; `modal_api.SharpJobWorker`, `modal_api.SharpFrameWorker`).

Every `Settings` field (`SHARP_<FIELD>`, read from `app/settings.py` itself) set at deploy time is copied
into the image's environment, except the API key (a Secret) and the cache dir (the Volume). The switches
above are copied too: a container re-imports the deploy file, and must build the same classes with the
same dependencies as the deploy did, or Modal refuses to start it (`ExecutionError` on a dependency
count mismatch) - so the container reads the switches from the image, not from a laptop it cannot see.

Cheap to import (no torch, no pydantic): the CPU-only functions import it on an image without them.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

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

DEPLOY_SWITCHES = ("SHARP_GPU", "SHARP_SCALEDOWN_WINDOW", "SHARP_PROXY_AUTH", "SHARP_API_KEY_SECRET",
                   "SHARP_MEMORY_SNAPSHOT", "SHARP_MAX_CONTAINERS")
"""Read when the deploy files are imported (`modal deploy` and every container), baked into the image."""
NOT_PASSED = ("SHARP_API_KEY", "SHARP_CACHE_DIR")
"""Settings never copied from the deploy environment: a key belongs in a Secret, the cache is the Volume."""

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


def container_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `SHARP_*` environment baked into the images: defaults, then every setting and switch set (and
    non-empty) in `environ`, then the cache dir. In a container, `environ` already is this mapping, so the
    container's import rebuilds the same image definition as the deploy."""
    environ = _env(environ)
    env = dict(CONTAINER_DEFAULTS)
    for name in (*settings_env_names(), *DEPLOY_SWITCHES):
        value = environ.get(name)
        if name not in NOT_PASSED and value is not None and value.strip():
            env[name] = value
    env["SHARP_CACHE_DIR"] = str(CACHE_MOUNT)
    return env


def torch_requirement(pyproject: Path = PYPROJECT) -> str:
    """The pinned torch requirement (`torch==X.Y.Z`) of pyproject's `tested-torch` extra."""
    import tomllib

    with pyproject.open("rb") as file:
        specs = tomllib.load(file)["project"]["optional-dependencies"][TESTED_TORCH_EXTRA]
    if len(specs) != 1 or not specs[0].replace(" ", "").startswith("torch=="):
        raise RuntimeError(f"{pyproject}: {TESTED_TORCH_EXTRA} must be one pinned torch==X.Y.Z, got {specs}")
    return specs[0]


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

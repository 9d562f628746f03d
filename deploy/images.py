"""The Modal images and Volumes both deploy files use.

* `gpu_image`: Debian slim + the project's dependencies with the tested torch (pyproject.toml's
  `dependencies` and `tested-torch` extra, read at build time, as the Makefile and the Dockerfile do) + the
  container environment (`deploy.config.container_env`) + `app/` and `deploy/`. The PyPI torch wheels
  for Linux x86-64 bundle CUDA, so no CUDA base image is needed. The env layer comes after the dependencies,
  so changing a setting reinstalls nothing; the sources are added at container start: code redeploys in seconds.
* `light_image`: Debian slim + the project's dependencies but torch (`deploy.config.light_requirements`:
  FastAPI, pydantic, multipart, numpy, Pillow, PyAV, ...) + the same environment + the sources: the CPU
  front (`modal_api.fastapi_app`: it checks every request with `app.http`, which never imports torch) and the
  functions that only forward a call. No torch nor its CUDA libraries (gigabytes) for a front's cold start.
"""

from __future__ import annotations

from pathlib import Path

import modal

from deploy.config import (
    CACHE_VOLUME_NAME,
    JOBS_VOLUME_NAME,
    PYPROJECT,
    PYTHON_VERSION,
    TESTED_TORCH_EXTRA,
    container_env,
    light_requirements,
)


def _not_shipped(path: Path) -> bool:
    """What `add_local_python_source` leaves out: all but Python files and the web page (`app/web/static`)."""
    return not (path.suffix == ".py" or "static" in path.parts)


def build_gpu_image() -> modal.Image:
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        .pip_install_from_pyproject(str(PYPROJECT), optional_dependencies=[TESTED_TORCH_EXTRA])
        .env(container_env())
        .add_local_python_source("app", "deploy", ignore=_not_shipped)
    )


def build_light_image() -> modal.Image:
    return (
        modal.Image.debian_slim(python_version=PYTHON_VERSION)
        # pyproject.toml is read where the image is built (`modal deploy`); a container, which never builds
        # its image, has no pyproject (pip_install_from_pyproject reads its file only when building, too)
        .pip_install(*(light_requirements() if modal.is_local() else []))
        .env(container_env())
        .add_local_python_source("app", "deploy", ignore=_not_shipped)
    )


gpu_image = build_gpu_image()
light_image = build_light_image()
cache_volume = modal.Volume.from_name(CACHE_VOLUME_NAME, create_if_missing=True)
jobs_volume = modal.Volume.from_name(JOBS_VOLUME_NAME, create_if_missing=True)

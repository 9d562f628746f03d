# sharp-serve: the SHARP HTTP API (`python -m app serve`) on an NVIDIA GPU, or the CPU without one.
#
#   docker build -t sharp-serve .
#   docker run --gpus all -p 8000:8000 -v sharp-cache:/cache sharp-serve
#
# The first start downloads the ~2.8 GB checkpoint into the /cache volume; /health answers 503
# "loading" until the model is ready. Configure with SHARP_* variables (-e SHARP_API_KEY=...).
# torch comes from PyPI at the version the project is tested with (pyproject's tested-torch extra); on
# x86-64 Linux that wheel bundles CUDA, so no CUDA base image is needed, only the host's NVIDIA driver.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The web page's renderer: three.js and Spark from npm, pinned with integrity hashes in web/package-lock.json,
# copied into app/web/static/vendor. Node.js stays in this stage; the image serves the files itself (no CDN).
FROM node:20-slim AS web
WORKDIR /src
COPY web/package.json web/package-lock.json web/copy-vendor.mjs ./web/
RUN npm ci --prefix web --no-audit --no-fund \
    && node web/copy-vendor.mjs

FROM ${PYTHON_IMAGE} AS build
# Empty: the tested release, pyproject.toml's `tested-torch` extra (as the Makefile and the Modal image).
ARG TORCH_SPEC=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone: editing the code does not reinstall them.
# TORCH_SPEC pins torch (hadolint cannot see through the variable).
COPY pyproject.toml ./
# Only `dependencies`: no extra, so no Modal SDK in the image.
# hadolint ignore=DL3013
RUN python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['tested-torch'][0])" > /tmp/torch.txt \
    && python -m pip install "${TORCH_SPEC:-$(cat /tmp/torch.txt)}" \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && python -m pip install -r /tmp/requirements.txt
COPY README.md ./
COPY app ./app
# Before the install: the package data (app/web/static/**) then includes the renderer builds.
COPY --from=web /src/app/web/static/vendor ./app/web/static/vendor
RUN python -m pip install --no-deps . \
    && python -c "import torch, app.http; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 --user-group sharp \
    && mkdir -p /cache \
    && chown sharp:sharp /cache

ENV SHARP_HOST=0.0.0.0 \
    SHARP_PORT=8000 \
    SHARP_CACHE_DIR=/cache
VOLUME ["/cache"]
EXPOSE 8000

USER 10001:10001
WORKDIR /home/sharp

# Unhealthy until /health returns 200; the start period covers the first checkpoint download.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SHARP_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["python", "-m", "app", "serve"]

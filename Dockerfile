# sharp-serve: the SHARP HTTP API (`python -m app serve`) on an NVIDIA GPU, or the CPU without one.
#
#   docker build -t sharp-serve .
#   docker run --gpus all -p 8000:8000 -v sharp-cache:/cache sharp-serve
#
# The first start downloads the ~2.8 GB checkpoint into the /cache volume; /health answers 503
# "loading" until the model is ready. Configure with SHARP_* variables (-e SHARP_API_KEY=...).
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# The web page's renderer: three.js and Spark from npm, pinned with integrity hashes in web/package-lock.json,
# copied into app/web/static/vendor. Node.js stays in this stage; the image serves the files itself (no CDN).
FROM node:20-slim AS web
WORKDIR /src
COPY web/package.json web/package-lock.json web/copy-vendor.mjs ./web/
RUN npm ci --prefix web --no-audit --no-fund \
    && node web/copy-vendor.mjs

FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The base image's CUDA build of torch satisfies the project's torch requirement and is kept.
WORKDIR /opt/sharp-serve
COPY pyproject.toml README.md ./
COPY app ./app
COPY --from=web /src/app/web/static/vendor ./app/web/static/vendor
RUN python -m pip install . \
    && python -c "import torch, app.api; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

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

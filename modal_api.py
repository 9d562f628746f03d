"""SHARP as an HTTP API on Modal: the local server's FastAPI app, on a GPU, scaled to zero when idle.

    modal deploy modal_api.py                     # https://<workspace>--sharp-api-fastapi-app.modal.run
    SHARP_GPU=H100 modal deploy modal_api.py      # another GPU type
    modal serve modal_api.py                      # a temporary dev URL that live-reloads on edits

Each container loads the model once. The checkpoint lives on the Modal Volume `sharp-model-cache`
(mounted at /cache): the first container downloads it and commits it, later ones read it. With memory
snapshots, the CPU-side start (imports, weights in RAM) is restored from a snapshot instead of redone;
only the move to the GPU runs on every cold start. Options and environment: see `app/deploy.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import modal

from app import deploy

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_NAME = "sharp-api"
WEB_LABEL = f"{APP_NAME}-fastapi-app"
"""The URL label. A web method on a class is otherwise labelled `<app>-<class>-<method>`
(`sharp-api-sharpapi-fastapi-app`); pinning it gives https://<workspace>--sharp-api-fastapi-app.modal.run."""

app = modal.App(APP_NAME)


@app.cls(**deploy.model_cls_options())
@modal.concurrent(max_inputs=deploy.MAX_CONCURRENT_INPUTS)
class SharpAPI:
    """A GPU container: one model and one FastAPI app, serving up to 10 requests at once."""

    @modal.enter(snap=deploy.memory_snapshot())
    def load_weights(self) -> None:
        """Imports and weights into CPU memory (captured by the memory snapshot)."""
        self.settings = deploy.container_settings()
        self.predictor = deploy.load_on_cpu(self.settings, deploy.cache_volume)

    @modal.enter(snap=False)
    def move_to_gpu(self) -> None:
        """After every (re)start: the network onto the GPU."""
        self.settings = deploy.container_settings()  # re-read: a Secret may have changed since the snapshot
        self.predictor = deploy.move_to_device(self.predictor, self.settings)

    @modal.asgi_app(label=WEB_LABEL, requires_proxy_auth=deploy.proxy_auth())
    def fastapi_app(self) -> FastAPI:
        """The same app as `sharp-serve serve`, ready at once with this container's predictor."""
        from app.http import create_app

        return create_app(self.settings, predictor=self.predictor)

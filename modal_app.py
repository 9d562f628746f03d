"""SHARP as Modal functions: call the model from Python, one photo or thousands, without HTTP.

    modal deploy modal_app.py
    modal run modal_app.py --image-path photo.jpg --output-path out.ply [--f-px 1200]

From any Python process with a Modal token, once deployed:

    SharpModel = modal.Cls.from_name("sharp-view-synthesis", "SharpModel")
    ply = SharpModel().predict_and_save_ply.remote(image_bytes)           # blocks until done
    plys = list(SharpModel().predict_and_save_ply.map(many_image_bytes))  # fans out over containers

    predict_and_save_ply = modal.Function.from_name("sharp-view-synthesis", "predict_and_save_ply")
    ply = predict_and_save_ply.remote(image_bytes)                         # same result, one hop more

The model lives in the GPU class `SharpModel` (same image, volume, GPU and memory-snapshot setup as
`modal_api.py`, from `app/deploy.py`). The module-level functions `predict_and_save_ply` and `predict`
are thin CPU-only forwarders to it, so `modal.Function.from_name` works too; they hold no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import modal

from app import deploy

APP_NAME = "sharp-view-synthesis"

app = modal.App(APP_NAME)


@app.cls(**deploy.model_cls_options())
@modal.concurrent(max_inputs=deploy.MAX_CONCURRENT_INPUTS)
class SharpModel:
    """One GPU container holding one model. Calls go through the same `InferenceService` as HTTP requests
    (bounded queue, decoding off the event loop, one forward pass at a time), so up to 10 calls overlap."""

    @modal.enter(snap=deploy.memory_snapshot())
    def load_weights(self) -> None:
        """Imports and weights into CPU memory (captured by the memory snapshot)."""
        self.settings = deploy.container_settings()
        self.predictor = deploy.load_on_cpu(self.settings, deploy.cache_volume)

    @modal.enter(snap=False)
    def move_to_gpu(self) -> None:
        """After every (re)start: the network onto the GPU, and the service that feeds it."""
        from app.service import InferenceService

        self.settings = deploy.container_settings()  # re-read: a Secret may have changed since the snapshot
        self.predictor = deploy.move_to_device(self.predictor, self.settings)
        self.service = InferenceService(self.settings, self.predictor)

    @modal.exit()
    def shutdown(self) -> None:
        """Cancel queued predictions when the container stops."""
        service = getattr(self, "service", None)
        if service is not None:
            service.close()

    @modal.method()
    async def predict_and_save_ply(self, image_bytes: bytes, f_px: float | None = None) -> bytes:
        """The photo's Gaussians as a binary PLY: the file `POST /predict/ply` returns."""
        from app.focal import check_f_px

        result = await self.service.run(image_bytes, filename=None, f_px=check_f_px(f_px), outputs={"ply": {}})
        return result.outputs["ply"].body

    @modal.method()
    async def predict(self, image_bytes: bytes, f_px: float | None = None, max_gaussians: int | None = None,
                      encoding: Literal["list", "base64"] = "list") -> dict[str, Any]:
        """The photo's Gaussians as the JSON document `POST /predict` returns (same builder), as a dict.

        As with the HTTP endpoint, the full SHARP scene (~1.18M Gaussians) is very large as lists; pass
        `encoding="base64"` and/or `max_gaussians` for anything but small scenes.
        """
        import orjson

        from app.focal import check_f_px

        result = await self.service.run(image_bytes, filename=None, f_px=check_f_px(f_px),
                                        outputs={"json": {"max_gaussians": max_gaussians, "encoding": encoding}})
        return orjson.loads(result.outputs["json"].body)


@app.function(image=deploy.image, timeout=2 * deploy.TIMEOUT_S)
@modal.concurrent(max_inputs=100)
async def predict_and_save_ply(image_bytes: bytes, f_px: float | None = None) -> bytes:
    """Forwards to `SharpModel().predict_and_save_ply` (for `modal.Function.from_name`); holds no model."""
    return await SharpModel().predict_and_save_ply.remote.aio(image_bytes, f_px)


@app.function(image=deploy.image, timeout=2 * deploy.TIMEOUT_S)
@modal.concurrent(max_inputs=100)
async def predict(image_bytes: bytes, f_px: float | None = None, max_gaussians: int | None = None,
                  encoding: Literal["list", "base64"] = "list") -> dict[str, Any]:
    """Forwards to `SharpModel().predict` (for `modal.Function.from_name`); holds no model."""
    return await SharpModel().predict.remote.aio(image_bytes, f_px, max_gaussians, encoding)


@app.local_entrypoint()
def main(image_path: str, output_path: str = "out.ply", f_px: float | None = None) -> None:
    """`modal run modal_app.py --image-path photo.jpg --output-path out.ply [--f-px 1200]`."""
    image_bytes = Path(image_path).read_bytes()
    ply = SharpModel().predict_and_save_ply.remote(image_bytes, f_px)
    Path(output_path).write_bytes(ply)
    print(f"Wrote {len(ply) / 1e6:.1f} MB of Gaussians to {output_path}")

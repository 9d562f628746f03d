"""SHARP as Modal functions: call the model from Python, one photo or thousands, without HTTP.

    modal deploy modal_app.py
    modal run modal_app.py::seed_weights             # once: the checkpoint onto the Volume (docs/modal.md)
    modal run modal_app.py --image-path photo.jpg --output-path out.ply [--f-px 1200]

From any Python process with a Modal token, once deployed:

    SharpModel = modal.Cls.from_name("sharp-view-synthesis", "SharpModel")
    ply = SharpModel().predict_and_save_ply.remote(image_bytes)           # blocks until done
    scenes_zip = SharpModel().predict_clip.remote(clip_bytes, ["spz"], fps=2)  # a clip: a scene per frame
    plys = list(SharpModel().predict_and_save_ply.map(many_image_bytes))  # fans out over containers

    predict_and_save_ply = modal.Function.from_name("sharp-view-synthesis", "predict_and_save_ply")
    ply = predict_and_save_ply.remote(image_bytes)                         # same result, one hop more

The model lives in the GPU class `SharpModel` (the lifecycle of every GPU class, `deploy.container`). The
module-level functions `predict_and_save_ply` and `predict` forward to it from a light image (no torch,
no model), so `modal.Function.from_name` works too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import modal

from deploy import config
from deploy.container import ModelContainer, container_settings, gpu_cls_options, prepare_checkpoint
from deploy.images import cache_volume, gpu_image, light_image

if TYPE_CHECKING:
    from app.vocabulary import AlignMode

APP_NAME = "sharp-view-synthesis"
FORWARDER_MAX_INPUTS = 16
FORWARDER_MEMORY_MB = (2048, 4096)
"""Request, limit: each input holds a photo and its result (a PLY is ~70 MB) while it waits."""

app = modal.App(APP_NAME)
forwarder = app.function(image=light_image, timeout=2 * config.TIMEOUT_S, memory=FORWARDER_MEMORY_MB)


@app.cls(**gpu_cls_options())
@modal.concurrent(max_inputs=config.MAX_CONCURRENT_INPUTS)
class SharpModel(ModelContainer):
    """One GPU container holding one model. Calls go through the same `InferenceService` as HTTP requests
    (bounded queue, decoding off the event loop, one forward pass at a time), so up to 10 calls overlap."""

    @modal.method()
    async def predict_and_save_ply(self, image_bytes: bytes, f_px: float | None = None) -> bytes:
        """The photo's Gaussians as a binary PLY: the file `POST /predict/ply` returns."""
        from app.focal import check_f_px

        result = await self.service.run(image_bytes, filename=None, f_px=check_f_px(f_px), outputs={"ply": {}})
        return result.outputs["ply"].body

    @modal.method()
    async def predict(self, image_bytes: bytes, f_px: float | None = None, max_gaussians: int | float | None = None,
                      encoding: Literal["list", "base64"] = "list") -> dict[str, Any]:
        """The photo's Gaussians as the JSON document `POST /predict` returns (same builder), as a dict.

        As with the HTTP endpoint, the full SHARP scene (~1.18M Gaussians) is very large as lists; pass
        `encoding="base64"` and/or `max_gaussians` (a count, or a fraction such as 0.25) for anything but
        small scenes.
        """
        import orjson

        from app.budget import check_max_gaussians
        from app.focal import check_f_px

        result = await self.service.run(image_bytes, filename=None, f_px=check_f_px(f_px),
                                        max_gaussians=check_max_gaussians(max_gaussians),
                                        outputs={"json": {"encoding": encoding}})
        return orjson.loads(result.outputs["json"].body)


    @modal.method()
    async def predict_clip(self, clip_bytes: bytes, outputs: list[str] | None = None, f_px: float | None = None,
                           fps: float | None = None, start: float = 0.0, end: float | None = None,
                           max_frames: int | None = None, align: AlignMode = "none",
                           max_gaussians: int | float | None = None) -> bytes:
        """A clip's scenes as one zip: ``frames/000000.spz``, ..., ``preview.mp4``, ``manifest.json`` (the
        tree `python -m app predict -i clip.mp4 -o out/` writes; docs/video.md). `outputs`: the frames'
        formats (default SPZ, the smallest). All frames run in this container, within the `SHARP_VIDEO_*`
        limits; for long clips, the jobs API of `modal_api.py` spreads them over containers and keeps the
        files on a Volume. Bad options or clips raise the `SharpError` the HTTP API answers 4xx with."""
        from app.budget import check_max_gaussians
        from app.focal import check_f_px
        from app.sequence.archive import ZipSink
        from app.video import Sampling

        with ZipSink() as archive:
            await self.service.run_sequence(
                clip_bytes, f_px=check_f_px(f_px), outputs={name: {} for name in outputs or ["spz"]},
                sampling=Sampling(fps=fps, start=start, end=end, max_frames=max_frames), align=align,
                max_gaussians=check_max_gaussians(max_gaussians), sink=archive)
            return archive.finish()


@forwarder
@modal.concurrent(max_inputs=FORWARDER_MAX_INPUTS)
async def predict_and_save_ply(image_bytes: bytes, f_px: float | None = None) -> bytes:
    """Forwards to `SharpModel().predict_and_save_ply` (for `modal.Function.from_name`); holds no model."""
    return await SharpModel().predict_and_save_ply.remote.aio(image_bytes, f_px)


@forwarder
@modal.concurrent(max_inputs=FORWARDER_MAX_INPUTS)
async def predict(image_bytes: bytes, f_px: float | None = None, max_gaussians: int | float | None = None,
                  encoding: Literal["list", "base64"] = "list") -> dict[str, Any]:
    """Forwards to `SharpModel().predict` (for `modal.Function.from_name`); holds no model."""
    return await SharpModel().predict.remote.aio(image_bytes, f_px, max_gaussians, encoding)


@app.function(image=gpu_image, volumes={str(config.CACHE_MOUNT): cache_volume}, timeout=2 * config.TIMEOUT_S)
def seed_weights() -> str:
    """`modal run modal_app.py::seed_weights`: download the checkpoint the settings name onto the cache
    Volume and commit it, once, before the first GPU containers start (each would download it otherwise)."""
    path = prepare_checkpoint(container_settings(), cache_volume)
    return f"{path} is on the Volume {config.CACHE_VOLUME_NAME}" if path else "this preset needs no checkpoint"


@app.local_entrypoint()
def main(image_path: str, output_path: str = "out.ply", f_px: float | None = None) -> None:
    """`modal run modal_app.py --image-path photo.jpg --output-path out.ply [--f-px 1200]`."""
    image_bytes = Path(image_path).read_bytes()
    ply = SharpModel().predict_and_save_ply.remote(image_bytes, f_px)
    Path(output_path).write_bytes(ply)
    print(f"Wrote {len(ply) / 1e6:.1f} MB of Gaussians to {output_path}")

"""One job's work, wherever it runs (this process's worker, a Modal GPU container): read the stored
upload, run `app.pipeline` through the `InferenceService` (decode -> predict -> encode each output), and
write each file atomically into the `JobStore`. The job's fields (name, model, metadata, timings,
results) are filled in as it goes; its status is the caller's business."""

from __future__ import annotations

import anyio.to_thread

from app.forward_progress import ProgressCallback
from app.jobs.base import Job
from app.jobs.store import JobStore
from app.service import InferenceService


async def execute(service: InferenceService, store: JobStore, job: Job, progress: ProgressCallback) -> None:
    """Make every output of `job`. `progress(stage, fraction)` is called for decode and encode on the
    event loop and for the prediction's stages on the prediction thread; an exception it raises (a
    cancellation) stops the job there. Errors: `ImageError`, `SharpError`, whatever `progress` raises."""
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    decoded = await service.decode(data, filename=job.filename)
    progress("decode", 1.0)
    prediction = await service.predict_decoded(decoded, f_px=job.f_px, progress=progress)
    scene = prediction.scene
    job.name = prediction.name
    job.model = prediction.model.summary()
    job.metadata = {"image_width": scene.image_width, "image_height": scene.image_height, "f_px": scene.f_px,
                    "f_px_source": prediction.f_px_source, "num_gaussians": scene.num_gaussians}
    encode_ms = 0.0
    for done, name in enumerate(job.outputs):
        progress("encode", done / len(job.outputs))
        output = await service.encode(prediction, name, **(job.options if name == "json" else {}))
        encode_ms += prediction.timings_ms.pop("encode", 0.0)
        job.results[name] = await anyio.to_thread.run_sync(store.write_result, job.id, name, output.body)
    job.timings_ms = {**prediction.timings_ms, "encode": encode_ms}

"""One job's work, wherever it runs (this process's worker, a Modal GPU container): read the stored
upload, run it once through `InferenceService.run` (decode -> predict -> encode every output), and
write each file atomically into the `JobStore` as soon as it is encoded (one output's bytes in memory at a
time). The job's fields (name, model, metadata, timings,
results) are filled in; its status is the caller's business."""

from __future__ import annotations

import anyio.to_thread

from app.jobs.base import Job, json_options_of
from app.jobs.store import JobStore
from app.pipeline import EncodedOutput
from app.service import InferenceService
from app.vocabulary import ProgressCallback


async def execute(service: InferenceService, store: JobStore, job: Job, progress: ProgressCallback) -> None:
    """Make every output of `job`. `progress(stage, fraction)` is called on the run's worker thread; an
    exception it raises (a cancellation) stops the job there. Errors: `ImageError`, `SharpError`, whatever
    `progress` raises."""
    data = await anyio.to_thread.run_sync(store.read_input, job.id)
    outputs = {name: json_options_of(job.options) if name == "json" else {} for name in job.outputs}
    written: dict[str, int] = {}  # name -> bytes written

    def write(output: EncodedOutput) -> None:  # on the run's worker thread
        written[output.format] = store.write_result(job.id, output.format, output.body)

    result = await service.run(data, filename=job.filename, f_px=job.f_px, outputs=outputs,
                               max_gaussians=job.options.get("max_gaussians"), progress=progress, admit=False,
                               sink=write)
    prediction, scene = result.prediction, result.prediction.scene
    job.name = prediction.name
    job.model = prediction.model.summary()
    job.metadata = {"image_width": scene.image_width, "image_height": scene.image_height, "f_px": scene.f_px,
                    "f_px_source": prediction.f_px_source, "num_gaussians": scene.num_gaussians,
                    "total_gaussians": prediction.num_predicted}
    job.results.update(written)
    job.timings_ms = result.timings_ms

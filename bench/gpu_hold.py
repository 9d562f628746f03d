"""How long a Modal GPU container is held after its forward pass, for one full-size photo job.

    python -m bench.gpu_hold [--preset tiny_full] [--outputs ply,spz,sog,preview]

Runs the containers' own code (`app.jobs.modal_worker`, `app.jobs.modal_clip`) locally on the CPU, on a real
job store in a temporary folder, with the conformance photo and `tiny_full` (1,179,648 Gaussians, the real
output size, synthetic weights). The jobs Volume is that folder: its reload and commit do nothing here (on
Modal a commit uploads what changed: the stash, 56 B per Gaussian, 66 MB at full size; not measured).

* `before`: the whole job in the GPU container (`run_job` without `predict`, as photo jobs ran until now):
  decode, forward, postprocess, then every output and preview. Held after the forward: from the forward's
  end (the predictor's `postprocess` stage starts) to the job's return.
* `split`: the GPU container's `predict_job` (decode, forward, postprocess, the prediction stashed): its
  `after_forward_s`, from the forward's end to its return. Then the CPU container's part (load the stash,
  budget, every output and preview: `run_job` with `predict`, whose GPU call is this one), timed apart.

Prints `gpu_hold_after_forward_s:` (split) and `gpu_hold_after_forward_before_s:`, both measured in this run
on the same machine, the postprocess inside them (it runs on the GPU's device on Modal, on this CPU here),
and `cpu_container_s:`.

A clip job (`--clip-frames N`, default 3; 0 skips it): a clip of N frames made from the conformance photo
(`tests.helpers.make_clip`, 640x480, aligned with `scale`, the clip's default outputs `spz` and the preview).
A clip's frames are predicted one after another, so its GPU hold is counted beyond all of its forward passes
(the call's time less the sum of its forwards):

* `before`: the whole clip job in one GPU container (`run_job` without `predict_clip`, as clip jobs ran until
  now): every frame predicted, aligned, encoded and previewed there.
* `split`: the clip's GPU call (`predict_clip`, no frame containers): every frame predicted and stashed. Then
  the CPU container's part (each stash aligned, encoded, previewed; the sequence's files and zip), timed apart
  (on Modal it runs while the GPU call predicts the next frames).

Prints `clip_gpu_hold_beyond_forward_before_s:`, `clip_gpu_hold_beyond_forward_s:` and `clip_cpu_container_s:`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "conformance" / "coffee.png"


class LocalVolume:
    """The jobs Volume as a local folder: `reload.aio()` and `commit.aio()` have nothing to do."""

    class _Nothing:
        async def aio(self) -> None:
            return None

    reload = commit = _Nothing()


def new_job(store: Any, data: bytes, outputs: list[str]) -> str:
    from app.jobs.job import Job, new_job_id

    job = Job(id=new_job_id(), created_at=time.time(), outputs=outputs, filename=PHOTO.name, f_px=None,
              options={}, input_bytes=len(data))
    store.write_input(job.id, data)
    store.save(job)
    return job.id


async def measure(preset: str, outputs: list[str]) -> dict[str, float]:
    from app.jobs import modal_worker, runner
    from app.jobs.store import JobStore
    from app.predictor import SharpPredictor
    from app.sequence.fanout import load_prediction
    from app.service import InferenceService
    from app.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="gpu-hold-"))
    settings = Settings(preset=preset, device="cpu", cache_dir=root / "cache")
    store = JobStore(root / "jobs", ttl_s=settings.job_ttl_s, max_bytes=settings.jobs_max_bytes)
    volume = LocalVolume()
    data = PHOTO.read_bytes()
    marks: list[float] = []

    class MarkingService(InferenceService):
        """Notes when each run's forward ends (its postprocess starts)."""

        async def run(self, *args: Any, progress: Any = None, **kwargs: Any) -> Any:
            def observed(stage: str, fraction: float) -> None:
                if stage == "postprocess" and fraction == 0.0:
                    marks.append(time.perf_counter())
                if progress is not None:
                    progress(stage, fraction)

            return await super().run(*args, progress=observed, **kwargs)

    gpu = MarkingService(settings, SharpPredictor.from_settings(settings, progress=False))

    job_id = new_job(store, data, outputs)
    await modal_worker.run_job(gpu, settings, store, volume, job_id)
    before = time.perf_counter() - marks[-1]
    assert store.load(job_id).status == "succeeded"  # type: ignore[union-attr]

    job_id = new_job(store, data, outputs)
    answer = await modal_worker.predict_job(gpu, store, volume, job_id)
    start = time.perf_counter()  # the CPU container: `run_job`'s `execute` with the GPU call answered
    job = store.load(job_id)
    assert job is not None
    job.status, job.started_at = "running", time.time()
    prediction, timings = load_prediction(store.stash_path(job_id, modal_worker.PHOTO_STASH).read_bytes())
    here = InferenceService(settings, modal_worker.PredictedElsewhere(prediction, timings))  # type: ignore[arg-type]
    await runner.execute(here, store, job, lambda stage, fraction: None)
    cpu_s = time.perf_counter() - start
    assert set(job.results) == set(outputs), job.results
    return {"split": answer["after_forward_s"], "before": before, "cpu": cpu_s,
            "postprocess": answer["timings_ms"]["postprocess"] / 1000, "stash_mb": answer["stash_bytes"] / 1e6,
            "forward": answer["timings_ms"]["forward"] / 1000}


async def measure_clip(preset: str, frames: int) -> dict[str, float]:
    from app.jobs import modal_clip, modal_worker, runner
    from app.jobs.job import Job, new_job_id
    from app.jobs.store import JobStore
    from app.predictor import SharpPredictor
    from app.sequence.fanout import load_prediction
    from app.service import InferenceService
    from app.settings import Settings
    from tests.helpers import make_clip

    root = Path(tempfile.mkdtemp(prefix="gpu-hold-clip-"))
    settings = Settings(preset=preset, device="cpu", cache_dir=root / "cache", video_parallel_chunks=0)
    store = JobStore(root / "jobs", ttl_s=settings.job_ttl_s, max_bytes=settings.jobs_max_bytes)
    volume = LocalVolume()
    clip = make_clip(frames, size=(640, 480), fps=10)
    gpu = InferenceService(settings, SharpPredictor.from_settings(settings, progress=False))

    def new_clip_job() -> str:
        job = Job(id=new_job_id(), created_at=time.time(), outputs=["spz", "preview"], filename="clip.mp4",
                  f_px=None, options={}, input_bytes=len(clip), sequence={"max_frames": frames, "align": "scale"})
        store.write_input(job.id, clip)
        store.save(job)
        return job.id

    job_id = new_clip_job()
    start = time.perf_counter()
    await modal_worker.run_job(gpu, settings, store, volume, job_id)
    whole_s = time.perf_counter() - start
    job = store.load(job_id)
    assert job is not None and job.status == "succeeded", job
    before = whole_s - job.timings_ms["forward"] / 1000

    job_id = new_clip_job()
    answer = await modal_clip.predict_clip(gpu, settings, store, volume, job_id, 0)
    start = time.perf_counter()  # the CPU container: `run_job`'s `execute` with every frame stashed
    job = store.load(job_id)
    assert job is not None
    job.status, job.started_at = "running", time.time()
    model = load_prediction(store.stash_path(job_id, 0).read_bytes())[0].model

    def stashed(index: int, expected: int, waiting: Any) -> Any:  # `StashedFrames` without Modal's calls
        return load_prediction(store.take_stash(job_id, index) or b"")

    here = InferenceService(settings, modal_clip.StashedModel(model))  # type: ignore[arg-type]
    await runner.execute(here, store, job, lambda stage, fraction: None, elsewhere=stashed)
    cpu_s = time.perf_counter() - start
    assert job.frames == frames and "sequence.zip" in job.results, job.results
    return {"split": answer["held_s"] - answer["forward_s"], "before": before, "cpu": cpu_s,
            "forward": answer["forward_s"], "held": answer["held_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny_full", help="model preset (default tiny_full: the real output size)")
    parser.add_argument("--outputs", default="ply,spz,sog,preview", help="the job's outputs (default: the page's)")
    parser.add_argument("--clip-frames", type=int, default=3, help="frames of the clip job (0: no clip job)")
    args = parser.parse_args()
    outputs = [name.strip() for name in args.outputs.split(",") if name.strip()]
    figures = asyncio.run(measure(args.preset, outputs))
    print(f"preset {args.preset}, outputs {','.join(outputs)}; forward {figures['forward']:.2f} s on this CPU")
    print(f"gpu_hold_after_forward_before_s: {figures['before']:.3f}   (the whole job in the GPU container)")
    print(f"gpu_hold_after_forward_s: {figures['split']:.3f}   (predict_job: postprocess "
          f"{figures['postprocess']:.3f} s + a {figures['stash_mb']:.0f} MB stash written; commit not measured)")
    print(f"cpu_container_s: {figures['cpu']:.3f}   (load the stash, decode again, every output, on the CPU container)")
    if args.clip_frames > 0:
        clip = asyncio.run(measure_clip(args.preset, args.clip_frames))
        print(f"clip of {args.clip_frames} frames (spz, preview, align scale); forwards {clip['forward']:.2f} s "
              "on this CPU")
        print(f"clip_gpu_hold_beyond_forward_before_s: {clip['before']:.3f}   (the whole clip job, GPU container)")
        print(f"clip_gpu_hold_beyond_forward_s: {clip['split']:.3f}   (predict_clip: held {clip['held']:.3f} s, "
              "postprocesses and stashes written; commits not measured)")
        print(f"clip_cpu_container_s: {clip['cpu']:.3f}   (every frame aligned, encoded and previewed, on the CPU "
              "container)")


if __name__ == "__main__":
    main()

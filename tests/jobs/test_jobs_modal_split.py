"""Photo jobs on Modal, split as `modal_api` deploys them (`app.jobs.modal_worker`): the job's call runs on a
CPU container (`SharpJobRunner.run_job`) that holds no model, its prediction is a call of the GPU class
(`SharpJobWorker.predict_job`), which stashes it on the jobs Volume and returns; every output is made on the
CPU container. Driven through Modal's own SDK against the stubbed wire (`tests.modal_wire`), each container
with its own view of the Volume."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import modal
import orjson
import pytest
from modal_proto import api_pb2

from app.formats import decode_spz
from app.formats.ply import read_ply
from app.http import create_app
from app.jobs.modal import MAX_REQUEUES, ModalJobQueue
from app.jobs.modal_worker import predict_job, run_job
from app.jobs.store import JobStore
from app.predictor import SharpPredictor
from app.service import InferenceService
from app.settings import Settings
from tests.helpers import LiveServer, events, tiny_settings
from tests.jobs.test_jobs_modal import FINAL, VOLUME, png_bytes
from tests.modal_wire import ModalWire

APP, RUNNER, PREDICT, CLIPS = "sharp-serve", "run_job", "predict_job", "run_clip_job"


@dataclass
class SplitJobs:
    wire: ModalWire
    client: httpx.Client
    gpu_entered: threading.Semaphore
    gpu_open: threading.Event
    stashed: list[dict[str, Any]]
    """What each `predict_job` call returned."""
    gpu_service: InferenceService

    def submit(self, content: bytes, **data: str) -> dict[str, Any]:
        response = self.client.post("/jobs", files={"file": ("photo.png", content, "image/png")}, data=data)
        assert response.status_code == 202, response.text
        return response.json()

    def calls(self, function: str) -> list[str]:
        return [call.id for call in self.wire.calls.values() if call.function.endswith("/" + function)]

    def commits_of(self, container: str, job_id: str) -> set[str]:
        """The job's files `container` changed in its commits (path under the job's folder)."""
        return {path.removeprefix(f"{job_id}/") for name, files in self.wire.commits if name == container
                for path in files if path.startswith(f"{job_id}/")}


@pytest.fixture
def split_jobs(tmp_path: Path, serve: Callable[[Any], LiveServer]) -> Iterator[SplitJobs]:
    settings: Settings = tiny_settings(cache_dir=tmp_path / "cache")
    predictor = SharpPredictor.load("tiny", device="cpu")
    with ModalWire(tmp_path / "modal") as wire:
        web, runner, gpu = wire.container("web"), wire.container("runner"), wire.container("gpu")
        gpu_service = InferenceService(settings, predictor)
        runner_service = InferenceService(settings)  # no model, as `SharpJobRunner`'s
        gpu_entered, gpu_open, stashed = threading.Semaphore(0), threading.Event(), []
        gpu_open.set()

        def store_of(container: Any) -> JobStore:
            return JobStore(container.mount, ttl_s=settings.job_ttl_s, max_bytes=settings.jobs_max_bytes)

        async def gpu_predict_job(job_id: str) -> dict[str, Any]:
            gpu_entered.release()
            await asyncio.to_thread(gpu_open.wait)
            answer = await predict_job(gpu_service, store_of(gpu), gpu.volume(VOLUME), job_id)
            stashed.append(answer)
            return answer

        async def spawn_prediction(job_id: str) -> str:
            return (await modal.Function.from_name(APP, PREDICT).spawn.aio(job_id)).object_id

        async def runner_run_job(job_id: str) -> dict[str, Any]:
            return await run_job(runner_service, settings, store_of(runner), runner.volume(VOLUME), job_id,
                                 predict=spawn_prediction)

        async def no_clips(job_id: str) -> dict[str, Any]:
            raise AssertionError("a photo job went to the clip class")

        wire.function(APP, PREDICT, gpu_predict_job, gpu)
        wire.function(APP, RUNNER, runner_run_job, runner)
        wire.function(APP, CLIPS, no_clips, gpu)

        async def spawn(function: str, job_id: str) -> str:
            return (await modal.Function.from_name(APP, function).spawn.aio(job_id)).object_id

        queue = ModalJobQueue(settings, store_of(web), web.volume(VOLUME), lambda job_id: spawn(CLIPS, job_id),
                              spawn_photo=lambda job_id: spawn(RUNNER, job_id))
        server = serve(create_app(settings, predictor=predictor, job_queue=queue))
        try:
            with server.client(timeout=120) as client:
                yield SplitJobs(wire, client, gpu_entered, gpu_open, stashed, gpu_service)
        finally:
            gpu_open.set()
            gpu_service.close()


def test_the_gpu_call_only_predicts_and_the_cpu_container_makes_every_output(split_jobs: SplitJobs) -> None:
    jobs = split_jobs
    photo = png_bytes()
    job = jobs.submit(photo, outputs="spz,ply,preview", max_gaussians="0.5")
    seen = events(jobs.client, job["id"])
    final = seen[-1]
    assert final["status"] == "succeeded", final
    assert final["model"]["device"] == "cpu" and final["model"]["preset"] == "tiny"  # the GPU side's own model

    # the same bytes as the synchronous endpoint, which predicts and encodes in one process
    for name in ("spz", "ply"):
        download = jobs.client.get(final["results"][name])
        assert download.status_code == 200
        direct = jobs.client.post(f"/predict/{name}", files={"file": ("photo.png", photo)},
                                  data={"max_gaussians": "0.5"})
        assert download.content == direct.content, name
    assert decode_spz(jobs.client.get(final["results"]["spz"]).content).num_gaussians == 131_072 // 2
    preview = jobs.client.get(final["results"]["preview"])
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")

    (predict_call,) = jobs.calls(PREDICT)
    (runner_call,) = jobs.calls(RUNNER)
    assert jobs.wire.calls[runner_call].args == jobs.wire.calls[predict_call].args == (job["id"],)
    # the GPU container wrote the stash and nothing else; every result came from the CPU container
    assert jobs.commits_of("gpu", job["id"]) == {"work/000000.npz"}
    runner_files = jobs.commits_of("runner", job["id"])
    assert {"job.json", "work/000000.npz"} <= runner_files and any(p.startswith("result") for p in runner_files)
    assert not [path for path in jobs.wire.committed if path.startswith(f"{job['id']}/work/")]  # tidied
    (answer,) = jobs.stashed
    assert answer["stash_bytes"] >= 56 * 131_072 and answer["after_forward_s"] > 0
    assert final["timings_ms"]["forward"] == round(answer["timings_ms"]["forward"], 1) > 0
    assert orjson.loads(jobs.wire.committed[f"{job['id']}/job.json"])["status"] == "succeeded"
    assert read_ply(jobs.client.get(final["results"]["ply"]).content).num_gaussians == 131_072 // 2


def test_an_error_of_the_gpu_call_fails_its_job_with_its_own_code(split_jobs: SplitJobs) -> None:
    """The GPU container refuses the photo (here: its settings allow fewer pixels than the front's): the SDK
    raises the `SharpError` in the CPU container, and the job fails with its code and message."""
    jobs = split_jobs
    jobs.gpu_service.settings = jobs.gpu_service.settings.model_copy(update={"max_pixels": 1000})
    job = jobs.submit(png_bytes(), outputs="spz")
    final = events(jobs.client, job["id"])[-1]
    assert final["status"] == "failed" and final["error"]["code"] == "image_too_large", final
    assert jobs.stashed == []


def test_cancelling_a_photo_job_cancels_its_gpu_call(split_jobs: SplitJobs) -> None:
    jobs = split_jobs
    jobs.gpu_open.clear()
    job = jobs.submit(png_bytes(), outputs="spz")
    assert jobs.gpu_entered.acquire(timeout=60), "the GPU call never started"
    cancelled = jobs.client.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    (predict_call,) = jobs.calls(PREDICT)
    call = jobs.wire.wait(predict_call)  # cancelled by the CPU container, while it waited for it
    assert call.result is not None and call.result.exception == "Input was cancelled by user"
    (runner_call,) = jobs.calls(RUNNER)
    jobs.wire.wait(runner_call)
    after = jobs.client.get(f"/jobs/{job['id']}").json()
    assert after["status"] in FINAL and after["status"] == "cancelled", after
    assert jobs.stashed == []


def test_a_lost_gpu_call_is_queued_again_and_the_job_completes(split_jobs: SplitJobs) -> None:
    """Modal ends the GPU call without a result and without a rerun (its own internal failure, with the SDK's
    `GenericStatus`): the CPU container queues the prediction again and the job succeeds."""
    jobs = split_jobs
    jobs.gpu_open.clear()
    job = jobs.submit(png_bytes(), outputs="spz")
    assert jobs.gpu_entered.acquire(timeout=60), "the GPU call never started"
    (lost,) = jobs.calls(PREDICT)
    jobs.wire.lose(lost, api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE)
    assert jobs.gpu_entered.acquire(timeout=60), "the prediction was not queued again"
    jobs.gpu_open.set()
    final = events(jobs.client, job["id"])[-1]
    assert final["status"] == "succeeded", final
    assert len(jobs.calls(PREDICT)) == 2 and jobs.wire.calls[lost].runs == 1
    assert jobs.client.get(final["results"]["spz"]).status_code == 200


def test_a_gpu_call_lost_every_time_fails_the_job_worker_failed(split_jobs: SplitJobs) -> None:
    jobs = split_jobs
    jobs.gpu_open.clear()
    job = jobs.submit(png_bytes(), outputs="spz")
    for attempt in range(MAX_REQUEUES + 1):
        assert jobs.gpu_entered.acquire(timeout=60), f"GPU call {attempt + 1} never started"
        jobs.wire.lose(jobs.calls(PREDICT)[-1])  # GENERIC_STATUS_TERMINATED
    final = events(jobs.client, job["id"])[-1]
    assert final["status"] == "failed" and final["error"]["code"] == "worker_failed", final
    assert len(jobs.calls(PREDICT)) == MAX_REQUEUES + 1 and jobs.stashed == []

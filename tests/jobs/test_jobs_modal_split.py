"""Jobs on Modal, split as `modal_api` deploys them (`app.jobs.modal_worker`): the job's call runs on a CPU
container (`SharpJobRunner.run_job`) that holds no model; a photo's prediction is a call of the GPU class
(`SharpJobWorker.predict_job`), a clip's frames one call there (`predict_clip`) and the chunks it spreads over
the frame class (`SharpFrameWorker.predict_frames`); each stashes its predictions on the jobs Volume, and
every output is made on the CPU container. Driven through Modal's own SDK against the stubbed wire
(`tests.modal_wire`), each container with its own view of the Volume."""

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
from app.jobs.modal_clip import predict_clip, predict_frames
from app.jobs.modal_worker import predict_job, run_job
from app.jobs.store import JobStore
from app.predictor import SharpPredictor
from app.sequence import run_sequence
from app.service import InferenceService
from app.settings import Settings
from app.video import VideoLimits
from tests.helpers import LiveServer, digest, events, make_clip, tiny_settings
from tests.jobs.test_jobs_modal import FINAL, VOLUME, Gate, png_bytes
from tests.modal_wire import ModalWire

APP, RUNNER, PREDICT, CLIP, FRAMES = "sharp-serve", "run_job", "predict_job", "predict_clip", "predict_frames"
CHUNK_FRAMES, PARALLEL_CHUNKS = 2, 2


@dataclass
class SplitJobs:
    wire: ModalWire
    client: httpx.Client
    gpu_entered: threading.Semaphore
    gpu_open: threading.Event
    stashed: list[dict[str, Any]]
    """What each `predict_job` call returned."""
    gpu_service: InferenceService
    settings: Settings
    """The settings every container here reads (a test may change them before it submits)."""
    clip_gate: Gate
    """Holds every `predict_clip` call until opened (opened to begin with)."""
    frames_gate: Gate
    """Holds every `predict_frames` call until opened (opened to begin with)."""
    broken_chunks: set[int]
    """First frames of the chunks whose `predict_frames` call fails (a frame container that died)."""
    predicted: dict[str, list[int]]
    """Clip frames predicted by the clip's GPU call (`gpu`) and by the frame container (`frames`), in order."""
    clip_answers: list[dict[str, Any]]
    """What each `predict_clip` call returned."""

    def submit(self, content: bytes, **data: str) -> dict[str, Any]:
        response = self.client.post("/jobs", files={"file": ("photo.png", content, "image/png")}, data=data)
        assert response.status_code == 202, response.text
        return response.json()

    def submit_clip(self, clip: bytes, **data: str) -> dict[str, Any]:
        response = self.client.post("/jobs", files={"file": ("walk.mp4", clip, "video/mp4")}, data=data)
        assert response.status_code == 202, response.text
        return response.json()

    def wait_final(self, job_id: str) -> dict[str, Any]:
        return events(self.client, job_id)[-1]

    def calls(self, function: str) -> list[str]:
        return [call.id for call in self.wire.calls.values() if call.function.endswith("/" + function)]

    def commits_of(self, container: str, job_id: str) -> set[str]:
        """The job's files `container` changed in its commits (path under the job's folder)."""
        return {path.removeprefix(f"{job_id}/") for name, files in self.wire.commits if name == container
                for path in files if path.startswith(f"{job_id}/")}


@pytest.fixture
def split_jobs(tmp_path: Path, serve: Callable[[Any], LiveServer]) -> Iterator[SplitJobs]:
    settings: Settings = tiny_settings(cache_dir=tmp_path / "cache", video_chunk_frames=CHUNK_FRAMES,
                                       video_parallel_chunks=PARALLEL_CHUNKS)
    predictor = SharpPredictor.load("tiny", device="cpu")
    with ModalWire(tmp_path / "modal") as wire:
        web, runner, gpu = wire.container("web"), wire.container("runner"), wire.container("gpu")
        frames = wire.container("frames")
        predicted: dict[str, list[int]] = {"gpu": [], "frames": []}
        frames_predictor = SharpPredictor.load("tiny", device="cpu")  # its own, to count what it predicts
        for name, counted in (("gpu", predictor), ("frames", frames_predictor)):
            def counting(image: Any, _predict: Any = counted.predict, _seen: list[int] = predicted[name],
                         **kwargs: Any) -> Any:
                if image.name.isdigit():  # a clip's frame (a photo's image is named after its file)
                    _seen.append(int(image.name))
                return _predict(image, **kwargs)

            counted.predict = counting  # type: ignore[method-assign]
        gpu_service = InferenceService(settings, predictor)
        frames_service = InferenceService(settings, frames_predictor)
        clip_gate, frames_gate, broken_chunks, clip_answers = Gate(), Gate(), set(), []
        clip_gate.open()
        frames_gate.open()
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

        async def spawn_frames(job_id: str, first: int, count: int) -> str:
            return (await modal.Function.from_name(APP, FRAMES).spawn.aio(job_id, first, count)).object_id

        async def gpu_predict_clip(job_id: str, first: int) -> dict[str, Any]:
            clip_gate.entered.release()
            await asyncio.to_thread(clip_gate.opened.wait)
            answer = await predict_clip(gpu_service, settings, store_of(gpu), gpu.volume(VOLUME), job_id, first,
                                        spawn_frames)
            clip_answers.append(answer)
            return answer

        async def frames_predict_frames(job_id: str, first: int, count: int) -> list[int]:
            if first in broken_chunks:
                raise RuntimeError("the container was lost")
            frames_gate.entered.release()
            await asyncio.to_thread(frames_gate.opened.wait)
            return await predict_frames(frames_service, settings, store_of(frames), frames.volume(VOLUME), job_id,
                                        first, count)

        async def spawn_clip(job_id: str, first: int) -> str:
            return (await modal.Function.from_name(APP, CLIP).spawn.aio(job_id, first)).object_id

        async def runner_run_job(job_id: str) -> dict[str, Any]:
            return await run_job(runner_service, settings, store_of(runner), runner.volume(VOLUME), job_id,
                                 predict=spawn_prediction, predict_clip=spawn_clip)

        wire.function(APP, PREDICT, gpu_predict_job, gpu)
        wire.function(APP, CLIP, gpu_predict_clip, gpu)
        wire.function(APP, FRAMES, frames_predict_frames, frames)
        wire.function(APP, RUNNER, runner_run_job, runner)

        async def spawn(job_id: str) -> str:  # every job, photo or clip, on the CPU class (modal_api.spawn_job)
            return (await modal.Function.from_name(APP, RUNNER).spawn.aio(job_id)).object_id

        queue = ModalJobQueue(settings, store_of(web), web.volume(VOLUME), spawn)
        server = serve(create_app(settings, predictor=predictor, job_queue=queue))
        try:
            with server.client(timeout=120) as client:
                yield SplitJobs(wire, client, gpu_entered, gpu_open, stashed, gpu_service, settings, clip_gate,
                                frames_gate, broken_chunks, predicted, clip_answers)
        finally:
            server.stop()  # before the wire closes: the web container polls no call of a stopped control plane
            gpu_open.set()
            clip_gate.open()
            frames_gate.open()
            gpu_service.close()
            frames_service.close()


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


SPREAD_CLIP = make_clip(5, fps=10)


@pytest.fixture(scope="module")
def serial_files() -> dict[str, bytes]:
    """`SPREAD_CLIP`'s files made by `run_sequence` here, in one place."""
    files: dict[str, bytes] = {}
    run_sequence(SharpPredictor.load("tiny", device="cpu"), SPREAD_CLIP, {"spz": {}, "ply": {}},
                 sink=files.__setitem__, limits=VideoLimits.from_settings(tiny_settings()), align="scale")
    return files


def assert_serial_files(jobs: SplitJobs, job: dict[str, Any], local: dict[str, bytes]) -> None:
    """Every file of the clip job is byte-equal to the one-place run's (the manifest but for its timings)."""
    remote = {}
    for path, url in job["results"].items():
        if path != "sequence.zip":
            response = jobs.client.get(url)
            assert response.status_code == 200, (path, response.status_code, response.text[:300])
            remote[path] = response.content
    assert sorted(remote) == sorted(local)
    frames_and_preview = sorted(path for path in local if path != "manifest.json")

    def sizes_and_digests(files: dict[str, bytes]) -> dict[str, tuple[int, str]]:  # a failure names the files
        return {path: (len(files[path]), digest(files[path])) for path in frames_and_preview}

    assert sizes_and_digests(remote) == sizes_and_digests(local)
    manifests = [orjson.loads(files["manifest.json"]) for files in (remote, local)]
    for manifest in manifests:
        for frame in manifest["frames"]:
            assert set(frame.pop("timings_ms")) >= {"decode", "forward", "encode", "preview"}
    assert manifests[0] == manifests[1]
    assert len({frame["scale"] for frame in manifests[0]["frames"]}) > 1  # the alignment did scale


def gpu_side_files(jobs: SplitJobs, job_id: str) -> set[str]:
    """The job's files the GPU containers (the clip's call, the frame container) committed."""
    return jobs.commits_of("gpu", job_id) | jobs.commits_of("frames", job_id)


@pytest.mark.parametrize("broken", [False, True], ids=["fanned-out", "a-chunk-lost"])
def test_a_clip_job_encodes_on_the_cpu_container_and_gives_the_serial_files(
        split_jobs: SplitJobs, serial_files: dict[str, bytes], broken: bool) -> None:
    """5 frames in chunks of 2: the clip's GPU call predicts frames 0-1, the frame container 2-3 and 4 (or only
    4, when the call for 2-3 fails: the clip's call predicts them after its own); the GPU containers commit
    stashes and nothing else; the CPU container (which holds no model) aligns, encodes and previews every
    frame, and each file is byte-equal to `run_sequence` run in one place. The stashes are gone at the end."""
    jobs = split_jobs
    if broken:
        jobs.broken_chunks.add(2)
    job = jobs.submit_clip(SPREAD_CLIP, align="scale", outputs="spz,ply")
    final = jobs.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    (runner_call,) = jobs.calls(RUNNER)
    (clip_call,) = jobs.calls(CLIP)
    assert jobs.wire.calls[clip_call].args == (job["id"], 0) and jobs.wire.calls[runner_call].args == (job["id"],)
    chunks = sorted(jobs.wire.calls[call].args[:2] for call in jobs.calls(FRAMES))
    assert chunks == [(job["id"], 2), (job["id"], 4)]  # both out at once, while the clip's call did 0-1
    assert jobs.predicted["gpu"] == ([0, 1, 2, 3] if broken else [0, 1])
    assert sorted(jobs.predicted["frames"]) == ([4] if broken else [2, 3, 4])  # both chunks at once
    assert gpu_side_files(jobs, job["id"]) == {f"work/{index:06d}.npz" for index in range(5)}
    runner_files = jobs.commits_of("runner", job["id"])
    made_here = {"job.json", "sequence/frames/000004.spz", "sequence/preview.mp4", "sequence/manifest.json"}
    assert made_here <= runner_files and any(path.endswith("sequence.zip") for path in runner_files), runner_files
    assert not list(jobs.wire.committed_files(f"{job['id']}/work/"))
    (answer,) = jobs.clip_answers
    assert answer["stashed"] == (4 if broken else 2) and answer["held_s"] > answer["forward_s"] > 0
    assert final["model"]["preset"] == "tiny" and final["frames"] == 5
    assert_serial_files(jobs, final, serial_files)


def test_a_chunk_left_waiting_in_modals_queue_is_taken_back_by_the_clips_gpu_call(
        split_jobs: SplitJobs, serial_files: dict[str, bytes]) -> None:
    """The frame containers never start the chunks (Modal's queue is full): past `SHARP_VIDEO_CHUNK_WAIT_S` the
    clip's GPU call cancels them, sends no more out and predicts every frame itself; the files are the serial
    ones."""
    jobs = split_jobs
    jobs.frames_gate.opened.clear()  # the chunk calls never get going
    jobs.settings.video_chunk_wait_s = 0.5
    job = jobs.submit_clip(SPREAD_CLIP, align="scale", outputs="spz,ply")
    final = jobs.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    chunks = jobs.calls(FRAMES)
    assert sorted(jobs.wire.calls[call].args[:2] for call in chunks) == [(job["id"], 2), (job["id"], 4)]
    for chunk in chunks:  # both were out at once; both taken back (cancelled), neither ran a frame
        assert jobs.wire.wait(chunk).result.exception == "Input was cancelled by user"
    assert jobs.predicted == {"gpu": [0, 1, 2, 3, 4], "frames": []}
    assert_serial_files(jobs, final, serial_files)


def test_cancelling_a_clip_job_cancels_its_gpu_calls_and_keeps_nothing(split_jobs: SplitJobs) -> None:
    jobs = split_jobs
    jobs.frames_gate.opened.clear()
    job = jobs.submit_clip(SPREAD_CLIP, outputs="spz")
    jobs.frames_gate.wait_entered()  # a chunk call is out (frames 2-3 or 4)
    cancelled = jobs.client.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    (runner_call,) = jobs.calls(RUNNER)
    jobs.wire.wait(runner_call)
    (clip_call,) = jobs.calls(CLIP)  # cancelled by the CPU container on its way out; it cancelled its chunks
    assert jobs.wire.wait(clip_call).result.exception == "Input was cancelled by user"
    chunks = jobs.calls(FRAMES)
    assert len(chunks) == 2
    for chunk in chunks:
        assert jobs.wire.wait(chunk).result.exception == "Input was cancelled by user"
    assert jobs.predicted["frames"] == [] and jobs.clip_answers == []
    after = jobs.client.get(f"/jobs/{job['id']}").json()
    assert after["status"] in FINAL and after["status"] == "cancelled", after
    assert not [name for name in jobs.wire.committed
                if name.startswith((f"{job['id']}/work", f"{job['id']}/frames", f"{job['id']}/sequence"))]


def test_a_lost_clip_call_is_queued_again_and_the_job_completes(split_jobs: SplitJobs,
                                                                serial_files: dict[str, bytes]) -> None:
    """Modal loses the clip's GPU call before it stashed a frame (its own internal failure): the CPU container
    queues it again from the frame it waits for (0), and the files are the serial ones."""
    jobs = split_jobs
    jobs.clip_gate.opened.clear()
    job = jobs.submit_clip(SPREAD_CLIP, align="scale", outputs="spz,ply")
    jobs.clip_gate.wait_entered()
    (lost,) = jobs.calls(CLIP)
    jobs.wire.lose(lost, api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE)
    jobs.clip_gate.wait_entered()  # queued again
    jobs.clip_gate.open()
    final = jobs.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    first, second = jobs.calls(CLIP)
    assert first == lost and jobs.wire.calls[second].args == (job["id"], 0) and jobs.wire.calls[lost].runs == 1
    assert_serial_files(jobs, final, serial_files)

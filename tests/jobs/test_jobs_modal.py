"""The Modal jobs path with Modal's own SDK code: the web container's app (`ModalJobQueue`) over real HTTP,
the GPU worker's `run_job` on its own event loop, both talking to a stubbed control plane
(`tests.modal_wire`) through the installed `modal` package: `Function.spawn`, `FunctionCall.get(timeout=0)`
and `.cancel()`, `Volume.reload()` / `.commit()` with a view of the Volume per container.

Not shown here: Modal's real queue, its scaling to `max_containers`, real preemption signals, the
latency of a Volume commit - only a deploy shows those (docs/jobs.md)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import modal
import numpy as np
import orjson
import pytest
from grpclib import Status
from modal_proto import api_pb2
from PIL import Image

from app.formats import decode_spz
from app.http import create_app
from app.jobs.modal import MAX_REQUEUES, POLL_ATTEMPTS, ModalJobQueue
from app.jobs.modal_worker import run_job
from app.jobs.store import JobStore
from app.predictor import SharpPredictor
from app.sequence import run_sequence
from app.service import InferenceService
from app.settings import Settings
from app.video import Sampling, VideoLimits
from tests.helpers import LiveServer, assert_error, events, make_clip, tiny_settings
from tests.modal_wire import Container, ModalWire

APP, WORKER = "sharp-serve", "run_job"  # a plain Function here; modal_api's are Cls methods
VOLUME = "sharp-jobs"
FINAL = ("succeeded", "failed", "cancelled")


def png_bytes(width: int = 96, height: int = 64) -> bytes:
    rgb = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


class Gate:
    """Holds every prediction of the worker until `open()`: a job stays `running` for as long as a test needs."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)

    def hold(self, service: InferenceService) -> None:
        predict = service.run

        async def held(*args: Any, **kwargs: Any) -> Any:
            self.entered.release()
            await asyncio.to_thread(self.opened.wait)
            return await predict(*args, **kwargs)

        service.run = held  # type: ignore[method-assign]

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=60), "the worker never reached the prediction"

    def open(self) -> None:
        self.opened.set()


@dataclass
class ModalJobs:
    wire: ModalWire
    web: Container
    worker: Container
    server: LiveServer
    client: httpx.Client
    gate: Gate
    queue: ModalJobQueue
    settings: Settings
    """The settings every container here reads (a test may change them before it submits)."""

    def submit(self, **data: str) -> dict[str, Any]:
        response = self.client.post("/jobs", files={"file": ("photo.png", png_bytes(), "image/png")}, data=data)
        assert response.status_code == 202, response.text
        return response.json()

    def call_id(self, job_id: str) -> str:
        """The function call spawned for the job."""
        (call,) = self.call_ids(job_id)
        return call

    def call_ids(self, job_id: str) -> list[str]:
        """Every function call spawned for the job, in order (a lost call's job is queued on a new one)."""
        return [call.id for call in self.wire.calls.values() if call.args == (job_id,)]

    def stopped(self, call_id: str) -> None:
        """Wait until the call's input has stopped running (its task ended, its last commit made)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            task = self.wire.calls[call_id].task
            if task is not None and task.done():
                return
            time.sleep(0.05)
        raise AssertionError(f"call {call_id} still runs")

    def stored(self, job_id: str) -> dict[str, Any]:
        """The job's state as last committed to the Volume."""
        return orjson.loads(self.wire.committed[f"{job_id}/job.json"])

    def statuses(self, job_id: str, container: str = "worker") -> list[str]:
        """The job's status in every commit of `container` that wrote its state, in order."""
        return [orjson.loads(files[f"{job_id}/job.json"])["status"] for name, files in self.wire.commits
                if name == container and files.get(f"{job_id}/job.json")]

    def wait_final(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in FINAL:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not final: {job}")


@pytest.fixture(scope="module")
def predictor() -> SharpPredictor:
    return SharpPredictor.load("tiny", device="cpu")


@pytest.fixture
def modal_jobs(tmp_path: Path, predictor: SharpPredictor, serve: Callable[[Any], LiveServer]) -> Iterator[ModalJobs]:
    settings: Settings = tiny_settings(cache_dir=tmp_path / "cache")
    with ModalWire(tmp_path / "modal") as wire:
        web, worker = wire.container("web"), wire.container("worker")
        worker_service, gate = InferenceService(settings, predictor), Gate()
        gate.hold(worker_service)
        worker_store = JobStore(worker.mount, ttl_s=settings.job_ttl_s, max_bytes=settings.jobs_max_bytes)
        worker_volume = worker.volume(VOLUME)

        async def worker_run_job(job_id: str) -> dict[str, Any]:  # the whole job in one container
            return await run_job(worker_service, settings, worker_store, worker_volume, job_id)

        wire.function(APP, WORKER, worker_run_job, worker)

        async def spawn(job_id: str) -> str:
            call = await modal.Function.from_name(APP, WORKER).spawn.aio(job_id)
            return call.object_id

        store = JobStore(web.mount, ttl_s=settings.job_ttl_s, max_bytes=settings.jobs_max_bytes)
        queue = ModalJobQueue(settings, store, web.volume(VOLUME), spawn)
        server = serve(create_app(settings, predictor=predictor, job_queue=queue))
        try:
            with server.client(timeout=120) as client:
                yield ModalJobs(wire, web, worker, server, client, gate, queue, settings)
        finally:
            server.stop()  # before the wire closes: the web container polls no call of a stopped control plane
            gate.open()
            worker_service.close()


def test_a_job_survives_its_polls_and_downloads_the_synchronous_bytes(modal_jobs: ModalJobs) -> None:
    jobs = modal_jobs
    job = jobs.submit(outputs="spz,ply")
    assert job["status"] == "queued" and job["queue_position"] is None
    jobs.gate.wait_entered()
    for _ in range(3):  # unfinished call: FunctionCall.get(timeout=0) raises the built-in TimeoutError
        polled = jobs.client.get(f"/jobs/{job['id']}").json()
        assert polled["status"] in ("queued", "running"), polled
    jobs.gate.open()

    seen = events(jobs.client, job["id"])
    assert seen[-1]["status"] == "succeeded" and seen[-1]["progress"] == 1.0
    spz = jobs.client.get(seen[-1]["results"]["spz"])
    assert spz.status_code == 200 and spz.headers["x-sharp-preset"] == "tiny"
    assert spz.content == jobs.client.post("/predict/spz", files={"file": ("photo.png", png_bytes())}).content
    assert decode_spz(spz.content).num_gaussians == 131_072
    assert jobs.statuses(job["id"]) == ["running", "succeeded"]
    assert f"{job['id']}/input" not in jobs.wire.committed  # the upload is gone once the job ran
    assert jobs.wire.calls[jobs.call_id(job["id"])].runs == 1


def test_calls_that_die_fail_their_job(modal_jobs: ModalJobs) -> None:
    jobs = modal_jobs
    timed_out = jobs.submit(outputs="spz")
    jobs.gate.wait_entered()
    jobs.wire.time_out(jobs.call_id(timed_out["id"]))  # FunctionTimeoutError
    dead = jobs.wait_final(timed_out["id"])
    assert dead["status"] == "failed" and dead["error"]["code"] == "worker_failed", dead
    assert "FunctionTimeoutError" in dead["error"]["message"]

    expired = jobs.submit(outputs="spz")
    jobs.gate.wait_entered()
    jobs.wire.expire(jobs.call_id(expired["id"]))  # OutputExpiredError: no output, nothing unfinished
    dead = jobs.wait_final(expired["id"])
    assert dead["status"] == "failed" and dead["error"]["code"] == "worker_failed", dead
    assert jobs.client.get(f"/jobs/{dead['id']}/result.spz").json()["error"]["code"] == "job_failed"


def test_a_preempted_job_goes_back_to_the_queue_and_the_rerun_completes_it(modal_jobs: ModalJobs) -> None:
    jobs = modal_jobs
    job = jobs.submit(outputs="spz")
    jobs.gate.wait_entered()
    call = jobs.call_id(job["id"])
    jobs.wire.preempt(call)  # Modal's SIGINT: the input's task is cancelled, then the input runs again
    jobs.gate.wait_entered()  # the rerun reached the prediction
    assert jobs.statuses(job["id"]) == ["running", "queued", "running"]
    assert jobs.client.get(f"/jobs/{job['id']}").json()["status"] == "running"
    jobs.gate.open()
    final = jobs.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    assert jobs.wire.calls[call].runs == 2
    assert jobs.client.get(final["results"]["spz"]).status_code == 200


def test_a_lost_call_is_queued_again_on_a_new_call_and_then_completes(modal_jobs: ModalJobs) -> None:
    """Modal ends the input `GENERIC_STATUS_TERMINATED` and does not run it again (a preemption it did not
    reschedule, a lost host): the next poll queues the job on a new call, which completes it."""
    jobs = modal_jobs
    job = jobs.submit(outputs="spz")
    jobs.gate.wait_entered()
    lost = jobs.call_id(job["id"])
    jobs.wire.lose(lost, api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
    jobs.stopped(lost)
    polled = jobs.client.get(f"/jobs/{job['id']}").json()
    assert polled["status"] == "queued", polled
    first, second = jobs.call_ids(job["id"])
    assert first == lost and jobs.stored(job["id"])["requeues"] == 1
    jobs.gate.wait_entered()  # the new call reached the prediction
    jobs.gate.open()
    final = jobs.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    assert jobs.wire.calls[second].runs == 1 and jobs.stored(job["id"])["requeues"] == 1
    assert jobs.client.get(final["results"]["spz"]).status_code == 200


def test_a_job_whose_calls_keep_failing_is_requeued_a_bounded_number_of_times(modal_jobs: ModalJobs) -> None:
    jobs = modal_jobs
    job = jobs.submit(outputs="spz")
    for attempt in range(MAX_REQUEUES + 1):
        jobs.gate.wait_entered()
        call = jobs.call_ids(job["id"])[-1]
        jobs.wire.lose(call, api_pb2.GenericResult.GENERIC_STATUS_INTERNAL_FAILURE, "worker lost")
        jobs.stopped(call)
        polled = jobs.client.get(f"/jobs/{job['id']}").json()
        assert polled["status"] == ("queued" if attempt < MAX_REQUEUES else "failed"), polled
    assert polled["error"]["code"] == "worker_failed" and "lost 4 times" in polled["error"]["message"], polled
    assert "InternalFailure" in polled["error"]["message"]
    assert len(jobs.call_ids(job["id"])) == MAX_REQUEUES + 1


def test_transient_poll_errors_fail_no_job(modal_jobs: ModalJobs) -> None:
    """Every FunctionGetOutputs answers UNAVAILABLE, past the SDK's own retries: the poll is retried, then
    the job is answered as stored; once Modal answers again the job completes on its one call."""
    jobs = modal_jobs
    job = jobs.submit(outputs="spz")
    jobs.gate.wait_entered()
    jobs.wire.fail_next("FunctionGetOutputs", Status.UNAVAILABLE, "upstream connect error", times=1000)
    before = jobs.wire.rpcs.count(("web", "FunctionGetOutputs"))
    polled = jobs.client.get(f"/jobs/{job['id']}")
    assert polled.status_code == 200 and polled.json()["status"] in ("queued", "running"), polled.text
    assert jobs.wire.rpcs.count(("web", "FunctionGetOutputs")) - before > POLL_ATTEMPTS  # the SDK's and ours
    jobs.wire.clear_failures()
    jobs.gate.open()
    final = jobs.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    assert jobs.call_ids(job["id"]) == [jobs.call_id(job["id"])] and jobs.stored(job["id"])["requeues"] == 0


def test_a_slow_commit_holds_up_only_its_own_job(modal_jobs: ModalJobs) -> None:
    """The web container's commit of one job hangs: that job's next request waits for its lock, then gets a
    retryable 503 with Retry-After; another job's requests are answered meanwhile."""
    jobs = modal_jobs
    jobs.gate.open()
    slow, other = jobs.submit(outputs="spz"), jobs.submit(outputs="spz")
    for job in (slow, other):
        assert jobs.wait_final(job["id"])["status"] == "succeeded"
    jobs.queue.lock_timeout_s = 0.5
    release = jobs.wire.hold_next("VolumeCommit")
    commits = jobs.wire.rpcs.count(("web", "VolumeCommit"))
    deleted: list[httpx.Response] = []

    def delete() -> None:
        with jobs.server.client(timeout=120) as client:
            deleted.append(client.delete(f"/jobs/{slow['id']}"))

    deleting = threading.Thread(target=delete)
    deleting.start()
    try:
        deadline = time.monotonic() + 60
        while jobs.wire.rpcs.count(("web", "VolumeCommit")) == commits:  # the delete's commit is held
            assert time.monotonic() < deadline, "the delete never committed"
            time.sleep(0.05)
        busy = jobs.client.get(f"/jobs/{slow['id']}")
        assert_error(busy, 503, "volume_busy")
        assert busy.headers["retry-after"] == "2"
        answered = jobs.client.get(f"/jobs/{other['id']}")
        assert answered.status_code == 200 and answered.json()["status"] == "succeeded", answered.text
    finally:
        release.set()
        deleting.join(timeout=60)
    assert deleted[0].status_code == 200, deleted[0].text
    assert jobs.client.get(f"/jobs/{slow['id']}").status_code == 404


def test_cancel_a_running_job(modal_jobs: ModalJobs) -> None:
    jobs = modal_jobs
    job = jobs.submit(outputs="spz")
    jobs.gate.wait_entered()
    cancelled = jobs.client.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    call = jobs.wire.wait(jobs.call_id(job["id"]))
    assert call.runs == 1 and call.result is not None and call.result.exception == "Input was cancelled by user"
    jobs.gate.open()
    after = jobs.client.get(f"/jobs/{job['id']}").json()
    assert after["status"] == "cancelled" and after["error"] is None, after  # not worker_failed
    assert jobs.statuses(job["id"])[-1] == "cancelled"  # the interrupted worker saw a cancel, not a preemption
    assert not [name for name in jobs.wire.committed if name.startswith(f"{job['id']}/result")]


def test_a_busy_volume_never_answers_from_a_stale_view(modal_jobs: ModalJobs) -> None:
    """`Volume.reload()` fails while a file of the Volume is open in the container (here: one held open, as
    another input reading the Volume would): a job finished by the worker must not look expired (410)."""
    jobs = modal_jobs
    jobs.gate.open()
    job = jobs.submit(outputs="spz")
    jobs.wire.wait(jobs.call_id(job["id"]))
    with open(jobs.web.mount / job["id"] / "job.json", "rb"):
        answer = jobs.client.get(f"/jobs/{job['id']}/result.spz")
        assert answer.status_code != 410, answer.text
        assert_error(answer, 503, "volume_busy")
        assert answer.headers["retry-after"]
    assert jobs.client.get(f"/jobs/{job['id']}/result.spz").status_code == 200


def test_a_submission_that_cannot_be_queued_leaves_nothing_behind(modal_jobs: ModalJobs) -> None:
    jobs = modal_jobs
    with open(jobs.web.mount / "held-open", "wb"):  # every commit of the web container fails (its reload)
        refused = jobs.client.post("/jobs", files={"file": ("photo.png", png_bytes(), "image/png")})
        assert_error(refused, 503, "volume_busy")
    assert not jobs.wire.calls and not [name for name in jobs.web.files() if name != "held-open"]

    jobs.wire.fail_next("FunctionMap", Status.INVALID_ARGUMENT, "the function's backlog is full")
    refused = jobs.client.post("/jobs", files={"file": ("photo.png", png_bytes(), "image/png")})
    error = assert_error(refused, 503, "queue_unavailable")
    assert "backlog" in error["message"]
    assert not [name for name in jobs.wire.committed if name.endswith("job.json")]  # rolled back, committed

    jobs.gate.open()
    job = jobs.submit(outputs="spz")
    assert jobs.wait_final(job["id"])["status"] == "succeeded"


def test_a_clip_job_on_modal_gives_the_local_files(modal_jobs: ModalJobs, predictor: SharpPredictor) -> None:
    """A clip's job run whole in one container (`run_job` without `predict_clip`) makes the same frame files and
    manifest as `run_sequence` run here (split over CPU and GPU containers: `test_jobs_modal_split`)."""
    jobs, clip = modal_jobs, make_clip(3, fps=10)
    response = jobs.client.post("/jobs", files={"file": ("walk.mp4", clip, "video/mp4")},
                                data={"max_frames": "2", "align": "scale", "outputs": "spz"})
    assert response.status_code == 202, response.text
    job = jobs.wait_final(response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["frames"] == 2 and sorted(job["results"]) == ["frames/000000.spz", "frames/000001.spz",
                                                             "manifest.json", "preview.mp4", "sequence.zip"]
    local: dict[str, bytes] = {}
    settings = tiny_settings()
    run_sequence(predictor, clip, {"spz": {}}, sink=local.__setitem__, limits=VideoLimits.from_settings(settings),
                 sampling=Sampling(max_frames=2), align="scale")
    for path in ("frames/000000.spz", "frames/000001.spz"):
        assert jobs.client.get(job["results"][path]).content == local[path]
    remote_manifest = orjson.loads(jobs.client.get(job["results"]["manifest.json"]).content)
    local_manifest = orjson.loads(local["manifest.json"])
    assert [f["scale"] for f in remote_manifest["frames"]] == [f["scale"] for f in local_manifest["frames"]]

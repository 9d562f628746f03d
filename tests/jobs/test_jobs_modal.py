"""The Modal jobs path, offline: the deploy definitions, and the web container's app driven over real HTTP
with the real GPU-side code (`SharpJobWorker.run_job`) run locally. Modal's own objects are faked: the
Volume (a directory plus reload/commit calls), the spawned call (`.spawn.aio` / `FunctionCall.from_id`,
`.get.aio(timeout=0)`, `.cancel.aio()`). Not shown here: Modal's real queue, scaling to
`max_containers`, and Volume consistency between containers - only a deploy shows those."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import modal
import modal.exception
import orjson
import pytest

from app import deploy
from app.formats import decode_spz
from tests.deploy.test_modal import LocalContainer, definition, png_bytes, service_function, tiny_env  # noqa: F401
from tests.helpers import FakeVolume

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*executing locally and will not have access to the mounted Volume:UserWarning"
)


def test_job_worker_definition() -> None:
    import modal_api

    spec = definition(service_function(modal_api.SharpJobWorker))
    info = spec["info"]
    assert spec["tag"] == "SharpJobWorker.*" and info.method_names == ["run_job"]
    assert info.gpus == [("A100", 1)]
    assert info.concurrency_info is None or info.concurrency_info.max_inputs == 1  # one job per container
    volumes = {path: mount.name for path, mount in info.volumes.items()}
    assert volumes == {"/cache": "sharp-model-cache", "/jobs": "sharp-jobs"}
    impl = modal._utils.async_utils.synchronizer._translate_in(service_function(modal_api.SharpJobWorker))
    captured = dict(zip(impl._load.__code__.co_freevars, impl._load.__closure__, strict=True))
    assert captured["autoscaler_settings"].cell_contents.max_containers == 10
    api = definition(service_function(modal_api.SharpAPI))["info"]
    assert {path: mount.name for path, mount in api.volumes.items()}["/jobs"] == "sharp-jobs"
    assert deploy.max_containers({"SHARP_MAX_CONTAINERS": "50"}) == 50
    with pytest.raises(ValueError, match="SHARP_MAX_CONTAINERS"):
        deploy.max_containers({"SHARP_MAX_CONTAINERS": "0"})


class Aio:
    """A Modal method as called from async code: `await thing.aio(...)`."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.aio = function


class FakeFunctionCall:
    """`modal.FunctionCall` over an asyncio task standing for the GPU container's input."""

    registry: ClassVar[dict[str, FakeFunctionCall]] = {}

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.object_id = f"fc-{len(self.registry)}"
        self.registry[self.object_id] = self
        self.get, self.cancel = Aio(self._get), Aio(self._cancel)

    async def _get(self, timeout: float | None = None) -> Any:
        assert timeout == 0
        if not self.task.done():
            raise modal.exception.TimeoutError("not yet")
        return self.task.result()  # its exception, if it raised one

    async def _cancel(self) -> None:
        self.task.cancel()


class FakeWorkerCls:
    """`modal_api.SharpJobWorker` as the web container sees it: `SharpJobWorker().run_job.spawn.aio(id)`
    runs the real container code (`run_job` of a locally started container) in a task; with `kill_next`
    set, the next call dies the way a timed-out input does, without running."""

    def __init__(self, container: LocalContainer) -> None:
        self.container = container
        self.kill_next = False
        self.spawned: list[str] = []

    def __call__(self) -> Any:
        return type("Obj", (), {"run_job": type("Method", (), {"spawn": Aio(self._spawn)})()})()

    async def _spawn(self, job_id: str) -> FakeFunctionCall:
        self.spawned.append(job_id)
        die, self.kill_next = self.kill_next, False

        async def run() -> Any:
            await asyncio.sleep(0.05)
            if die:
                raise modal.exception.FunctionTimeoutError("Function timed out")
            return await self.container.methods["run_job"](job_id)

        return FakeFunctionCall(asyncio.get_running_loop().create_task(run()))


def wait_final(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not final: {job}")


def test_modal_jobs_run_on_the_worker_class(tiny_env: Path, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import modal_api

    volume_dir = tiny_env / "jobs-volume"
    volume = FakeVolume()
    worker = LocalContainer(modal_api.SharpJobWorker)  # the GPU container, started as Modal would
    fake_cls = FakeWorkerCls(worker)
    monkeypatch.setattr(deploy, "JOBS_MOUNT", volume_dir)
    monkeypatch.setattr(deploy, "jobs_volume", volume)
    monkeypatch.setattr(modal_api, "SharpJobWorker", fake_cls)
    monkeypatch.setattr(modal.FunctionCall, "from_id", lambda call_id: FakeFunctionCall.registry[call_id])

    web = modal_api.SharpAPI()
    server = serve(web.fastapi_app.local())
    photo = png_bytes()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            response = client.post("/jobs", files={"file": ("photo.png", photo, "image/png")},
                                   data={"outputs": "spz,ply"})
            assert response.status_code == 202, response.text
            job = response.json()
            assert fake_cls.spawned == [job["id"]] and job["queue_position"] is None
            assert (volume_dir / job["id"] / "input").is_file() and "commit" in volume.calls

            seen = []
            with client.stream("GET", f"/jobs/{job['id']}/events") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        seen.append(orjson.loads(line[6:]))
            assert seen[-1]["status"] == "succeeded" and seen[-1]["progress"] == 1.0
            final = wait_final(client, job["id"])
            spz = client.get(final["results"]["spz"])
            assert spz.status_code == 200 and spz.headers["x-sharp-preset"] == "tiny"
            assert spz.content == client.post("/predict/spz", files={"file": ("photo.png", photo)}).content
            assert decode_spz(spz.content).num_gaussians == 131_072
            assert not (volume_dir / job["id"] / "input").exists()

            fake_cls.kill_next = True  # the next job's call dies without a result
            killed = client.post("/jobs", files={"file": ("photo.png", photo, "image/png")}, data={"outputs": "spz"})
            dead = wait_final(client, killed.json()["id"])
            assert dead["status"] == "failed" and dead["error"]["code"] == "worker_failed", dead

            bad = client.post("/jobs", files={"file": ("notes.png", b"plain text", "image/png")})
            assert bad.status_code == 415 and len(fake_cls.spawned) == 2

            assert client.delete(f"/jobs/{job['id']}").json()["status"] == "succeeded"
            assert client.get(f"/jobs/{job['id']}").status_code == 404
            assert client.get("/jobs/not-a-job").json()["error"]["code"] == "job_not_found"
    finally:
        worker.exit()

"""A Python client generated from our `/openapi.json` by `openapi-python-client` (no hand edits) submits a photo
job, follows it and downloads its SPZ from a real uvicorn server on loopback (the `tiny` model)."""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.formats import decode_spz
from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, settings_for
from tests.jobs.test_jobs import TINY_GAUSSIANS, image_bytes

PACKAGE = "sharp_generated_client"


def binary_media_types(document: dict[str, Any]) -> set[str]:
    """Every media type a response of `document` has besides JSON (files: PLY, SPZ, PNG, ...)."""
    return {media_type for path in document["paths"].values() for operation in path.values()
            for response in operation.get("responses", {}).values() for media_type in response.get("content", {})
            if media_type != "application/json"} - {"text/event-stream"}


def generate(document: dict[str, Any], folder: Path) -> str:
    """Run `openapi-python-client generate` on `document` into `folder/PACKAGE`; its output."""
    (folder / "openapi.json").write_bytes(orjson.dumps(document))
    # The generator reads only octet-stream as bytes: our files' real media types are mapped to it (its
    # documented `content_type_overrides`), so that each download returns a `File`.
    overrides = "".join(f"  {media_type}: application/octet-stream\n" for media_type in
                        sorted(binary_media_types(document)))
    (folder / "config.yaml").write_text("content_type_overrides:\n" + overrides)
    bin_dir = str(Path(sys.executable).parent)
    result = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(folder / "openapi.json"),
         "--output-path", str(folder / PACKAGE), "--meta", "none", "--config", str(folder / "config.yaml")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def server(serve: Callable[[Any], LiveServer], tmp_path: Path) -> LiveServer:
    predictor = SharpPredictor.load("tiny", device="cpu")
    return serve(create_app(settings_for(tmp_path / "jobs"), predictor=predictor))


def test_generated_client_runs_a_job(server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with server.client() as http:
        document = http.get("/openapi.json").json()
    output = generate(document, tmp_path)
    assert "WARNING" not in output and "Cannot parse" not in output, output  # every operation understood
    monkeypatch.syspath_prepend(str(tmp_path))
    client_module = importlib.import_module(PACKAGE)
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    submit_job = importlib.import_module(f"{PACKAGE}.api.jobs.submit_job")
    get_job = importlib.import_module(f"{PACKAGE}.api.jobs.get_job")
    job_result_spz = importlib.import_module(f"{PACKAGE}.api.jobs.job_result_spz")
    # Every enum and form has its own name (no `BodySubmitJobJobsPost`, no `JobResponseStatus`).
    names = set(models.__all__)
    assert {"SubmitJobForm", "JobResponse", "JobStatus", "JsonEncoding", "AlignMode", "ErrorResponse",
            "FieldProblem", "WebhookEvent"} <= names
    assert not [name for name in names if name.startswith("Body") or "Type0" in name or name.endswith("Item")]

    client = client_module.Client(base_url=server.url, timeout=60)
    photo = image_bytes(7)
    form = models.SubmitJobForm(file=types.File(payload=io.BytesIO(photo), file_name="photo.png",
                                                mime_type="image/png"), outputs="spz")
    job = submit_job.sync(client=client, body=form, idempotency_key="generated-1")
    assert isinstance(job, models.JobResponse) and job.status in (models.JobStatus.QUEUED, models.JobStatus.RUNNING)
    again = submit_job.sync(client=client, body=form, idempotency_key="generated-1")
    assert again.id == job.id
    deadline = time.monotonic() + 120
    while job.status not in (models.JobStatus.SUCCEEDED, models.JobStatus.FAILED, models.JobStatus.CANCELLED):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = get_job.sync(job.id, client=client)
    assert job.status == models.JobStatus.SUCCEEDED, job.error
    assert job.results["spz"] == f"/jobs/{job.id}/result.spz"
    spz = job_result_spz.sync(job.id, client=client)
    assert isinstance(spz, types.File)
    assert decode_spz(spz.payload.read()).num_gaussians == TINY_GAUSSIANS

    missing = get_job.sync("x" * 32, client=client)  # an error body is a typed ErrorResponse
    assert isinstance(missing, models.ErrorResponse) and missing.error.code == "job_not_found"
    other = models.SubmitJobForm(file=types.File(payload=io.BytesIO(image_bytes(8)), file_name="photo.png",
                                                 mime_type="image/png"), outputs="spz")
    reused = submit_job.sync(client=client, body=other, idempotency_key="generated-1")
    assert isinstance(reused, models.ErrorResponse) and reused.error.code == "idempotency_key_reused"

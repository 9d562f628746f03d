"""The splat budget (`max_gaussians`) over real HTTP: every predict route, `POST /render` and `POST /jobs` keep
exactly the count asked for (the files parsed back), state the kept and the predicted counts, and refuse a bad
budget with a 422 naming the accepted range. The tiny preset predicts 131,072 Gaussians."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

from app.budget import apply_budget
from app.formats import decode_spz, read_ply
from app.formats.sog_reader import decode_sog
from app.gaussians import GaussianScene
from app.http import create_app
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, assert_error, tiny_settings

PREDICTED = 131_072
QUARTER = PREDICTED // 4
ROUTES = ["/predict", "/predict/ply", "/predict/ply_vertex", "/predict/splat", "/predict/spz", "/predict/sog",
          "/render", "/jobs"]


def photo(width: int = 72, height: int = 48) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([127 + 120 * np.sin(x / (6 + 2 * c) + y / 9 + c) for c in range(3)], axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


PHOTO = photo()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = tiny_settings(jobs_dir=tmp_path_factory.mktemp("jobs"))
    server = LiveServer.start(create_app(settings, predictor=SharpPredictor.load("tiny", device="cpu")))
    with server.client(timeout=120) as http:
        yield http
    server.stop()


def post(client: httpx.Client, route: str, **data: str) -> httpx.Response:
    return client.post(route, files={"file": ("garden.png", PHOTO, "image/png")}, data=data)


def kept_counts(response: httpx.Response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    return (int(response.headers["x-sharp-num-gaussians"]),
            int(response.headers["x-sharp-num-gaussians-predicted"]))


def count_in(format_name: str, body: bytes) -> int:
    """The number of Gaussians in a file, read back by its own reader (splat: by its size)."""
    if format_name in ("ply", "ply_vertex"):
        return PlyData.read(io.BytesIO(body))["vertex"].count
    if format_name == "splat":
        assert len(body) % 32 == 0
        return len(body) // 32
    if format_name == "spz":
        return decode_spz(body).num_gaussians
    if format_name == "sog":
        return decode_sog(body).num_gaussians
    raise AssertionError(format_name)


@pytest.mark.parametrize("format_name", ["ply", "ply_vertex", "splat", "spz", "sog"])
@pytest.mark.parametrize(("budget", "kept"), [("0.25", QUARTER), ("1000", 1000)])
def test_every_file_format_keeps_exactly_the_budget(client: httpx.Client, format_name: str, budget: str,
                                                    kept: int) -> None:
    response = post(client, f"/predict/{format_name}", max_gaussians=budget)
    assert kept_counts(response) == (kept, PREDICTED)
    assert count_in(format_name, response.content) == kept


def test_the_ply_route_keeps_the_budget_with_vertex_only_and_merges_by_the_rule(client: httpx.Client) -> None:
    full = read_ply(post(client, "/predict/ply").content)
    budget = post(client, "/predict/ply", max_gaussians="0.1", vertex_only="true")
    assert kept_counts(budget) == (round(0.1 * PREDICTED), PREDICTED)
    kept = read_ply(budget.content)
    # The budget rule (`apply_budget`: the full PLY is on its grid, so neighbours are merged), computed again
    # from the full file read back: all but a few at the boundary of the last level's choice agree.
    expected = apply_budget(full, 0.1)
    assert expected.num_gaussians == kept.num_gaussians

    def cells(scene: GaussianScene) -> set[tuple[int, ...]]:  # positions to 0.1 mm
        return set(map(tuple, np.round(scene.positions.astype(np.float64) * 1e4).astype(np.int64).tolist()))

    assert len(cells(expected) & cells(kept)) >= 0.99 * kept.num_gaussians


def test_json_states_both_counts_in_its_metadata_and_headers(client: httpx.Client) -> None:
    response = post(client, "/predict", max_gaussians="0.25", encoding="base64")
    assert kept_counts(response) == (QUARTER, PREDICTED)
    body = response.json()
    assert body["positions"]["shape"] == [QUARTER, 3] and body["opacities"]["shape"] == [QUARTER, 1]
    assert (body["metadata"]["num_gaussians"], body["metadata"]["total_gaussians"]) == (QUARTER, PREDICTED)
    assert "budget" in response.headers["server-timing"]


def test_without_a_budget_both_counts_are_the_prediction(client: httpx.Client) -> None:
    response = post(client, "/predict/splat")
    assert kept_counts(response) == (PREDICTED, PREDICTED) and len(response.content) == 32 * PREDICTED
    assert "budget" not in response.headers["server-timing"]


@pytest.mark.parametrize("output", ["png", "jpeg"])
def test_a_render_draws_only_the_kept_gaussians(client: httpx.Client, output: str) -> None:
    full = post(client, "/render", output=output, size="64")
    budget = post(client, "/render", output=output, size="64", max_gaussians="0.02")
    assert kept_counts(full) == (PREDICTED, PREDICTED)
    assert kept_counts(budget) == (round(0.02 * PREDICTED), PREDICTED)
    full_image = np.asarray(Image.open(io.BytesIO(full.content)), dtype=np.float64)
    budget_image = np.asarray(Image.open(io.BytesIO(budget.content)), dtype=np.float64)
    assert full_image.shape == budget_image.shape and np.abs(full_image - budget_image).mean() > 0.5


def wait_for(client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def test_a_job_keeps_the_budget_in_every_output_sog_included(client: httpx.Client) -> None:
    response = post(client, "/jobs", outputs="ply,splat,spz,sog,json,preview", max_gaussians="0.25",
                    encoding="base64")
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert (job["metadata"]["num_gaussians"], job["metadata"]["total_gaussians"]) == (QUARTER, PREDICTED)
    assert sorted(job["results"]) == ["json", "ply", "preview", "sog", "splat", "spz"]
    assert job["results"]["sog"].endswith("/result.sog")
    for format_name in ("ply", "splat", "spz", "sog"):
        result = client.get(job["results"][format_name])
        assert kept_counts(result) == (QUARTER, PREDICTED), format_name
        assert count_in(format_name, result.content) == QUARTER, format_name
    body = client.get(job["results"]["json"]).json()
    assert body["positions"]["shape"] == [QUARTER, 3] and body["metadata"]["total_gaussians"] == PREDICTED
    # The same photo and budget through the synchronous route: the same SOG bytes.
    assert client.get(job["results"]["sog"]).content == post(client, "/predict/sog", max_gaussians="0.25").content


BAD_BUDGETS = ["0", "-1", "-0.5", "0.0", "nan", "inf", "-inf", "1.5", "1e3", "many", "0x10", "25%"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("value", BAD_BUDGETS)
def test_a_bad_budget_is_a_422_naming_the_range_on_every_route(client: httpx.Client, route: str,
                                                               value: str) -> None:
    error = assert_error(post(client, route, max_gaussians=value), 422, "validation_error")
    assert any(detail["loc"] == ["body", "max_gaussians"] for detail in error["details"]), error
    assert "a count from 1 to the number predicted, or a fraction in (0, 1]" in error["message"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_budget_above_the_count_is_a_422_naming_the_count_on_every_route(client: httpx.Client,
                                                                           route: str) -> None:
    error = assert_error(post(client, route, max_gaussians=str(PREDICTED + 1)), 422, "validation_error")
    assert f"a count from 1 to {PREDICTED:,} or a fraction in (0, 1], got {PREDICTED + 1}" in error["message"]


def test_a_job_budget_needs_no_json_output(client: httpx.Client) -> None:
    """Before the budget applied to every output, a job's max_gaussians without json was refused."""
    response = post(client, "/jobs", outputs="spz", max_gaussians="500")
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["id"])
    assert job["status"] == "succeeded" and job["metadata"]["num_gaussians"] == 500
    assert_error(post(client, "/jobs", outputs="spz", encoding="base64"), 422, "validation_error")

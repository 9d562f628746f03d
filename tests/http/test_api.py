"""The HTTP service end to end: a real uvicorn server on loopback, the `tiny` model, real image bytes."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from PIL import Image
from plyfile import PlyData
from starlette.types import Message

from app import __version__
from app.budget import apply_budget
from app.formats import read_ply
from app.formats.sog import morton_order, quantize_positions
from app.formats.sog_reader import decode_sog
from app.formats.spz import decode_spz
from app.gaussians import SH_C0, GaussianScene, srgb_to_linear
from app.http import create_app
from app.http.schemas import ApiInfo, HealthResponse, PredictResponse
from app.outputs import FORMATS, SCENE_FORMATS
from app.predictor import SharpPredictor
from app.settings import Settings
from tests.formats.gltf import Glb
from tests.helpers import LiveServer, assert_error, make_clip, multipart, tiny_settings

API_KEY = "test-key-0123456789"
ALLOWED_ORIGIN = "https://viewer.example"
TINY_GAUSSIANS = 131_072
STAGES = ("decode", "preprocess", "forward", "postprocess")


# ------------------------------------------------------------------------------------------ helpers


def image_bytes(width: int, height: int, fmt: str = "PNG", seed: int = 0, noise: bool = False) -> bytes:
    """A smooth colour gradient (or noise, which does not compress) encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        y, x = np.mgrid[0:height, 0:width]
        phase = rng.uniform(0, 2 * np.pi, size=3)
        pixels = np.stack([127 + 120 * np.sin(x / (7 + 3 * c) + y / 11 + phase[c]) for c in range(3)], axis=2)
        pixels = pixels.astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels, with one tiny data chunk (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def b64_array(value: dict[str, Any]) -> np.ndarray:
    assert value["dtype"] == "float32" and value["byteorder"] == "little"
    return np.frombuffer(base64.b64decode(value["data"]), dtype="<f4").reshape(value["shape"])


def arrays(body: dict[str, Any]) -> dict[str, np.ndarray]:
    names = ("positions", "scales", "rotations", "opacities", "colors")
    if body["metadata"]["encoding"] == "base64":
        return {name: b64_array(body[name]) for name in names}
    return {name: np.asarray(body[name], dtype=np.float32) for name in names}


def server_timing(response: httpx.Response) -> dict[str, float]:
    entries = (item.strip().split(";dur=") for item in response.headers["server-timing"].split(","))
    return {name: float(ms) for name, ms in entries}


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_predictor() -> SharpPredictor:
    return SharpPredictor.load("tiny", device="cpu")


@pytest.fixture(scope="module")
def live_server(tiny_predictor: SharpPredictor) -> Iterator[LiveServer]:
    """Default limits, no API key, the model passed in (ready at once); plus a route that crashes."""
    app = create_app(tiny_settings(), predictor=tiny_predictor)

    @app.get("/test-only/crash", include_in_schema=False)
    async def crash() -> None:
        raise RuntimeError("deliberate failure for the 500 test")

    server = LiveServer.start(app)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_server(tiny_predictor: SharpPredictor) -> Iterator[LiveServer]:
    """API key, CORS, a 0.1 MB upload limit, 100k pixels and one waiting request at most."""
    settings = tiny_settings(api_key=API_KEY, cors_origins=[ALLOWED_ORIGIN], max_upload_mb=0.1,
                             max_pixels=100_000, max_queue=1)
    server = LiveServer.start(create_app(settings, predictor=tiny_predictor))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with live_server.client() as c:
        yield c


@pytest.fixture(scope="module")
def coffee(conformance_dir: Path) -> bytes:
    return (conformance_dir / "coffee.png").read_bytes()


@pytest.fixture(scope="module")
def coffee_json(client: httpx.Client, coffee: bytes) -> dict[str, Any]:
    response = client.post("/predict", files={"file": ("coffee.png", coffee, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------------------- info, health


def test_root_describes_the_api_and_model(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    info = ApiInfo.model_validate(response.json())
    assert (info.name, info.version, info.status) == ("sharp-serve", __version__, "ready")
    assert info.model is not None
    assert (info.model.preset, info.model.weights, info.model.device) == ("tiny", "synthetic", "cpu")
    assert info.formats == list(FORMATS)
    assert info.docs_url == "/docs"
    assert response.json()["job_final_statuses"] == ["cancelled", "failed", "succeeded"]  # the page reads them
    listed = {(e.method, e.path) for e in info.endpoints}
    assert {("GET", "/health"), ("POST", "/predict"), ("POST", "/predict/ply"), ("POST", "/predict/spz"),
            ("POST", "/predict/splat")} <= listed


def test_health_when_ready(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    health = HealthResponse.model_validate(response.json())
    assert health.status == "ready"
    model = (health.preset, health.weights, health.device, health.dtype)
    assert model == ("tiny", "synthetic", "cpu", "float32")
    assert health.num_gaussians == TINY_GAUSSIANS
    assert (health.queue_depth, health.in_progress, health.max_queue) == (0, 0, 8)


def test_root_and_health_name_the_licences(client: httpx.Client) -> None:
    """A deployed API says under which licence its code is, and which licence the SHARP weights carry."""
    for path in ("/", "/health"):
        licence = client.get(path).json()["licence"]
        assert licence["code"] == "Apache-2.0"
        assert licence["weights_name"] == "Apple Machine Learning Research Model License Agreement"
        assert licence["weights_url"] == "https://github.com/apple/ml-sharp/blob/main/LICENSE_MODEL"
    root = Path(__file__).resolve().parents[2]
    assert "Apache License" in (root / "LICENSE").read_text() and "Version 2.0" in (root / "LICENSE").read_text()
    notice = (root / "NOTICE").read_text()
    assert licence["weights_name"] in notice and licence["weights_url"] in notice


@pytest.mark.parametrize("path", ["/predict", "/predict/ply", "/predict/sog", "/render"])
def test_a_clip_sent_to_a_photo_route_is_pointed_to_jobs(client: httpx.Client, path: str) -> None:
    response = client.post(path, files={"file": ("clip.mp4", make_clip(2), "video/mp4")})
    body = assert_error(response, 415, "video_not_accepted")
    assert "POST /jobs" in body["message"]


def test_openapi_documents_responses(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"ErrorResponse", "PredictResponse", "HealthResponse", "ApiInfo", "PredictMetadata"} <= set(
        components)
    predict = schema["paths"]["/predict"]["post"]
    ok = predict["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok["$ref"].endswith("/PredictResponse")
    for status in ("400", "413", "415", "422", "503"):
        ref = predict["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse")
    ply = schema["paths"]["/predict/ply"]["post"]["responses"]["200"]["content"]
    assert ply["application/octet-stream"]["schema"]["format"] == "binary"
    spz = schema["paths"]["/predict/spz"]["post"]["responses"]["200"]["content"]
    assert FORMATS["spz"].media_type in spz
    assert "/predict/{format_name}" not in schema["paths"]
    assert "f_px" in str(schema["components"]["schemas"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -------------------------------------------------------------------------------------------- predict


def test_predict_json_is_a_full_scene(coffee_json: dict[str, Any]) -> None:
    body = PredictResponse.model_validate(coffee_json)
    meta = body.metadata
    assert (meta.image_width, meta.image_height) == (600, 400)
    assert meta.f_px_source == "default"
    assert meta.num_gaussians == meta.total_gaussians == TINY_GAUSSIANS
    assert (meta.color_space, meta.coordinate_convention, meta.encoding) == ("srgb", "opencv", "list")
    assert meta.intrinsics == [[meta.f_px, 0, 300], [0, meta.f_px, 200], [0, 0, 1]]
    assert (meta.model.preset, meta.model.weights, meta.model.device) == ("tiny", "synthetic", "cpu")
    assert all(getattr(meta.timings_ms, stage) > 0 for stage in STAGES)
    data = arrays(coffee_json)
    shapes = {name: value.shape for name, value in data.items()}
    assert shapes == {"positions": (TINY_GAUSSIANS, 3), "scales": (TINY_GAUSSIANS, 3),
                      "rotations": (TINY_GAUSSIANS, 4), "opacities": (TINY_GAUSSIANS, 1),
                      "colors": (TINY_GAUSSIANS, 3)}
    assert np.all(data["positions"][:, 2] > 0)
    np.testing.assert_allclose(np.linalg.norm(data["rotations"], axis=1), 1.0, atol=1e-5)
    assert data["opacities"].min() >= 0 and data["opacities"].max() <= 1
    assert data["colors"].min() >= 0 and data["colors"].max() <= 1


def test_predict_headers(client: httpx.Client) -> None:
    response = client.post("/predict", files={"file": ("a.png", image_bytes(64, 48))},
                           data={"max_gaussians": "10"}, headers={"X-Request-ID": "client-id-42"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "client-id-42"
    timings = server_timing(response)
    assert set(timings) == {*STAGES, "budget", "encode"} and all(ms >= 0 for ms in timings.values())
    assert response.headers["x-sharp-num-gaussians"] == "10"
    assert response.headers["x-sharp-num-gaussians-predicted"] == str(TINY_GAUSSIANS)


def test_request_id_is_generated_when_missing_or_insane(client: httpx.Client) -> None:
    generated = client.get("/health").headers["x-request-id"]
    assert len(generated) == 32
    replaced = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32


def test_f_px_from_the_request(client: httpx.Client) -> None:
    response = client.post("/predict", files={"file": ("a.jpg", image_bytes(80, 60, "JPEG"))},
                           data={"f_px": "1200", "max_gaussians": "1"})
    assert response.status_code == 200, response.text
    meta = response.json()["metadata"]
    assert (meta["f_px"], meta["f_px_source"]) == (1200.0, "request")
    assert meta["intrinsics"][0] == [1200.0, 0.0, 40.0]


def test_ply_matches_the_json(client: httpx.Client, coffee: bytes, coffee_json: dict[str, Any]) -> None:
    response = client.post("/predict/ply", files={"file": ("coffee.png", coffee)})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="coffee.ply"'
    assert int(response.headers["content-length"]) == len(response.content)
    assert set(server_timing(response)) == {*STAGES, "encode"}

    ply = PlyData.read(io.BytesIO(response.content))
    assert [e.name for e in ply.elements] == ["vertex", "extrinsic", "intrinsic", "image_size", "frame",
                                              "disparity", "color_space", "version"]
    vertex = ply["vertex"]

    def cols(*names: str) -> np.ndarray:
        return np.stack([np.asarray(vertex[n], dtype=np.float32) for n in names], axis=1)

    expected = arrays(coffee_json)
    np.testing.assert_array_equal(cols("x", "y", "z"), expected["positions"])
    np.testing.assert_allclose(np.exp(cols("scale_0", "scale_1", "scale_2")), expected["scales"], rtol=1e-6)
    np.testing.assert_array_equal(cols("rot_0", "rot_1", "rot_2", "rot_3"), expected["rotations"])
    srgb = 0.5 + SH_C0 * cols("f_dc_0", "f_dc_1", "f_dc_2")
    np.testing.assert_allclose(srgb, expected["colors"], atol=1e-6)
    opacity = 1 / (1 + np.exp(-cols("opacity").astype(np.float64)))
    np.testing.assert_allclose(opacity, expected["opacities"], atol=1e-6)
    f_px = coffee_json["metadata"]["f_px"]
    intrinsic = ply["intrinsic"]["intrinsic"]
    np.testing.assert_allclose(intrinsic, [f_px, 0, 300, 0, f_px, 200, 0, 0, 1], rtol=1e-6)
    assert list(ply["image_size"]["image_size"]) == [600, 400]


def test_ply_vertex_only(client: httpx.Client) -> None:
    response = client.post("/predict/ply", files={"file": ("small.png", image_bytes(64, 64))},
                           data={"vertex_only": "true"})
    assert response.status_code == 200
    ply = PlyData.read(io.BytesIO(response.content))
    assert [e.name for e in ply.elements] == ["vertex"]
    assert ply["vertex"].count == TINY_GAUSSIANS
    assert response.headers["content-disposition"] == 'attachment; filename="small.vertex.ply"'
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize("name", [n for n in SCENE_FORMATS if n not in ("ply", "json")])
def test_other_formats(client: httpx.Client, coffee: bytes, coffee_json: dict[str, Any], name: str) -> None:
    fmt = FORMATS[name]
    response = client.post(f"/predict/{name}", files={"file": ("coffee.png", coffee)})
    assert response.status_code == 200
    assert response.headers["content-type"] == fmt.media_type
    assert response.headers["content-disposition"] == f'attachment; filename="{fmt.filename("coffee")}"'
    assert set(server_timing(response)) == {*STAGES, "encode"}
    positions = arrays(coffee_json)["positions"]
    if name == "splat":
        assert len(response.content) == 32 * TINY_GAUSSIANS
        records = np.frombuffer(response.content, dtype=np.dtype([("p", "<f4", 3), ("rest", "V20")]))
        received = records["p"]
        # .splat reorders the records (largest first): compare the two sets of positions.
        np.testing.assert_array_equal(received[np.lexsort(received.T)], positions[np.lexsort(positions.T)])
    elif name == "ply_vertex":
        assert b"element extrinsic" not in response.content
        np.testing.assert_array_equal(read_ply(response.content).positions, positions)
    elif name == "sog":
        decoded = decode_sog(response.content)  # in Morton order of the 16-bit log-domain positions
        assert decoded.num_gaussians == TINY_GAUSSIANS
        in_file_order = positions[morton_order(quantize_positions(positions)[0])]
        np.testing.assert_allclose(decoded.positions, in_file_order, rtol=1e-3, atol=1e-4)
    elif name == "glb":
        stored = Glb(response.content).attributes()["POSITION"]  # glTF axes: (-x, -y, z)
        np.testing.assert_array_equal(stored * np.float32([-1, -1, 1]), positions)
    else:
        decoded = decode_spz(response.content)
        assert decoded.num_gaussians == TINY_GAUSSIANS
        np.testing.assert_allclose(decoded.positions, positions, atol=2e-3)


def test_unicode_filename_is_escaped(client: httpx.Client) -> None:
    response = client.post("/predict/splat", files={"file": ("café photo.png", image_bytes(32, 32))})
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"caf__photo.splat\"; filename*=UTF-8''caf%C3%A9%20photo.splat"
    )


def test_base64_equals_list(client: httpx.Client) -> None:
    image = image_bytes(120, 90, seed=3)
    bodies = {}
    for encoding in ("list", "base64"):
        response = client.post("/predict", files={"file": ("x.png", image)},
                               data={"encoding": encoding, "max_gaussians": "5000"})
        assert response.status_code == 200
        bodies[encoding] = PredictResponse.model_validate(response.json()) and response.json()
    assert bodies["base64"]["metadata"]["encoding"] == "base64"
    as_list, as_base64 = arrays(bodies["list"]), arrays(bodies["base64"])
    for name, value in as_list.items():
        assert as_base64[name].shape == value.shape
        np.testing.assert_array_equal(as_base64[name], value)


def test_max_gaussians_merges_by_the_budget_rule(client: httpx.Client, coffee: bytes,
                                                coffee_json: dict[str, Any]) -> None:
    response = client.post("/predict", files={"file": ("coffee.png", coffee)}, data={"max_gaussians": "1000"})
    assert response.status_code == 200
    body = response.json()
    assert (body["metadata"]["num_gaussians"], body["metadata"]["total_gaussians"]) == (1000, TINY_GAUSSIANS)
    full, kept = arrays(coffee_json), arrays(body)
    # The budget rule (`apply_budget`, merging on the grid) applied to the full scene read back from its JSON
    # (sRGB colours made linear again, so equal to float32 rounding) gives the same Gaussians.
    meta = coffee_json["metadata"]
    scene = GaussianScene(full["positions"], full["scales"], full["rotations"], srgb_to_linear(full["colors"]),
                          full["opacities"][:, 0], meta["f_px"], meta["image_width"], meta["image_height"])
    expected = apply_budget(scene, 1000)
    np.testing.assert_allclose(kept["positions"], expected.positions, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kept["colors"], expected.colors_srgb(), atol=1e-4)


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("files", "data", "status", "code"),
    [
        (None, {"f_px": "100"}, 422, "missing_file"),
        ({"file": ("empty.png", b"")}, None, 400, "empty_file"),
        ({"file": ("notes.txt", b"this is not an image\n" * 20)}, None, 415, "unsupported_image"),
        ({"file": ("cut.jpg", image_bytes(200, 150, "JPEG")[:600])}, None, 400, "corrupt_image"),
        ({"file": ("bomb.png", png_header_only(10_000, 10_000))}, None, 413, "image_too_large"),
        ({"file": ("a.png", b"")}, {"f_px": "-1"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"f_px": "0"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"f_px": "nan"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"f_px": "inf"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"f_px": "abc"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"encoding": "xml"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"max_gaussians": "0"}, 422, "validation_error"),
        ({"file": ("a.png", b"x")}, {"max_gaussians": "many"}, 422, "validation_error"),
    ],
    ids=["no-file", "empty", "text", "truncated-jpeg", "pixel-bomb", "f_px=-1", "f_px=0", "f_px=nan",
         "f_px=inf", "f_px=abc", "encoding", "max_gaussians=0", "max_gaussians=many"],
)
def test_bad_input(client: httpx.Client, files: dict | None, data: dict | None, status: int,
                   code: str) -> None:
    response = client.post("/predict", files=files, data=data)
    error = assert_error(response, status, code)
    if code == "validation_error":
        field = next(iter(data))
        assert any(detail["loc"] == ["body", field] for detail in error["details"]), error


def test_bad_vertex_only(client: httpx.Client) -> None:
    response = client.post("/predict/ply", files={"file": ("a.png", b"x")}, data={"vertex_only": "maybe"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "vertex_only"]


def test_file_sent_as_text_field(client: httpx.Client) -> None:
    assert_error(client.post("/predict", data={"file": "not a file"}), 422, "missing_file")


def test_unknown_format_lists_the_formats(client: httpx.Client) -> None:
    error = assert_error(client.post("/predict/obj", files={"file": ("a.png", b"x")}), 404, "unknown_format")
    assert all(name in error["message"] for name in SCENE_FORMATS if name != "json")


def test_http_errors_use_the_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/no-such-page"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


def test_unexpected_exception_is_a_json_500(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="app.http.middleware"):
        response = client.get("/test-only/crash", headers={"X-Request-ID": "crash-1"})
    error = assert_error(response, 500, "internal_error")
    assert "deliberate" not in response.text
    assert error["request_id"] == "crash-1"
    logged = [r for r in caplog.records if "crash-1" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_access_log_line(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        client.get("/health", headers={"X-Request-ID": "log-me"})
        deadline = time.monotonic() + 5
        while not any(getattr(r, "request_id", None) == "log-me" for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "log-me")
    assert (record.method, record.path, record.status) == ("GET", "/health", 200)
    assert record.duration_ms >= 0 and "GET /health 200" in record.getMessage()


# ------------------------------------------------------------------------------ concurrency and queue


def test_concurrent_requests_are_all_answered_correctly(client: httpx.Client,
                                                        live_server: LiveServer) -> None:
    images = [image_bytes(96, 72, seed=seed) for seed in range(4)]

    def predict(image: bytes) -> dict[str, Any]:
        with live_server.client() as own:
            response = own.post("/predict", files={"file": ("img.png", image)},
                                data={"max_gaussians": "2000", "encoding": "base64"})
        assert response.status_code == 200, response.text
        return arrays(response.json())

    references = [predict(image) for image in images]
    assert not np.array_equal(references[0]["positions"], references[1]["positions"])
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(predict, images[i % 4]) for i in range(8)]
        health = client.get("/health")
        results = [f.result() for f in futures]
    assert health.status_code == 200
    for i, result in enumerate(results):
        for name, value in result.items():
            np.testing.assert_array_equal(value, references[i % 4][name])


@pytest.fixture
def hold_predictor(tiny_predictor: SharpPredictor) -> Iterator[Callable[[], None]]:
    """Holds the predictor's lock, as a long prediction would, until the returned function is called."""
    assert tiny_predictor._lock.acquire(timeout=30)
    held = True

    def release() -> None:
        nonlocal held
        if held:
            held = False
            tiny_predictor._lock.release()

    yield release
    release()


def wait_for_health(client: httpx.Client, **expected: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        health = client.get("/health").json()
        if all(health[key] == value for key, value in expected.items()):
            return
        assert time.monotonic() < deadline, health
        time.sleep(0.02)


def test_queue_full_and_health_while_predicting(strict_server: LiveServer,
                                                hold_predictor: Callable[[], None]) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    image = image_bytes(64, 48)

    def predict() -> httpx.Response:
        with strict_server.client() as own:
            return own.post("/predict", files={"file": ("a.png", image)}, data={"max_gaussians": "5"},
                            headers=auth)

    with strict_server.client() as client, ThreadPoolExecutor(2) as pool:
        try:
            running = pool.submit(predict)
            wait_for_health(client, in_progress=1, queue_depth=0)
            waiting = pool.submit(predict)
            wait_for_health(client, in_progress=1, queue_depth=1)

            start = time.perf_counter()
            health = client.get("/health")
            assert health.status_code == 200 and time.perf_counter() - start < 1.0

            rejected = client.post("/predict", files={"file": ("a.png", image)}, headers=auth)
            assert_error(rejected, 503, "queue_full")
            assert int(rejected.headers["retry-after"]) >= 1
        finally:
            hold_predictor()
        assert running.result(timeout=30).status_code == 200
        assert waiting.result(timeout=30).status_code == 200
        wait_for_health(client, in_progress=0, queue_depth=0)


# -------------------------------------------------------------------------------- auth, CORS, limits


def test_api_key_is_required_on_predict(strict_server: LiveServer) -> None:
    image = image_bytes(64, 48)
    with strict_server.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY},
                        {"Authorization": f"Basic {API_KEY}"}):
            response = client.post("/predict/ply", files={"file": ("a.png", image)}, headers=headers)
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200
        response = client.post("/predict", files={"file": ("a.png", image)}, data={"max_gaussians": "3"},
                               headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200
        assert response.json()["metadata"]["num_gaussians"] == 3


def test_cors(strict_server: LiveServer) -> None:
    with strict_server.client() as client:
        preflight = client.options("/predict", headers={
            "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        })
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        response = client.get("/health", headers={"Origin": ALLOWED_ORIGIN})
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        exposed = {h.strip() for h in response.headers["access-control-expose-headers"].lower().split(",")}
        assert {"server-timing", "content-disposition", "x-request-id"} <= exposed
        other = client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_upload_limits(strict_server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    big = image_bytes(300, 300, noise=True)
    assert len(big) > 0.2 * 2**20
    with strict_server.client() as client:
        response = client.post("/predict", files={"file": ("big.png", big)}, headers=auth)
        error = assert_error(response, 413, "upload_too_large")
        assert "0.1 MB" in error["message"]

        # Without Content-Length (chunked), the body is counted as it arrives.
        body, content_type = multipart({}, "big.png", big)
        chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
        response = client.post("/predict", content=chunks, headers={**auth, "Content-Type": content_type})
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "upload_too_large")

        # Under the body allowance for multipart overhead, but the file itself is over the limit.
        middling = image_bytes(200, 200, noise=True)
        assert 2**20 / 10 < len(middling) < 2**20 / 10 + 60_000
        response = client.post("/predict", files={"file": ("middling.png", middling)}, headers=auth)
        assert_error(response, 413, "upload_too_large")

        # Small enough in bytes but over SHARP_MAX_PIXELS (100k): refused from the header.
        buffer = io.BytesIO()
        Image.new("RGB", (400, 300), (200, 120, 40)).save(buffer, format="PNG")
        response = client.post("/predict", files={"file": ("wide.png", buffer.getvalue())}, headers=auth)
        error = assert_error(response, 413, "image_too_large")
        assert "100,000" in error["message"]


def call_asgi(app: FastAPI, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, int, dict]:
    """POST /predict straight through the ASGI interface: (status, body messages the app pulled, body)."""
    pulled = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=20))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], pulled, orjson.loads(body)


def test_upload_is_not_read_past_the_limit(tiny_predictor: SharpPredictor) -> None:
    """The app stops pulling an endless upload at the limit, and trusts a large Content-Length at once."""
    app = create_app(tiny_settings(max_upload_mb=0.25), predictor=tiny_predictor)
    head, content_type = multipart({}, "endless.png", b"")
    opening = head[: head.index(b"\r\n\r\n", head.index(b"filename")) + 4]
    endless = itertools.chain([opening], itertools.repeat(b"\xff" * 65536))
    status, pulled, body = call_asgi(app, {"content-type": content_type}, endless)
    assert (status, body["error"]["code"]) == (413, "upload_too_large")
    assert pulled <= (0.25 * 2**20 + 64 * 1024) // 65536 + 2

    declared = {"content-type": content_type, "content-length": str(2**30)}
    status, pulled, body = call_asgi(app, declared, itertools.repeat(b"\xff" * 65536))
    assert (status, pulled, body["error"]["code"]) == (413, 0, "upload_too_large")


# ---------------------------------------------------------------------------------- model lifecycle


def test_background_loading(tiny_predictor: SharpPredictor) -> None:
    gate = threading.Event()
    loaded: list[SharpPredictor] = []

    def gated_loader(settings: Settings) -> SharpPredictor:
        assert gate.wait(timeout=30)
        loaded.append(SharpPredictor.from_settings(settings))
        return loaded[-1]

    server = LiveServer.start(create_app(tiny_settings(), loader=gated_loader))
    try:
        with server.client() as client:
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["status"] == "loading"
            assert "retry-after" in health.headers
            assert client.get("/").json()["status"] == "loading"
            response = client.post("/predict", files={"file": ("a.png", image_bytes(32, 32))})
            assert_error(response, 503, "model_loading")
            assert int(response.headers["retry-after"]) >= 1

            gate.set()
            deadline = time.monotonic() + 30
            while (health := client.get("/health")).status_code != 200:
                assert time.monotonic() < deadline, health.text
                time.sleep(0.05)
            assert health.json()["preset"] == "tiny"
            assert len(loaded) == 1
            response = client.post("/predict", files={"file": ("a.png", image_bytes(32, 32))},
                                   data={"max_gaussians": "2"})
            assert response.status_code == 200
    finally:
        server.stop()


def test_failed_loading_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint.pt"
    server = LiveServer.start(create_app(tiny_settings(preset="sharp", checkpoint=missing)))
    try:
        with server.client() as client:
            deadline = time.monotonic() + 30
            while (health := client.get("/health").json())["status"] == "loading":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert health["status"] == "error"
            # The code for anyone; the path and the exception text only in the server log.
            assert health["detail"] == "checkpoint_unavailable; see the server log"
            response = client.post("/predict", files={"file": ("a.png", image_bytes(32, 32))})
            error = assert_error(response, 503, "model_unavailable")
            assert "checkpoint_unavailable" in error["message"] and str(missing) not in error["message"]
            assert "retry-after" not in response.headers  # a missing file does not come back by waiting
    finally:
        server.stop()


def test_pixel_helper_is_what_it_claims() -> None:
    """The bomb fixture really declares 10000 x 10000 pixels (so its 413 is about pixels, not bytes)."""
    with pytest.warns(Image.DecompressionBombWarning):
        image = Image.open(io.BytesIO(png_header_only(10_000, 10_000)))
    assert image.size == (10_000, 10_000)
    assert len(png_header_only(10_000, 10_000)) < 200


def test_every_prediction_names_its_model_and_camera(client: httpx.Client) -> None:
    """A file made by the tiny preset must say so in its headers (the file bytes keep the reference layout)."""
    photo = image_bytes(90, 60)
    for path in ("/predict", *(f"/predict/{name}" for name in SCENE_FORMATS if name != "json")):
        response = client.post(path, files={"file": ("p.png", photo, "image/png")}, data={"f_px": "77"})
        assert response.status_code == 200, (path, response.text)
        assert response.headers["x-sharp-preset"] == "tiny"
        assert response.headers["x-sharp-weights"] == "synthetic"
        assert float(response.headers["x-sharp-f-px"]) == 77.0
        assert response.headers["x-sharp-f-px-source"] == "request"
        assert response.headers["x-sharp-image-size"] == "90x60"
        assert int(response.headers["x-sharp-num-gaussians"]) == TINY_GAUSSIANS


def test_transient_load_failure_is_retried_with_backoff(tiny_predictor: SharpPredictor,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A network failure at start leaves the server in `error` only until the next retry, and the 503s say
    when to come back; once loading succeeds the server is ready and warns that the weights are synthetic."""
    from app.service import InferenceService
    from app.weights import CheckpointDownloadError

    attempts: list[float] = []
    release = threading.Event()

    def flaky_loader(_settings: Settings) -> SharpPredictor:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise CheckpointDownloadError("connection reset", url="http://127.0.0.1:9/x.pt", retryable=True)
        release.wait(30)
        return tiny_predictor

    service = InferenceService(tiny_settings(), loader=flaky_loader, load_backoff_s=(2.0, 4.0))
    with caplog.at_level(logging.WARNING, logger="app.service"):
        server = LiveServer.start(create_app(tiny_settings(), service=service))
        try:
            with server.client() as client:
                deadline = time.monotonic() + 20
                while (health := client.get("/health").json())["status"] != "error":
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                assert health["detail"] == "checkpoint_download_failed; the server retries"
                response = client.post("/predict", files={"file": ("a.png", image_bytes(32, 32))})
                assert_error(response, 503, "model_unavailable")
                assert 1 <= int(response.headers["retry-after"]) <= 2
                while len(attempts) < 2:  # the retry comes after the backoff, by itself
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                assert attempts[1] - attempts[0] >= 1.9
                release.set()
                deadline = time.monotonic() + 20
                while client.get("/health").json()["status"] != "ready":
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                response = client.post("/predict/spz", files={"file": ("a.png", image_bytes(32, 32))})
                assert response.status_code == 200 and response.headers["x-sharp-weights"] == "synthetic"
        finally:
            release.set()
            server.stop()
    assert any("SYNTHETIC weights" in record.getMessage() for record in caplog.records)


def test_head_probes_and_openapi_without_a_key(client: httpx.Client) -> None:
    for path in ("/", "/health"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b""
    schema = client.get("/openapi.json").json()
    assert "security" not in schema["paths"]["/predict"]["post"]  # no key configured: nothing to send


def test_405_lists_every_method_of_the_path(client: httpx.Client) -> None:
    response = client.put("/jobs/abc")  # GET and DELETE are two routes on one path
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}

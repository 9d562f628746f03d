"""The web page in a real browser (desktop size), against a real uvicorn server on loopback with the `tiny`
model; the phone's page is in `test_page_phone.py`, the shared helpers in `browser.py`.

What the page promises (see docs/page.md): a photo chosen in `#photo` is uploaded and predicted, the
scene is rendered from the photo's own viewpoint, upright, with the photo's aspect ratio; errors show the
API's message and the page recovers; a server with an API key makes the page ask for it. The page reports
its state on `document.body.dataset.state` and its first frame with splats on `dataset.visible`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from app.http import create_app
from app.imaging import load_image
from app.outputs import SCENE_FORMATS
from app.predictor import SharpPredictor
from app.service import InferenceService
from app.settings import Settings
from app.web import page as web_page
from app.weights import CheckpointDownloadError
from tests.helpers import LiveServer
from tests.web.browser import (
    API_KEY,
    BROWSER_ACCEPT,
    api_message,
    canvas_pixels,
    correlation,
    encode,
    grey,
    page_settings,
    photo_scene,
    red_over_blue,
    redness,
    screenshot,
    state,
    wait_first_frame,
    wait_state,
    without_jobs,
    write_scene,
)

# ---------------------------------------------------------------------------- without a browser


@pytest.mark.parametrize(("accept", "html"), [
    (BROWSER_ACCEPT, True),
    ("text/html", True),
    ("text/html;q=0.9, application/json", False),
    ("text/html, application/json", False),  # a tie keeps today's JSON
    ("*/*", False),  # curl, requests, httpx
    ("", False),
    ("application/json", False),
    ("text/html;q=0", False),
])
def test_wants_html(accept: str, html: bool) -> None:
    from starlette.requests import Request

    scope = {"type": "http", "headers": [(b"accept", accept.encode())] if accept else []}
    assert web_page.wants_html(Request(scope)) is html


def test_root_negotiates_and_static_is_served(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get("/")
        assert info.headers["content-type"].startswith("application/json")
        assert info.json()["page_url"] == "/viewer"
        assert "accept" in info.headers["vary"].lower()
        for path in ("/", "/viewer"):
            html = client.get(path, headers={"Accept": BROWSER_ACCEPT} if path == "/" else {})
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            assert '<input id="photo"' in html.text
            assert ('data-vendor="ok"' in html.text) is not bool(web_page.vendor_missing())
        assert client.get("/viewer").headers["cache-control"] == "no-cache"
        modules = sorted(path.name for path in web_page.STATIC_DIR.glob("*.js"))
        assert "app.js" in modules and len(modules) > 1  # the entry module imports the others
        for name in modules:
            script = client.get(f"/static/{name}")
            assert script.status_code == 200 and "javascript" in script.headers["content-type"], name
        for path in web_page.vendor_files() if not web_page.vendor_missing() else ():
            assert client.get(f"/static/vendor/{path}").status_code == 200, path
        missing = client.get("/static/nothing-here.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert missing.json()["error"]["request_id"] == missing.headers["x-request-id"]


def test_page_says_when_the_renderer_is_missing(server: LiveServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_page, "VENDOR_DIR", tmp_path / "vendor")
    html = httpx.get(f"{server.url}/viewer", timeout=30).text
    assert 'data-vendor="missing"' in html and "make web" in html


def test_modal_image_ships_the_page() -> None:
    """Modal's add_local_python_source ships only .py files by default; deploy keeps the page's files."""
    from deploy import images as deploy

    for shipped in ("app/pipeline.py", "app/web/static/app.js", "app/web/static/vendor/spark/spark.module.js"):
        assert not deploy._not_shipped(Path(shipped)), shipped
    assert deploy._not_shipped(Path("app/__pycache__/api.cpython-311.pyc"))


# ------------------------------------------------------------------------------------- in a browser


def test_page_without_renderer_says_what_to_run(page: Any, server: LiveServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_page, "VENDOR_DIR", tmp_path / "vendor")
    page.goto(f"{server.url}/viewer")
    assert page.is_visible("#vendor-banner") and "make web" in page.text_content("#vendor-banner")
    ply = tmp_path / "scene.ply"
    write_scene(photo_scene(red_over_blue(16, 12), f_px=15.0), ply)
    page.set_input_files("#scene-file", str(ply))
    assert wait_state(page, "error", "ready") == "error"
    assert "make web" in page.text_content("#error-message")


def test_photo_becomes_a_scene_seen_from_the_photo(page: Any, server: LiveServer, photo: Path,
                                                    tiny_predictor: SharpPredictor,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A real photo through the whole page, one-request transport (`POST /predict/spz`): idle ->
    uploading -> running -> loading-scene -> ready.

    The prediction is held until the test has seen (and photographed) the `running` state.

    The tiny preset has synthetic weights, but its Gaussians take their colours from the photo (measured:
    scene of a red-over-blue image is red above and blue below), so its first frame looks like the photo:
    the correlation of 48 x 32 grey images is 0.995 for coffee.png (-0.55 against the photo upside
    down); at least 0.8 is required.
    """
    without_jobs(page)
    page.goto(f"{server.url}/")
    assert state(page) == "idle"
    page.wait_for_selector("#model:not([hidden])")
    assert "tiny" in page.text_content("#model-banner") and "synthetic" in page.text_content("#model-banner")
    screenshot(page, "idle")

    release = threading.Event()
    predict = tiny_predictor.predict

    def held_predict(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=120)
        return predict(*args, **kwargs)

    monkeypatch.setattr(tiny_predictor, "predict", held_predict)
    page.set_input_files("#photo", str(photo))
    try:
        assert wait_state(page, "running", "error") == "running"
        page.wait_for_function("document.getElementById('status-detail').textContent.startsWith('1 s')")
        assert page.get_attribute("#progress", "value") is None  # indeterminate: no progress is reported
        screenshot(page, "running")
    finally:
        release.set()
    wait_first_frame(page)
    states = page.evaluate("window.__states")
    assert states[-1] == "ready", states
    assert [s for s in states if s in ("uploading", "running", "loading-scene", "ready")] == [
        "uploading", "running", "loading-scene", "ready"], states

    source = np.asarray(Image.open(photo).convert("RGB"))
    rendered = canvas_pixels(page)
    assert rendered.std() > 20, "the canvas is blank"
    height, width = source.shape[:2]
    assert abs(rendered.shape[1] / rendered.shape[0] - width / height) < 0.02  # the photo's aspect ratio
    similarity = correlation(grey(rendered, (48, 32)), grey(source, (48, 32)))
    assert similarity > 0.8, similarity
    assert page.text_content("#meta").count("131,072") == 1
    assert "(default)" in page.text_content("#meta") or "(exif)" in page.text_content("#meta")
    labels = page.locator("#downloads button").all_text_contents()
    formats = page.locator("#downloads button").evaluate_all("buttons => buttons.map(b => b.dataset.format)")
    assert labels[0].startswith("SPZ") and sorted(formats) == sorted(set(SCENE_FORMATS) - {"json"})
    with page.expect_download() as download:
        page.click("#downloads button[data-format='spz']")
    assert download.value.suggested_filename.endswith(".spz")
    with page.expect_download() as download:  # runs the model again on the same photo
        page.click("#downloads button[data-format='ply_vertex']")
    assert download.value.suggested_filename.endswith(".vertex.ply")
    header = Path(download.value.path()).read_bytes()[:400]
    assert b"element vertex 131072" in header and b"element intrinsic" not in header
    screenshot(page, "ready")


def orbit_and_reset(page: Any, pixels: np.ndarray) -> None:
    """Dragging orbits away from the photo's view; "Reset view" brings the photo back."""
    box = page.locator("#canvas").bounding_box()
    frames = int(page.get_attribute("body", "data-frames"))
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.3, steps=8)
    page.mouse.up()
    page.wait_for_function(f"Number(document.body.dataset.frames) > {frames + 5}")
    orbited = correlation(grey(canvas_pixels(page), (40, 30)), grey(pixels, (40, 30)))
    frames = int(page.get_attribute("body", "data-frames"))
    page.click("#reset-view")  # applies at once: the motion still pending from the drag is dropped
    page.wait_for_function(f"Number(document.body.dataset.frames) > {frames}")
    back = correlation(grey(canvas_pixels(page), (40, 30)), grey(pixels, (40, 30)))
    assert orbited < 0.8 < 0.95 < back, (orbited, back)


def test_local_files_open_upright_and_resemble_the_photo(page: Any, server: LiveServer, tmp_path: Path) -> None:
    """A scene made in the test whose splats ARE a photo (one Gaussian per pixel on a plane 2 m away)
    opened through the page's local-file path (nothing is uploaded): the first frame must look like it.

    PLY carries the camera (f_px, size), so the frame is the photo itself: the correlation of 40 x 30
    grey images is 0.997 (-0.23 against the photo upside down; > 0.9 required), the red half on top.
    Orbiting moves away from it (-0.07) and "Reset view" comes back (0.99). SPZ and .splat carry no
    camera (default 50 degree view), so for them only the orientation is checked: red above blue, which
    pins down how Spark reads each format's axes (SPZ as stored, RUB; PLY and .splat turned from OpenCV).
    """
    pixels = red_over_blue(160, 120)
    scene = photo_scene(pixels, f_px=150.0)
    for fmt in ("ply", "spz", "splat"):
        write_scene(scene, tmp_path / f"photo.{fmt}")
    page.goto(f"{server.url}/viewer")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
    for fmt in ("ply", "spz", "splat"):
        page.set_input_files("#scene-file", str(tmp_path / f"photo.{fmt}"))
        wait_first_frame(page)
        rendered = canvas_pixels(page)
        half = rendered.shape[0] // 2
        assert redness(rendered[:half]) > 60 and redness(rendered[half:]) < -60, fmt
        if fmt == "ply":
            assert abs(rendered.shape[1] / rendered.shape[0] - 160 / 120) < 0.02
            similarity = correlation(grey(rendered, (40, 30)), grey(pixels, (40, 30)))
            upside_down = correlation(grey(rendered, (40, 30)), grey(pixels[::-1], (40, 30)))
            assert similarity > 0.9 > upside_down, (similarity, upside_down)
            assert "150 (file)" in page.text_content("#meta")
            orbit_and_reset(page, pixels)
    assert not [r for r in requests if r.startswith("POST")], requests


def test_the_budget_field_goes_with_the_job_and_the_result_says_both_counts(page: Any, server: LiveServer,
                                                                            photo: Path) -> None:
    """A budget typed in `#max-gaussians` is a form field of the page's request (here `POST /jobs`); a bad
    one comes back as the server's 422, naming the accepted range; a good one leaves a quarter of the
    Gaussians, which the result panel states beside the number predicted."""
    page.goto(f"{server.url}/")
    page.wait_for_selector("#model:not([hidden])")
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.fill("#max-gaussians", "1.5")
    page.set_input_files("#photo", str(photo))
    assert wait_state(page, "error", "ready") == "error"
    assert "fraction in (0, 1]" in page.text_content("#error-message")
    page.fill("#max-gaussians", "0.25")
    page.set_input_files("#photo", str(photo))
    wait_first_frame(page)
    assert [url.removeprefix(server.url) for url in posts] == ["/jobs", "/jobs"]
    assert "32,768 of 131,072 predicted" in page.text_content("#meta")  # (Chromium does not show the body)


def test_local_sog_opens_upright(page: Any, server: LiveServer, tmp_path: Path) -> None:
    """Our SOG (PLY axes, OpenCV; Spark reads it as a `pcsogszip`) of the photo scene, opened on a desktop
    page: red above blue, as the PLY of the same scene. SOG carries no camera, so only the orientation is
    checked (as for SPZ and .splat above)."""
    write_scene(photo_scene(red_over_blue(160, 120), f_px=150.0), tmp_path / "photo.sog")
    page.goto(f"{server.url}/viewer")
    page.set_input_files("#scene-file", str(tmp_path / "photo.sog"))
    wait_first_frame(page)
    rendered = canvas_pixels(page)
    half = rendered.shape[0] // 2
    assert rendered.std() > 20, "the canvas is blank"
    assert redness(rendered[:half]) > 60 and redness(rendered[half:]) < -60


def test_exif_rotated_jpeg_is_upright(page: Any, server: LiveServer) -> None:
    """A JPEG stored sideways with EXIF orientation 6: the server turns it upright (landscape 200 x 120),
    and the tiny network's colours follow the photo, so the rendered top is red and the bottom blue."""
    shown = red_over_blue(200, 120)
    stored = np.ascontiguousarray(np.rot90(shown, k=1))  # 120 x 200 portrait on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert load_image(jpeg).rgb.shape == (120, 200, 3)  # what the server will see

    page.goto(f"{server.url}/")
    page.set_input_files("#photo", files=[{"name": "sideways.jpg", "mimeType": "image/jpeg", "buffer": jpeg}])
    wait_first_frame(page)
    rendered = canvas_pixels(page)
    assert abs(rendered.shape[1] / rendered.shape[0] - 200 / 120) < 0.02
    half = rendered.shape[0] // 2
    assert redness(rendered[:half]) > 40 and redness(rendered[half:]) < -40, (
        redness(rendered[:half]), redness(rendered[half:]))
    assert "200 × 120" in page.text_content("#meta")


def test_error_is_shown_then_the_page_recovers(page: Any, server: LiveServer, photo: Path) -> None:
    text = b"not a photo, just some words\n" * 4
    expected = api_message(server.url, "notes.txt", text)
    page.goto(f"{server.url}/viewer")
    page.set_input_files("#photo", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": text}])
    assert wait_state(page, "error", "ready") == "error"
    assert page.text_content("#error-message") == expected
    assert page.get_attribute("body", "data-error-code") == "unsupported_image"
    assert not page.is_visible("#retry")  # the same file would fail again
    assert "Choose another file" in page.text_content("#error-request")
    assert not page.is_visible("#auth-form")
    screenshot(page, "error")

    page.set_input_files("#photo", str(photo))
    wait_first_frame(page)
    assert not page.is_visible("#error")


@pytest.mark.parametrize("job", ["..", "%2E%2E", "abc", "../health", "0123456789abcdef0123456789abcdef/.."])
def test_a_link_whose_job_id_cannot_be_one_is_refused_before_any_request(page: Any, server: LiveServer,
                                                                         job: str) -> None:
    """Issue 28: `?job=..` made the page request `/`, take the API's description for a job and poll it once a
    second for ever. An id that cannot be a job's is an error before any request about it."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{server.url}/viewer?job={job}")
    assert wait_state(page, "error", "ready") == "error"
    assert "not one of this server's" in page.text_content("#error-message")
    assert page.get_attribute("body", "data-error-code") == "bad_job_link"
    assert not [url for url in requests if "/jobs" in url], requests
    assert sum(url.rstrip("/") == server.url for url in requests) <= 1, requests  # the API's info, once


def test_upload_over_the_limit_is_explained(page: Any, tiny_predictor: SharpPredictor) -> None:
    """The server refuses the body before reading it (413); the browser still gets the JSON message."""
    live = LiveServer.start(create_app(page_settings(max_upload_mb=0.1), predictor=tiny_predictor))
    try:
        page.goto(f"{live.url}/")
        big = np.random.default_rng(0).integers(0, 256, size=3_000_000, dtype=np.uint8).tobytes()
        page.set_input_files("#photo", files=[{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": big}])
        assert wait_state(page, "error", "ready") == "error"
        assert page.get_attribute("body", "data-error-code") == "upload_too_large"
        assert "0.1 MB" in page.text_content("#error-message")
    finally:
        live.stop()


def test_model_that_cannot_load_is_explained_in_the_banner(page: Any) -> None:
    """Offline with nothing cached: the page shows /health's message, which names the fix."""
    url = "https://example.invalid/sharp.pt"

    def unreachable(_settings: Settings) -> None:
        raise CheckpointDownloadError(f"Downloading {url} failed: ConnectError.", url=url, unreachable=True)

    settings = page_settings(preset="sharp", checkpoint_url=url)
    live = LiveServer.start(create_app(settings, service=InferenceService(settings, loader=unreachable)))
    try:
        with live.client() as client:  # the first load attempt fails at once
            for _ in range(600):
                if client.get("/health").json()["status"] == "error":
                    break
                time.sleep(0.05)
        page.goto(f"{live.url}/")
        page.wait_for_selector("#model-banner.error", state="visible")
        assert "SHARP_PRESET=tiny" in page.text_content("#model-banner")
        assert page.text_content("#model") == "model error"
    finally:
        live.stop()


def test_api_key_is_asked_for_then_used(page: Any, key_server: LiveServer, photo: Path) -> None:
    page.goto(f"{key_server.url}/")
    page.set_input_files("#photo", str(photo))
    assert wait_state(page, "error", "ready") == "error"
    assert page.get_attribute("body", "data-error-code") == "unauthorized"
    assert page.is_visible("#auth-form")
    assert "API key" in page.text_content("#error-message")

    page.fill("#api-key", "wrong-key")
    page.click("#auth-form button[type='submit']")
    page.wait_for_function("window.__states.filter((s) => s === 'error').length === 2")
    assert page.get_attribute("body", "data-error-code") == "unauthorized"

    page.fill("#api-key", API_KEY)
    page.click("#auth-form button[type='submit']")
    wait_first_frame(page)
    assert page.evaluate("sessionStorage.getItem('sharp-serve.api-key')") == API_KEY
    assert page.evaluate("localStorage.length") == 0


def test_jobs_transport(page: Any, server: LiveServer, photo: Path) -> None:
    """When the JSON info lists POST /jobs, the page uses it: queued and running come from the job's
    server-sent events (with progress), the SPZ and the other formats from its result URLs."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(f"{request.method} {request.url}"))
    page.goto(f"{server.url}/")
    page.set_input_files("#photo", str(photo))
    wait_first_frame(page)
    states = page.evaluate("window.__states")
    assert [s for s in states if s in ("uploading", "queued", "running", "ready")] == [
        "uploading", "queued", "running", "ready"], states
    assert page.text_content("#downloads-note").startswith("All formats")
    assert any(r.startswith("POST ") and r.endswith("/jobs") for r in requests), requests
    assert not any("/predict" in r for r in requests), requests
    # The job was asked for its coarse level first (docs/jobs.md#lazy-outputs, docs/page.md "Levels of detail")
    # and succeeded with it; the SPZ followed.
    assert page.evaluate("fetch(location.pathname + 'jobs/' + new URLSearchParams(location.search)"
                         ".get('job')).then(r => r.json()).then(j => j.first)") == "coarse"
    assert any(r.endswith("/result.coarse.spz") for r in requests) and any(r.endswith("/result.spz") for r in requests)
    # The server's preview render was fetched as the scene loaded; made after the SPZ, it is shown only when it
    # comes before the scene (a slow link), and gives way to the scene: on loopback the scene comes first.
    assert any(r.endswith("/preview.png") for r in requests), requests
    assert page.evaluate("document.getElementById('preview').hidden") is True
    with page.expect_download() as download:
        page.click("#downloads button[data-format='ply_vertex']")
    assert download.value.suggested_filename.endswith(".vertex.ply")
    assert any(r.endswith("/result.vertex.ply") for r in requests), requests

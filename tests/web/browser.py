"""What the page's browser tests share: Debian's chromium (software WebGL) driven by Playwright, the page's
test contract (`document.body.dataset.state`, `dataset.frames`, `dataset.visible`), images, scenes made to
look like a photo, and image comparisons. The fixtures are in `conftest.py`.

Playwright never downloads a browser here: the tests use `chromium` from PATH and are skipped, with the
reason, without it (CI installs it in .ci/run). Set SHARP_PAGE_SCREENSHOTS=<dir> to keep the screenshots
(docs/page_*.png).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from app.gaussians import GaussianScene, srgb_to_linear
from app.outputs import encode as encode_format
from app.prediction import ModelInfo, Prediction
from app.settings import Settings
from tests.helpers import tiny_settings

try:
    from playwright import sync_api
except ImportError:  # the browser tests skip; the HTTP ones still run
    sync_api = None
CHROMIUM = shutil.which("chromium")

CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
API_KEY = "page-test-key-0123"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
TIMEOUT_MS = 240_000  # SwiftShader on a shared 2-core machine: a first frame can take tens of seconds
VIEWPORT = {"width": 1100, "height": 720}
SCREENSHOT_DIR = os.environ.get("SHARP_PAGE_SCREENSHOTS")

# Records every value body.dataset.state takes, in order, from the first script on. Observers run
# after the task that made the changes, so each value is taken from the record of the next change
# (its oldValue) and the last one from the attribute itself.
RECORD_STATES = """
window.__states = [];
const push = (state) => {
  if (state && window.__states[window.__states.length - 1] !== state) window.__states.push(state);
};
new MutationObserver((records) => {
  for (const record of records) if (record.target === document.body) push(record.oldValue);
  push(document.body && document.body.dataset.state);
}).observe(document, {subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ["data-state"]});
"""

# Records the page's Content-Security-Policy violations (`window.__violations`: "directive blocked-URI").
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


# ------------------------------------------------------------------------------------------ helpers


def page_settings(**overrides: Any) -> Settings:
    """The tiny preset's settings with a fresh jobs directory (the page uses the jobs API)."""
    return tiny_settings(**{"jobs_dir": Path(tempfile.mkdtemp(prefix="sharp-page-jobs-")), **overrides})


def encode(pixels: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def red_over_blue(width: int, height: int) -> np.ndarray:
    """Red top half, blue bottom half, with a grey square and a diagonal stripe for structure."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2] = (220, 40, 40)
    pixels[height // 2:] = (40, 60, 220)
    pixels[height // 4: height // 2, width // 8: width // 3] = (200, 200, 200)
    y, x = np.mgrid[0:height, 0:width]
    pixels[np.abs(x - y * width / height) < width / 30] = (20, 20, 20)
    return pixels


def write_scene(scene: GaussianScene, path: Path) -> Path:
    """`scene` as a file of the format its suffix names (ply, spz, splat)."""
    model = ModelInfo(preset="test", weights="synthetic", checkpoint=None, device="cpu", dtype="float32",
                      num_gaussians=scene.num_gaussians, internal_resolution=0)
    prediction = Prediction(name=path.stem, scene=scene, f_px_source="request", model=model)
    path.write_bytes(encode_format(prediction, path.suffix[1:]))
    return path


def photo_scene(pixels: np.ndarray, f_px: float, depth: float = 2.0) -> GaussianScene:
    """One Gaussian per pixel on the plane z = `depth` (OpenCV camera axes), so that the photo's camera
    sees exactly the photo: pixel (u, v) centre at ((u + 0.5 - W/2) z / f, (v + 0.5 - H/2) z / f, z)."""
    height, width, _ = pixels.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    pitch = depth / f_px  # one pixel at that depth, metres
    positions = np.stack([(u + 0.5 - width / 2) * pitch, (v + 0.5 - height / 2) * pitch,
                          np.full_like(u, depth)], axis=-1).reshape(-1, 3)
    n = positions.shape[0]
    scales = np.tile(np.array([0.7 * pitch, 0.7 * pitch, 0.05 * pitch], np.float32), (n, 1))
    rotations = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    colors = srgb_to_linear(pixels.reshape(-1, 3).astype(np.float32) / 255.0)
    return GaussianScene(positions=positions.astype(np.float32), scales=scales, rotations=rotations,
                         colors=colors, opacities=np.full(n, 0.98, np.float32), f_px=f_px,
                         image_width=width, image_height=height)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def grey(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Luminance, downscaled with a box filter to `size` (width, height)."""
    return np.asarray(Image.fromarray(image).convert("L").resize(size, Image.BOX), dtype=np.float64)


def redness(image: np.ndarray) -> float:
    """Mean of R - B over the image (positive: red, negative: blue)."""
    return float(image[..., 0].astype(np.float64).mean() - image[..., 2].astype(np.float64).mean())


def state(page: Any) -> str:
    return page.evaluate("document.body.dataset.state")


def wait_state(page: Any, *states: str, timeout: int = TIMEOUT_MS) -> str:
    page.wait_for_function(f"{list(states)!r}.includes(document.body.dataset.state)", timeout=timeout)
    return state(page)


def wait_first_frame(page: Any) -> None:
    """The scene is loaded (`ready`) and a frame with splats has been drawn."""
    assert wait_state(page, "ready", "error") == "ready", page.text_content("#error-message")
    page.wait_for_function("document.body.dataset.visible === '1'", timeout=TIMEOUT_MS)


def canvas_pixels(page: Any) -> np.ndarray:
    """The canvas as the user sees it (RGB)."""
    png = page.locator("#canvas").screenshot(timeout=TIMEOUT_MS)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def screenshot(page: Any, name: str) -> None:
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / f"page_{name}.png"))


def api_message(url: str, filename: str, content: bytes) -> str:
    """The error message the API itself gives for this upload."""
    response = httpx.post(f"{url}/predict/spz", files={"file": (filename, content)}, timeout=60)
    assert response.status_code >= 400
    return response.json()["error"]["message"]


def without_jobs(page: Any) -> None:
    """Hide `POST /jobs` from the page's JSON info, so that it takes the one-request transport."""

    def handle(route: Any) -> None:
        if "application/json" not in (route.request.headers.get("accept") or ""):
            route.continue_()
            return
        response = route.fetch()
        info = response.json()
        info["endpoints"] = [e for e in info["endpoints"] if not e["path"].startswith("/jobs")]
        route.fulfill(response=response, json=info)

    page.route(lambda url: url.rstrip("/").count("/") == 2, handle)  # the server root


def poll(page: Any, expression: str, done: Callable[[Any], bool], timeout_s: float = TIMEOUT_MS / 1000) -> Any:
    """`page.evaluate(expression)` until `done(value)`, for at most `timeout_s` (evaluate runs outside the
    page's policy; polling with `wait_for_function` would not)."""
    deadline = time.monotonic() + timeout_s
    while not done(value := page.evaluate(expression)):
        assert time.monotonic() < deadline, value
        time.sleep(0.05)
    return value


class Finger:
    """Touches on the page's screen through the DevTools protocol (CSS pixels of the viewport)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.cdp = page.context.new_cdp_session(page)

    def _send(self, kind: str, points: list[tuple[float, float]]) -> None:
        touch_points = [{"x": x, "y": y, "id": index} for index, (x, y) in enumerate(points)]
        self.cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touch_points})

    def move(self, starts: list[tuple[float, float]], ends: list[tuple[float, float]], steps: int = 10) -> None:
        """Fingers down at `starts`, moved in `steps` to `ends`, lifted."""
        self._send("touchStart", starts)
        for step in range(1, steps + 1):
            t = step / steps
            self._send("touchMove", [(x0 + t * (x1 - x0), y0 + t * (y1 - y0))
                                     for (x0, y0), (x1, y1) in zip(starts, ends, strict=True)])
        self._send("touchEnd", [])

    def double_tap(self, x: float, y: float) -> None:
        """Two 50 ms taps 150 ms apart, as the screen times them (`timestamp`), however long the busy page
        takes to take each event (software WebGL may be drawing a second-long frame meanwhile)."""
        start = time.time()
        for kind, at in (("touchStart", 0.0), ("touchEnd", 0.05), ("touchStart", 0.15), ("touchEnd", 0.2)):
            points = [{"x": x, "y": y, "id": 0}] if kind == "touchStart" else []
            self.cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points, "timestamp": start + at})


@contextlib.contextmanager
def open_tab(browser: Any, *scripts: str, **context_options: Any) -> Iterator[Any]:
    """A tab in a new browser context (`context_options`) that records the page's states (and runs `scripts`
    first), waits at most `TIMEOUT_MS`, and fails the test if the page raised an uncaught error."""
    context = browser.new_context(**context_options)
    try:
        tab = context.new_page()
        for script in (RECORD_STATES, *scripts):
            tab.add_init_script(script)
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"

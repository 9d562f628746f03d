"""Benchmark of the web page: from dropping a photo to the first frame with splats, and the bytes moved.

    .venv/bin/python -m bench.page [--photo PHOTO] [--preset tiny] [--repeat 3] [--context desktop|phone]

Starts the server on loopback (the `tiny` preset by default: its network is fast, so the figures are
mostly the page's own costs) and Debian's `chromium` with software WebGL (SwiftShader) through
Playwright. Each run uses a fresh browser context (empty cache): it opens the page, chooses the photo
in `#photo` and waits until the page reports a frame with splats (`data-visible`). Printed per run
and as medians:

- `page_load_s`: navigation until the page is `idle` with the model named, and `page_bytes` (HTML,
  script, style and the vendor renderer builds the page fetches while idle, uncompressed: the server
  sends no Content-Encoding);
- `upload_s`: uploading -> queued (jobs API) or running (`POST /predict/spz`);
- `predict_s`: from there -> loading-scene (the job succeeded, or the response's headers arrived:
  prediction and encoding done);
- `scene_s`: loading-scene -> ready (SPZ downloaded, decoded by Spark, camera placed);
- `first_frame_s`: the photo chosen -> first frame with splats (the page's own clock);
- `upload_bytes`, `scene_bytes`: the request body of `POST /jobs` (or `/predict/spz`) and the scene file
  received (SPZ; SOG on a phone when the server makes it);
- with the jobs API, levels of detail (`lod.js`): `coarse_bytes` (the coarse level's SPZ),
  `coarse_shown_after_first_byte_s` (from the first byte of the coarse file to the first frame showing it)
  and `full_shown_s` (from that same first byte to the full scene's first frame). `first_frame_s` and
  `scene_s` are the full scene's.

`--context phone` uses a phone's screen (390 x 844, mobile, touch), on which the page shows SOG.

The page uses the jobs API, which this server has; `--sync` hides it so that the page sends one
`POST /predict/spz` instead.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/page.py` works too; not tests/: its `http` package hides the stdlib's
    sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from app.http import create_app  # noqa: E402
from app.predictor import SharpPredictor  # noqa: E402
from app.settings import Settings  # noqa: E402

CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run", "--disable-sync"]
RECORD_STATES = """
window.__states = [];
new MutationObserver(() => {
  const state = document.body && document.body.dataset.state;
  const last = window.__states[window.__states.length - 1];
  if (state && (!last || last[0] !== state)) window.__states.push([state, performance.now()]);
  const lod = document.body && document.body.dataset.lod;
  if (lod && document.body.dataset.visible === "1" && !(lod in window.__lodShown)) {
    window.__lodShown[lod] = performance.now();  // the first frame with splats of that level
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-state", "data-visible", "data-lod"]});
window.__lodShown = {};
"""
COARSE_FIRST_BYTE = """
(performance.getEntriesByType("resource").find((e) => e.name.endsWith("/result.coarse.spz")) || {}).responseStart
"""
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1100, "height": 720}}
DEFAULT_PHOTO = ROOT / "tests" / "data" / "conformance" / "coffee.png"


def start_server(preset: str) -> tuple[uvicorn.Server, threading.Thread, str]:
    settings = Settings(preset=preset, device="cpu", api_key=None, cors_origins=[],
                        jobs_dir=Path(tempfile.mkdtemp(prefix="sharp-bench-page-")))
    app = create_app(settings, predictor=SharpPredictor.from_settings(settings))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def one_run(browser: Any, url: str, photo: Path, sync: bool, phone: bool = False) -> dict[str, float]:
    # bypass_csp: wait_for_function evaluates strings, which the page's policy forbids (as tests/web/conftest.py)
    context = browser.new_context(**(PHONE if phone else DESKTOP), bypass_csp=True)
    page = context.new_page()
    if sync:
        from tests.web.browser import without_jobs

        without_jobs(page)
    page.add_init_script(RECORD_STATES)
    page.set_default_timeout(600_000)
    sizes: dict[str, int] = {"page_bytes": 0, "upload_bytes": 0, "scene_bytes": 0, "coarse_bytes": 0}

    def finished(request: Any) -> None:
        size = request.sizes()
        if request.method == "POST" and request.url.endswith(("/predict/spz", "/jobs")):
            sizes["upload_bytes"] += int(request.header_value("content-length") or 0)
            if request.url.endswith("/predict/spz"):
                sizes["scene_bytes"] += size["responseBodySize"]
        elif request.method == "GET" and request.url.endswith("/result.coarse.spz"):
            sizes["coarse_bytes"] += size["responseBodySize"]
        elif request.method == "GET" and request.url.endswith(("/result.spz", "/result.sog")):
            sizes["scene_bytes"] += size["responseBodySize"]
        elif request.method == "GET" and "/jobs/" not in request.url:
            sizes["page_bytes"] += size["responseBodySize"]

    page.on("requestfinished", finished)
    start = time.perf_counter()
    page.goto(f"{url}/")
    page.wait_for_function("document.body.dataset.state === 'idle' && !document.getElementById('model').hidden")
    page.wait_for_load_state("networkidle")  # the renderer's modules load while the page is idle
    page_load_s = time.perf_counter() - start
    page_bytes = sizes["page_bytes"]
    page.set_input_files("#photo", str(photo))
    page.wait_for_function("(document.body.dataset.state === 'ready' && document.body.dataset.visible === '1')"
                           " || document.body.dataset.state === 'error'")
    if page.evaluate("document.body.dataset.state") == "error":
        raise RuntimeError(page.text_content("#error-message"))
    first_frame_s = float(page.get_attribute("body", "data-first-frame-ms")) / 1000
    at = {state: ms / 1000 for state, ms in page.evaluate("window.__states")}
    if not sync:
        page.wait_for_function("'full' in window.__lodShown")
    lod_shown, coarse_first_byte = page.evaluate("window.__lodShown"), page.evaluate(COARSE_FIRST_BYTE)
    context.close()
    levels = {}
    if "coarse" in lod_shown and coarse_first_byte:
        levels = {"coarse_shown_after_first_byte_s": (lod_shown["coarse"] - coarse_first_byte) / 1000,
                  "full_shown_s": (lod_shown["full"] - coarse_first_byte) / 1000,
                  "coarse_bytes": sizes["coarse_bytes"]}
    uploaded = at.get("queued", at["running"])
    return {
        "page_load_s": page_load_s, "page_bytes": page_bytes,
        "upload_s": uploaded - at["uploading"], "predict_s": at["loading-scene"] - uploaded,
        "scene_s": at["ready"] - at["loading-scene"], "first_frame_s": first_frame_s,
        "upload_bytes": sizes["upload_bytes"], "scene_bytes": sizes["scene_bytes"], **levels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=DEFAULT_PHOTO)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="hide POST /jobs: one POST /predict/spz per photo")
    parser.add_argument("--context", choices=["desktop", "phone"], default="desktop", help="the browser's screen")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("bench/page.py needs Debian's chromium on PATH (apt-get install -y chromium)")
    server, thread, url = start_server(args.preset)
    runs = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for index in range(args.repeat):
                run = one_run(browser, url, args.photo, args.sync, phone=args.context == "phone")
                runs.append(run)
                print(f"run {index + 1}: " + " ".join(f"{k}={v:.2f}" if k.endswith("_s") else f"{k}={v:,}"
                                                       for k, v in run.items()), flush=True)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    transport = "POST /predict/spz" if args.sync else "jobs API"
    print(f"photo: {args.photo.name}, preset: {args.preset}, {transport}, {args.context}, "
          "chromium with SwiftShader WebGL, "
          f"{args.repeat} runs (median):")
    for key in runs[0]:
        value = statistics.median(run[key] for run in runs)
        print(f"{key}: {value:.2f}" if key.endswith("_s") else f"{key}: {int(value):,}")


if __name__ == "__main__":
    main()

"""Coarse to fine in Chromium (lod.js): a photo's job makes its coarse level first; the page shows it, then
swaps in the full scene once that is downloaded and decoded, the coarse one on screen until then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import LiveServer
from tests.web.browser import TIMEOUT_MS, canvas_pixels, correlation, grey, screenshot, wait_first_frame

BACKGROUND = np.array([0x10, 0x11, 0x14])


def covered(image: np.ndarray) -> float:
    """The fraction of the canvas's pixels that differ from the clear colour (splats drawn)."""
    return float(np.mean(np.abs(image.astype(np.int64) - BACKGROUND).sum(axis=2) > 12))


def test_the_coarse_level_shows_first_then_the_full_scene(page: Any, server: LiveServer, photo: Path) -> None:
    page.goto(f"{server.url}/")
    page.wait_for_selector("#model:not([hidden])")
    # The full scene's download is held (Playwright's own interception, the real request continued later) until
    # the coarse level has been seen: what the user on a slow link sees meanwhile.
    held: list[Any] = []
    page.route("**/result.spz", lambda route: held.append(route))
    # The server's preview image too, so that it arrives after the coarse level is shown: it must then stay
    # hidden (it once sat beside the canvas and squeezed it; CI's canvas then differed by 62 grey levels).
    previews: list[Any] = []
    page.route("**/preview.png", lambda route: previews.append(route))
    posted: list[str] = []
    page.on("request", lambda request: request.method == "POST" and posted.append(request.post_data_buffer or b""))
    page.set_input_files("#photo", str(photo))
    page.wait_for_function("document.body.dataset.lod === 'coarse' && document.body.dataset.visible === '1'",
                           timeout=TIMEOUT_MS)
    assert page.evaluate("document.body.dataset.state") == "loading-scene"  # `ready` is the full scene's
    assert len(previews) == 1
    previews[0].continue_()
    page.wait_for_function("document.getElementById('preview').src.startsWith('blob:')", timeout=TIMEOUT_MS)
    assert page.evaluate("document.getElementById('preview').hidden")
    coarse = canvas_pixels(page)
    screenshot(page, "lod_coarse")
    job_form = b"".join(posted)
    assert b'name="first"\r\n\r\ncoarse' in job_form and b"coarse" in job_form.split(b'name="outputs"')[1][:200]
    assert len(held) == 1, "the full scene was asked for once, after the coarse level"
    held[0].continue_()
    wait_first_frame(page)
    page.wait_for_function("document.body.dataset.lod === 'full'", timeout=TIMEOUT_MS)
    full = canvas_pixels(page)
    screenshot(page, "lod_full")
    # Both fill the photo's view; the coarse one is the same picture, blurred: far nearer the full scene than
    # the empty canvas is (a ratio, so that it holds whatever the photo's contrast; CI saw 23.6 grey levels).
    assert covered(coarse) > 0.5 and covered(full) > 0.5, (covered(coarse), covered(full))
    size = (40, 27)
    difference = float(np.abs(grey(coarse, size) - grey(full, size)).mean())
    empty = np.broadcast_to(BACKGROUND.astype(np.uint8), full.shape).copy()
    assert difference < 0.5 * float(np.abs(grey(empty, size) - grey(full, size)).mean()), difference
    assert correlation(grey(coarse, size), grey(full, size)) > 0.7
    assert "131,072" in page.text_content("#meta")  # the full scene's Gaussians, 2 x 256 x 256

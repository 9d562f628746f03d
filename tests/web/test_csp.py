"""The page under its own Content-Security-Policy (the other browser tests bypass it to poll with
`wait_for_function`): a photo still becomes a drawn scene, and the browser reports no policy violation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import LiveServer
from tests.web.browser import RECORD_STATES, RECORD_VIOLATIONS, VIEWPORT, canvas_pixels, poll


def test_the_page_works_under_its_content_security_policy(browser: Any, server: LiveServer, photo: Path) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.add_init_script(RECORD_STATES)
        page.add_init_script(RECORD_VIOLATIONS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        response = page.goto(f"{server.url}/viewer")
        assert response is not None
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'self'" in policy and "'unsafe-eval'" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        poll(page, "document.getElementById('model').hidden", lambda hidden: not hidden)
        page.set_input_files("#photo", str(photo))
        assert poll(page, "document.body.dataset.state", lambda s: s in ("ready", "error")) == "ready", \
            page.text_content("#error-message")
        poll(page, "document.body.dataset.visible", lambda visible: visible == "1")
        assert canvas_pixels(page).std() > 20, "the canvas is blank"
        assert page.evaluate("window.__violations") == []
        assert not errors, errors
    finally:
        context.close()

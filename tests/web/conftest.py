"""The page's browser fixtures: the tiny predictor, live servers on loopback, one chromium for the session,
a desktop tab (`page`) and a photo."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.http import create_app
from app.predictor import SharpPredictor
from app.web import page as web_page
from tests.conformance import PHOTO
from tests.helpers import LiveServer
from tests.web.browser import (
    API_KEY,
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    open_tab,
    page_settings,
    sync_api,
)


@pytest.fixture(scope="session")
def tiny_predictor() -> SharpPredictor:
    return SharpPredictor.load("tiny", device="cpu")


@pytest.fixture(scope="session")
def server(tiny_predictor: SharpPredictor) -> Iterator[LiveServer]:
    live = LiveServer.start(create_app(page_settings(), predictor=tiny_predictor))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def key_server(tiny_predictor: SharpPredictor) -> Iterator[LiveServer]:
    live = LiveServer.start(create_app(page_settings(api_key=API_KEY), predictor=tiny_predictor))
    yield live
    live.stop()


def skip_without_renderer() -> None:
    if web_page.vendor_missing():
        pytest.skip(f"the page's renderer files are missing in {web_page.VENDOR_DIR}: run `make web`")


@pytest.fixture(scope="package")  # ended after the page tests: its event loop runs in the main thread
def browser() -> Iterator[Any]:
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]'; never `playwright install` here)")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    skip_without_renderer()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp: wait_for_function evaluates strings, which the page's policy forbids (test_csp.py keeps it)
    with open_tab(browser, viewport=VIEWPORT, bypass_csp=True) as tab:
        yield tab


@pytest.fixture(scope="session")
def photo() -> Path:
    """A real photo: the conformance photo kept in the repository (600 x 400, no EXIF)."""
    return PHOTO

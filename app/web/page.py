"""Serves the web page (`GET /viewer`, and `GET /` for browsers) and its assets (`/static/...`).

The page is plain HTML, CSS and ES modules (`static/app.js`, which imports the others in `static/`); the
renderer, Spark on three.js, is loaded through an import map from `static/vendor/`, which `make web`
fills from npm (pinned in `web/package-lock.json`). Nothing is fetched from a CDN and no Node.js is
needed at run time. Without the vendor files the server still starts: the page says what to run.

Content negotiation on `/`: a request whose Accept header prefers `text/html` to `application/json`
(what browsers send when opening a URL) gets the page; everything else (curl's and requests' `*/*`,
explicit `application/json`, no Accept at all) keeps getting the JSON API info.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

LOGGER = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"
PAGE_PATH = "/viewer"
"""Where the page always is (also `/` for browsers); the JSON info names it as `page_url`."""

VENDOR_MANIFEST = "versions.json"
"""Written into `VENDOR_DIR` by web/copy-vendor.mjs, which holds the one list of the vendor files:
`{"packages": {npm name: version}, "files": [path inside vendor/, ...]}`."""


def _media_ranges(accept: str) -> dict[str, float]:
    """`{"text/html": 1.0, "*/*": 0.8, ...}` from an Accept header (the highest q of each range)."""
    ranges: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges[media.lower()] = max(q, ranges.get(media.lower(), 0.0))
    return ranges


def _quality(ranges: dict[str, float], media: str) -> float:
    """The q the client gives `media`: its own entry, else `type/*`, else `*/*`, else 0."""
    major = media.split("/")[0]
    for key in (media, f"{major}/*", "*/*"):
        if key in ranges:
            return ranges[key]
    return 0.0


def wants_html(request: Request) -> bool:
    """True when the client prefers HTML to JSON: it names `text/html` and gives it a higher q than JSON.

    A tie goes to JSON, so `*/*` clients and `Accept: text/html, application/json` get today's JSON.
    """
    ranges = _media_ranges(request.headers.get("accept", ""))
    if "text/html" not in ranges:
        return False
    return _quality(ranges, "text/html") > _quality(ranges, "application/json")


def vendor_files() -> list[str]:
    """The files `make web` copied into `VENDOR_DIR`, as its manifest lists them; empty before it has run."""
    try:
        files = json.loads((VENDOR_DIR / VENDOR_MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [str(name) for name in files] if isinstance(files, list) else []


def vendor_missing() -> list[str]:
    """The vendor files the page needs that are not installed (empty when `make web` has run)."""
    files = vendor_files()
    if not files:
        return [VENDOR_MANIFEST]
    return [name for name in files if not (VENDOR_DIR / name).is_file()]


@cache
def _page_template() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def page_response() -> Response:
    """The page. When the renderer files are missing it says so (`data-vendor="missing"`)."""
    html = _page_template()
    if vendor_missing():
        html = html.replace('data-vendor="ok"', 'data-vendor="missing"', 1)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Vary": "Accept"})


def static_files() -> StaticFiles:
    """`app/web/static` (page script, style, vendor builds). A missing file is a JSON 404 from the app's
    error handlers, as everywhere else."""
    return StaticFiles(directory=STATIC_DIR, check_dir=False)


async def _viewer(_request: Request) -> Response:
    return page_response()


def mount_page(app: FastAPI) -> None:
    """Adds `GET /viewer` (the page) and `/static` (its assets) to `app`."""
    missing = vendor_missing()
    if missing:
        LOGGER.warning("Web page renderer files missing in %s (%s): run `make web`; the page will say so.",
                       VENDOR_DIR, ", ".join(missing))
    app.add_api_route(PAGE_PATH, _viewer, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.mount("/static", static_files(), name="static")

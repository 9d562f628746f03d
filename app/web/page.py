"""Serves the web page (`GET /viewer`, and `GET /` for browsers) and its assets (`/static/...`).

The page is plain HTML, CSS and ES modules (`static/app.js`, which imports the others in `static/`); the
renderer, Spark on three.js, is loaded through an import map from `static/vendor/`, which `make web`
fills from npm (pinned in `web/package-lock.json`). Nothing is fetched from a CDN and no Node.js is
needed at run time. Without the vendor files the server still starts: the page says what to run. The
page's import map points at `/static/v/<tag>/`, the vendor files under a digest of their manifest, cached
for a year; the page itself carries a Content-Security-Policy (this origin, plus what the renderer needs)
and no framing by others.

Content negotiation on `/`: a request whose Accept header prefers `text/html` to `application/json`
(what browsers send when opening a URL) gets the page; everything else (curl's and requests' `*/*`,
explicit `application/json`, no Accept at all) keeps getting the JSON API info.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

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
def vendor_tag() -> str:
    """A short digest of the vendor manifest (its package versions and files): the versioned vendor URLs'
    folder, `/static/v/<tag>/`, whose files may be cached for a year (an upgrade changes the tag)."""
    try:
        manifest = (VENDOR_DIR / VENDOR_MANIFEST).read_bytes()
    except OSError:
        manifest = b""
    return hashlib.sha256(manifest).hexdigest()[:12]


@cache
def _page() -> tuple[str, str]:
    """The page's HTML, its import map pointing at the versioned vendor folder, and its Content-Security-Policy.

    The policy allows this origin only, plus what the renderer needs: the inline import map (by its hash),
    WebAssembly compilation, workers and images from blob:/data: URLs (Spark builds its worker and WASM that
    way), a clip's preview video from a blob: URL (fetched with the API key, which a <video> cannot send);
    no framing by other sites.
    """
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    html = html.replace('"./static/vendor/', f'"./static/v/{vendor_tag()}/')
    import_map = re.search(r'<script type="importmap">(.*?)</script>', html, re.S)
    digest = base64.b64encode(hashlib.sha256(import_map.group(1).encode()).digest()).decode() if import_map else ""
    policy = "; ".join([
        "default-src 'self'", f"script-src 'self' 'sha256-{digest}' 'wasm-unsafe-eval'",
        "worker-src 'self' blob:", "img-src 'self' data: blob:", "media-src 'self' blob:",
        "connect-src 'self' data: blob:",
        "style-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'self'",
    ])
    return html, policy


def page_response() -> Response:
    """The page. When the renderer files are missing it says so (`data-vendor="missing"`)."""
    html, policy = _page()
    if vendor_missing():
        html = html.replace('data-vendor="ok"', 'data-vendor="missing"', 1)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Vary": "Accept",
                                       "Content-Security-Policy": policy, "X-Frame-Options": "SAMEORIGIN"})


class VersionedFiles(StaticFiles):
    """The vendor files under their versioned URL: cached for a year, never revalidated."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


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
    app.add_api_route(PAGE_PATH, _viewer, methods=["GET", "HEAD"], include_in_schema=False,
                      response_class=HTMLResponse)
    app.mount(f"/static/v/{vendor_tag()}", VersionedFiles(directory=VENDOR_DIR, check_dir=False), name="vendor")
    app.mount("/static", static_files(), name="static")

"""`GET /docs`: Swagger UI for the API, its scripts and styles served from this server, not from a CDN.

The assets are the copy of swagger-ui (5.x, which reads OpenAPI 3.1) that the `swagger-ui-py` package ships
(installed from PyPI at a pinned version, like the page's renderer from npm); they are mounted at
`/docs/assets/`, and the page itself is FastAPI's Swagger UI HTML pointing at them. The ReDoc page, which
only a CDN could serve, is not offered.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = f"{DOCS_URL}/assets"
SWAGGER_UI_DIR = Path(swagger_ui.__file__).resolve().parent / "static"


def mount_docs(app: FastAPI) -> None:
    """Adds `GET /docs` and its assets to `app` (created with ``docs_url=None, redoc_url=None``)."""

    async def swagger_ui_page(request: Request) -> HTMLResponse:
        root_path = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root_path}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root_path}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root_path}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root_path}{ASSETS_URL}/favicon-32x32.png",
        )

    app.add_api_route(DOCS_URL, swagger_ui_page, methods=["GET", "HEAD"], include_in_schema=False,
                      response_class=HTMLResponse)
    app.mount(ASSETS_URL, StaticFiles(directory=SWAGGER_UI_DIR), name="docs-assets")

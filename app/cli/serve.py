"""`python -m app serve [--host H] [--port P] [--preset NAME]`: the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import settings_with
from app.model.presets import PRESETS


def add_parser(commands: Any) -> None:
    presets = ", ".join(f"'{p.name}': {p.description}" for p in PRESETS.values())
    serve = commands.add_parser("serve", help="run the HTTP API with uvicorn")
    serve.add_argument("--host", default=None, help="bind address (default SHARP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default SHARP_PORT or 8000)")
    serve.add_argument("--preset", default=None, choices=list(PRESETS), help=f"network: {presets}")
    serve.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http import create_app
    from app.http.server import UVICORN_OPTIONS

    settings = settings_with(host=args.host, port=args.port, preset=args.preset)
    # app.access logs each request once, with its request id; uvicorn's own access log would repeat it.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, **UVICORN_OPTIONS)
    return 0

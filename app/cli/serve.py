"""`python -m app serve [--host H] [--port P] [--preset NAME]`: the HTTP API with uvicorn.

Before anything starts (the model's load, the jobs' recovery), the server takes its jobs folder (one server
per `SHARP_JOBS_DIR`, `app.jobs.store`) and its port; if either is taken it stops with one `error:` line.
"""

from __future__ import annotations

import argparse
import socket
import sys
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
    from app.jobs.store import JobsFolderBusyError

    settings = settings_with(host=args.host, port=args.port, preset=args.preset)
    app = create_app(settings)
    try:
        app.state.jobs.claim()
    except JobsFolderBusyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        listener = _listen(settings.host, settings.port)
    except OSError as error:
        app.state.jobs.release()
        print(f"error: cannot listen on {settings.host}:{settings.port}: {error.strerror or error} (another "
              "server there? choose another --port)", file=sys.stderr)
        return 1
    # app.access logs each request once, with its request id; uvicorn's own access log would repeat it.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, **UVICORN_OPTIONS)
    with listener:
        uvicorn.Server(config).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (uvicorn binds only after the app's start-up has run; a taken port then
    aborted a server whose start-up had begun)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.set_inheritable(True)
    except OSError:
        listener.close()
        raise
    return listener

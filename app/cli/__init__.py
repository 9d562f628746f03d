"""Command-line interface, `python -m app COMMAND` or the `sharp-serve` script.

- `predict` (`app.cli.predict`): photos -> splat files on this machine, through `app.pipeline.run`.
- `render` (`app.cli.render`): a splat file -> an image or a video.
- `remote` (`app.cli.remote`): photos -> a sharp-serve server's jobs API -> files; needs no torch.
- `serve` (`app.cli.serve`): the HTTP API with uvicorn.

Building the parser imports no torch: each command loads what it needs when it runs. Usage errors (argparse's
too) print one `error:` line and exit 2; Ctrl-C prints one line and exits 130, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from app import __version__
from app.cli import predict, remote, render, serve
from app.cli.common import UsageError, print_error

INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as shells report it."""


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one `error:` line (naming the command and its `--help`), exit 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print_error(f"{message} (see: {self.prog} --help)")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m app", description="SHARP: one photo -> 3D Gaussians.")
    parser.add_argument("--version", action="version", version=f"sharp-serve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (predict, serve, remote, render):
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        level = os.environ.get("SHARP_LOG_LEVEL", "info").upper()
        logging.basicConfig(level=level if isinstance(logging.getLevelName(level), int) else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(args)
    except UsageError as error:
        print_error(str(error))
        return 2
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print(file=sys.stderr)  # end a progress bar's line
        print_error("interrupted (files already written are complete; none is left half-written)")
        return INTERRUPTED

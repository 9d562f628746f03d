"""What the commands share: the usage error (one `error:` line, exit 2), settings with the command line on
top, and the `--f-px` option's parser."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from app.errors import SharpError
from app.focal import check_f_px
from app.settings import Settings


class UsageError(Exception):
    """A bad option, setting or path: one `error:` line and exit status 2."""


def settings_with(**overrides: object) -> Settings:
    """Settings from the environment, with the command line's non-None options on top."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        problems = "; ".join(f"SHARP_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                             for e in error.errors())
        raise UsageError(f"invalid setting: {problems}") from None


def f_px_option(text: str) -> float:
    """`--f-px` of `predict` and `remote`: a focal length in pixels in the range `app.focal` accepts."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels, got {text!r}") from None
    try:
        check_f_px(value)
    except SharpError as error:
        raise argparse.ArgumentTypeError(error.message) from None
    return value

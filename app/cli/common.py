"""What the commands share: the usage error (one `error:` line, exit 2), settings with the command line on
top, and the parsers of `--f-px` and `--max-gaussians`."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from app.budget import MaxGaussians, parse_max_gaussians
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


def max_gaussians_option(text: str) -> MaxGaussians:
    """`--max-gaussians` of `predict`, `remote` and `render`: a count (``100000``) or a fraction (``0.25``);
    the count it may not exceed is checked once the model (or the scene) is known."""
    try:
        return parse_max_gaussians(text)
    except SharpError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def gaussians_kept(num_gaussians: int, num_predicted: int) -> str:
    """The summary lines' count: ``131,072 Gaussians``, or ``32,768 of 131,072 Gaussians`` under a budget."""
    if num_gaussians == num_predicted:
        return f"{num_gaussians:,} Gaussians"
    return f"{num_gaussians:,} of {num_predicted:,} Gaussians"

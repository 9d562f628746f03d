"""What the commands share: the usage error (one `error:` line, exit 2), the output folder that a failed run
does not leave behind, progress lines, settings with the command line on top, and the parsers of `--f-px`
and `--max-gaussians`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from app.budget import MaxGaussians, parse_max_gaussians
from app.errors import SharpError
from app.focal import check_f_px
from app.settings import Settings


class UsageError(Exception):
    """A bad option, setting or path: one `error:` line and exit status 2."""


@contextmanager
def output_folder(path: Path) -> Iterator[Path]:
    """The output directory `path`, created if missing (with its parents) and checked writable; if it was
    created here and the run leaves it empty (it failed, or was interrupted, before writing a file), it is
    removed again on the way out, with the parents made for it: a failed run leaves no folder behind.

    Raises:
        UsageError: `path` is a file, cannot be created, or is not writable.
    """
    if path.exists() and not path.is_dir():
        raise UsageError(f"-o {path} is a file; give a directory to write the outputs into")
    made = [folder for folder in (path, *path.parents) if not folder.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output directory {path}: {error.strerror or error}") from None
    try:
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"the output directory {path} is not writable")
        yield path
    finally:
        for folder in made:  # innermost first; stops at the first one holding something
            try:
                folder.rmdir()
            except OSError:
                break


def duration(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``: a progress line's elapsed time or time left."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of `total` steps: ``3/72, 0:41 elapsed, 15:22 left`` (the time left from the mean step so far).

    `plain_line(done)` says when a periodic plain line is due where no bar can be redrawn (a log, a pipe): at
    every tenth of the steps, and at least once a minute."""

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.start = time.monotonic()
        self.last_line = self.start
        self.last_tenth = 0

    def status(self, done: int, total: int | None = None) -> str:
        """``k/n, E elapsed, L left`` after `done` steps of `total` (default: the one given at the start)."""
        if total is not None:
            self.total = max(1, total, done)
        elapsed = time.monotonic() - self.start
        left = elapsed / done * (self.total - done) if done else None
        return (f"{done}/{self.total}, {duration(elapsed)} elapsed"
                + (f", {duration(left)} left" if left is not None else ""))

    def plain_line(self, done: int) -> bool:
        """Whether a plain progress line is due after `done` steps (and, if so, notes that one is printed)."""
        tenth = 10 * done // self.total
        now = time.monotonic()
        if tenth > self.last_tenth or now - self.last_line >= 60.0 or done == self.total:
            self.last_tenth, self.last_line = tenth, now
            return True
        return False


def print_error(message: str) -> None:
    """The one `error:` line on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


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

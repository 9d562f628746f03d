"""Writing files so that a failure never leaves a partial one: the one atomic-write helper of the package.

Used for every output the service stores (encoded scenes, job state and results, renders) and by the
checkpoint download (its resume metadata, and the directory sync after the checkpoint is renamed into place).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], blocks: Iterable[bytes | bytearray | memoryview]) -> Path:
    """Write `blocks` to `path` through a temporary file in the same directory, renamed into place only
    once complete: a failure never leaves a partial file, nor touches an existing one. Returns the path."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        with os.fdopen(descriptor, "wb") as stream:
            for block in blocks:
                stream.write(block)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable across a power cut (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

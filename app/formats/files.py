"""Writing encoded files safely."""

from __future__ import annotations

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

"""Small file helpers shared by the download, checksum and lock modules."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def part_path(dest: Path) -> Path:
    """Where the bytes of a download to `dest` go until it is complete."""
    return dest.with_name(dest.name + ".part")


def meta_path(dest: Path) -> Path:
    """The `.part`'s metadata: the URL, announced size and HTTP validator (for resuming)."""
    return dest.with_name(dest.name + ".part.json")


def lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def sidecar_path(path: Path) -> Path:
    """The recorded SHA-256 of `path`."""
    return path.with_name(path.name + ".sha256")


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, or None if it does not exist: tells whether it was replaced."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path, value: dict[str, Any], *, best_effort: bool = False) -> None:
    """Replace `path` atomically; with `best_effort`, a failure is only logged."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError as exc:
        unlink(tmp)
        if not best_effort:
            raise
        logger.debug("Could not write %s: %s", path, exc)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

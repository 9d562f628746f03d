"""The download lock: of the processes sharing a cache, one downloads and the others wait for it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def download_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive `filelock.FileLock` on `path` while the block runs; yields whether we waited.

    The lock file is deleted when the block ends (success or failure), *before* the lock is
    released, so no `.lock` file is left behind. Deleting it while still holding the lock is what
    keeps this safe: filelock (>= 3.20.4) checks after each `flock` that the file it locked still
    has a name (`st_nlink > 0`) and otherwise tries again on the file now at `path`, so a waiter
    that opened the deleted file can never hold it while another process holds the new one.
    Where the file system cannot lock at all, a warning is logged and the block runs unlocked.
    """
    lock = FileLock(path)
    waited = locked = False
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            logger.info("Waiting for another process to finish downloading (lock %s).", path)
            waited = True
            lock.acquire()
        locked = True
    except (OSError, NotImplementedError) as exc:  # e.g. a network file system without flock
        logger.warning("Cannot lock %s (%s); downloading without a lock.", path, exc)
    try:
        yield waited
    finally:
        if locked:
            path.unlink(missing_ok=True)
            lock.release()

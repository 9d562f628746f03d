"""Downloading the checkpoint into the cache, so that the cached file is always complete.

Bytes go to `<dest>.part` (see `transfer.py`). Only a `.part` that passes every check is
fsync'ed and renamed onto `dest` (replacing any file there):

1. its size equals the size the server announced, when it announced one;
2. it is a complete zip archive holding a `data.pkl`, as every `torch.save` file is: the
   end-of-central-directory record at the end of the file is present and the central directory
   reads (cheap: only the end of the file is read). This is what catches a body cut short when
   the server sent no Content-Length (a close-delimited or chunked body);
3. its SHA-256 equals `sha256`, if one is given.

A failed check deletes the `.part` and raises; an existing `dest` is never touched. A lock
(`lock.py`) serialises the processes sharing the cache: the second one waits, then uses the
first one's file. The legacy, pre-zip `torch.save` format cannot be checked, so it is refused for
downloads (download such a file yourself and point SHARP_CHECKPOINT at it).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from app.files import fsync_directory
from app.weights.checksum import hash_file, normalize_sha256, sidecar_path, verify_sha256, write_sidecar
from app.weights.errors import CheckpointDownloadError, ChecksumMismatchError
from app.weights.lock import download_lock
from app.weights.transfer import Fetched, fetch

logger = logging.getLogger(__name__)


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
    retries: int = 3,
) -> Path:
    """Download `url` to `dest` atomically, resuming an earlier partial download; returns `dest`.

    `timeout_s` is the longest wait for any single network operation, in seconds; network errors
    are retried `retries` times with exponential backoff. If another process is downloading to
    `dest`, this call waits and then uses the file that process produced. Raises
    `CheckpointDownloadError` or `ChecksumMismatchError`; `dest` is left as it was on failure.
    """
    expected = normalize_sha256(sha256) if sha256 else None
    return download(
        url, Path(dest).expanduser(), sha256=expected, progress=progress, timeout_s=timeout_s, retries=retries
    )


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    progress: bool,
    reuse_existing: bool = False,
    timeout_s: float = 60.0,
    retries: int = 3,
) -> Path:
    """`download_file` with a normalised `sha256`; `reuse_existing` returns a file already at `dest`."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointDownloadError(
            f"Cannot create the directory {dest.parent} to download {url} into ({exc}). "
            "Set SHARP_CACHE_DIR to a writable directory.",
            url=url,
        ) from exc
    before = stat_key(dest)
    with download_lock(dest.with_name(dest.name + ".lock")) as waited:
        now = stat_key(dest)
        if now is not None and (reuse_existing or (waited and now != before)):
            logger.info("Using %s, downloaded by another process.", dest)
            if sha256:
                verify_sha256(dest, sha256)
            return dest

        part, meta = part_path(dest), meta_path(dest)
        resuming = f" (resuming {part.name})" if part.is_file() else ""
        logger.info("Downloading %s to %s%s.", url, dest, resuming)
        fetched = fetch(url, part, meta, label=dest.name, progress=progress, timeout_s=timeout_s, retries=retries)
        _check_complete(url, dest, part, meta, fetched)
        digest = hash_file(part) if sha256 else None
        if sha256 and digest != sha256:
            unlink(part, meta)
            raise ChecksumMismatchError(
                f"The file downloaded from {url} has SHA-256 {digest}, expected {sha256} "
                f"(SHARP_CHECKPOINT_SHA256). The downloaded copy was deleted and {dest} was left as it "
                "was. Check that SHARP_CHECKPOINT_SHA256 belongs to SHARP_CHECKPOINT_URL, then retry."
            )
        os.replace(part, dest)
        fsync_directory(dest.parent)
        unlink(meta, sidecar_path(dest))
        if digest:
            write_sidecar(dest, digest)
        logger.info("Downloaded %s to %s.", url, dest)
    return dest


def part_path(dest: Path) -> Path:
    """Where the bytes of a download to `dest` go until it is complete."""
    return dest.with_name(dest.name + ".part")


def meta_path(dest: Path) -> Path:
    """The `.part`'s metadata: the URL, announced size and HTTP validator (for resuming)."""
    return dest.with_name(dest.name + ".part.json")


def stat_key(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, or None if it does not exist: tells whether it was replaced."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def unlink(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def archive_problem(path: Path) -> str | None:
    """Why `path` is not a complete `torch.save` zip archive, or None if it is one.

    Reads only the end-of-central-directory record and the central directory (at the end of the
    file): a file cut short has lost them.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        return f"not a complete zip archive ({exc}: its end-of-central-directory record is missing or damaged)"
    except (OSError, ValueError, EOFError) as exc:
        return f"not a readable zip archive ({type(exc).__name__}: {exc})"
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return f"a zip archive without a data.pkl ({len(names)} entries), so not a torch.save checkpoint"
    return None


def _check_complete(url: str, dest: Path, part: Path, meta: Path, fetched: Fetched) -> None:
    """Raise `CheckpointDownloadError` (deleting the `.part`) unless the `.part` is a whole checkpoint."""
    size = part.stat().st_size
    if fetched.total is not None and size != fetched.total:
        problem = f"{size} bytes long, not the {fetched.total} announced"
        cause, retryable = f"The file is {problem}. Retrying may help.", True
    elif (problem := archive_problem(part)) is None:
        return
    elif fetched.total is None:
        cause, retryable = (
            f"The server announced no size and the body ended after {size} bytes, but the file is {problem}: "
            "the transfer was probably cut short. Retrying may help.",
            True,
        )
    elif fetched.resumed:
        cause, retryable = f"The file, assembled from a resumed download, is {problem}. Retrying may help.", True
    else:
        cause, retryable = (
            f"The server sent all {size} bytes it announced, but the file is {problem}: it is not a PyTorch "
            "checkpoint (or it is corrupt on the server), so retrying will not help. Check SHARP_CHECKPOINT_URL.",
            False,
        )
    unlink(part, meta)
    raise CheckpointDownloadError(
        f"Downloading {url} did not give a complete checkpoint. {cause} The incomplete file was deleted and "
        f"{dest} was left as it was. You can also download the checkpoint yourself and set SHARP_CHECKPOINT "
        "to its path.",
        url=url,
        reason=problem,
        retryable=retryable,
    )

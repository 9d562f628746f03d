"""Which checkpoint file to load: an explicit path, else the cached copy, else a fresh download."""

from __future__ import annotations

import hashlib
import urllib.parse
from pathlib import Path

from app.weights.checksum import normalize_sha256, verify_sha256
from app.weights.download import download, part_path
from app.weights.errors import CheckpointDownloadError, CheckpointNotAvailableError


def checkpoint_filename(url: str) -> str:
    """The file name a URL is cached under: the (percent-decoded) basename of its path.

    Query and fragment are ignored. A URL whose path has no usable basename gets
    `checkpoint-<first 16 hex digits of sha256(url)>.pt`, so the name is still stable.
    """
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path).replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", ".."):
        return f"checkpoint-{hashlib.sha256(url.encode()).hexdigest()[:16]}.pt"
    return name


def cached_checkpoint_path(url: str, cache_dir: Path) -> Path:
    """Where the checkpoint downloaded from `url` lives in `cache_dir`."""
    return Path(cache_dir).expanduser() / checkpoint_filename(url)


def first_start_help(url: str, dest: Path) -> str:
    """What to do when the checkpoint is not cached and cannot be downloaded now (one paragraph)."""
    return (
        f"To fix this, either download {url} and save it as {dest}; or set "
        "SHARP_CHECKPOINT=/path/to/file.pt to use a checkpoint file you already have; or set "
        "SHARP_PRESET=tiny to try the service without the download (a small test network with synthetic "
        "weights: same API and file formats, meaningless Gaussians)."
    )


def resolve_checkpoint(
    explicit: Path | None,
    *,
    url: str,
    cache_dir: Path,
    sha256: str | None = None,
    offline: bool = False,
    progress: bool = True,
) -> Path:
    """The local checkpoint file to load: `explicit` > cached copy of `url` > fresh download.

    If `sha256` is given, the chosen file is verified (the digest is remembered in a
    `<file>.sha256` sidecar, so later calls skip the hashing while the file is unchanged).
    `offline` forbids any network access. Raises `CheckpointNotAvailableError` (nothing cached and
    no download possible: the message says what to fetch, where to save it and the alternatives;
    `retryable` only when the host was unreachable), `CheckpointDownloadError` or
    `ChecksumMismatchError`.
    """
    expected = normalize_sha256(sha256) if sha256 else None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise CheckpointNotAvailableError(
                f"The checkpoint path {path} (SHARP_CHECKPOINT) {what}. Point SHARP_CHECKPOINT at the "
                f"checkpoint file, or unset it to use {cached_checkpoint_path(url, cache_dir)}, "
                f"downloaded from {url} if not there yet."
            )
        if expected:
            verify_sha256(path, expected)
        return path

    dest = cached_checkpoint_path(url, cache_dir)
    if dest.is_file():
        if expected:
            verify_sha256(dest, expected)
        return dest

    if offline:
        part = part_path(dest)
        partial = (
            f" A partial download ({part.stat().st_size / 1e6:.0f} MB) at {part} will be resumed "
            "once downloads are allowed (unset SHARP_OFFLINE)."
            if part.is_file()
            else ""
        )
        raise CheckpointNotAvailableError(
            f"No SHARP checkpoint is cached at {dest} and downloads are disabled (SHARP_OFFLINE=1). "
            f"{first_start_help(url, dest)} Or unset SHARP_OFFLINE to download it automatically.{partial}",
            retryable=False,
        )

    try:
        return download(url, dest, sha256=expected, progress=progress, reuse_existing=True)
    except CheckpointDownloadError as exc:
        if not exc.unreachable:
            raise
        raise CheckpointNotAvailableError(
            f"Cannot reach {url} to download the SHARP checkpoint ({exc.reason}) and no copy is cached at "
            f"{dest}. Retrying may help once the network is back. {first_start_help(url, dest)} "
            "(SHARP_OFFLINE=1 skips download attempts.)",
            retryable=True,
        ) from exc

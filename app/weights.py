"""Finding, downloading, loading and checking the SHARP checkpoint.

Resolution order (`resolve_checkpoint`): an explicit path (`SHARP_CHECKPOINT`), else the cached
copy `<SHARP_CACHE_DIR>/<basename of SHARP_CHECKPOINT_URL>`, else a download of
`SHARP_CHECKPOINT_URL` into that cache path (unless `SHARP_OFFLINE`).

Downloads are crash-safe: bytes go to `<dest>.part` (with `<dest>.part.json` recording the URL,
size and HTTP validator), which is fsync'ed and renamed onto `dest` only when complete and, if a
SHA-256 is given, verified. A later call resumes a `.part` with an HTTP Range request. A lock file
`<dest>.lock` (flock) serialises processes sharing the cache, so the second one waits and then
uses the first one's file. A file already at `dest` is never modified by a failed download.

Cold load without copying the ~2.8 GB of weights: build the network on the meta device, load the
checkpoint with `load_state_dict(path, mmap=True)` and call `load_weights(model, sd, assign=True)`.
The parameters then *are* the memory-mapped tensors: the load takes well under a second and the
pages are read from disk on first use. Replacing the file with `os.replace` (as downloads do) is
safe while a process has it mapped; truncating or rewriting it in place is not.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; downloads then run unlocked
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_HASH_CHUNK_BYTES = 8 << 20
_BACKOFF_BASE_S = 1.0
"""Delay before the first retry, in seconds; doubled for each later one."""
_BACKOFF_MAX_S = 30.0
_RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
_USER_AGENT = "sharp-serve (python-urllib)"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_LISTED = 5
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------- errors


class CheckpointError(RuntimeError):
    """Base class: `code` is a stable machine-readable tag, `str(e)` a one-paragraph explanation."""

    code: str = "checkpoint_error"

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class CheckpointNotAvailableError(CheckpointError):
    """No checkpoint file can be had: offline or unreachable with nothing cached, or a missing path."""

    code = "checkpoint_not_available"


class CheckpointDownloadError(CheckpointError):
    """The download failed (HTTP error, connection errors after retries, truncated transfer)."""

    code = "download_failed"

    def __init__(self, message: str, *, url: str = "", reason: str = "", unreachable: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason
        """The last failure in a few words, e.g. "HTTP 404 Not Found"."""
        self.unreachable = unreachable
        """True when no attempt got any HTTP response (DNS, refused connection, connect timeout)."""


class ChecksumMismatchError(CheckpointError):
    """A file's SHA-256 differs from the expected one."""

    code = "checksum_mismatch"


class CheckpointFormatError(CheckpointError):
    """The file is not a readable PyTorch state_dict."""

    code = "invalid_checkpoint"


class CheckpointMismatchError(CheckpointError):
    """The state_dict's keys or shapes do not match the model's."""

    code = "checkpoint_mismatch"

    def __init__(
        self,
        message: str,
        *,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing or []
        self.unexpected = unexpected or []
        self.mismatched = mismatched or []
        """(key, shape in the checkpoint, shape the model expects)."""


class _RetryableError(Exception):
    def __init__(self, message: str, *, responded: bool) -> None:
        super().__init__(message)
        self.responded = responded


# ----------------------------------------------------------------------------------------- resolution


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

    If `sha256` is given, the chosen file is verified. Hashing ~2.8 GB takes seconds, so the
    digest is recorded in a sidecar `<file>.sha256` keyed by the file's size and mtime, and later
    calls skip the hashing while the file is unchanged (the sidecar is skipped silently if the
    directory is read-only). `offline` forbids any network access. Raises
    `CheckpointNotAvailableError` (with what to download and where to put it),
    `CheckpointDownloadError` or `ChecksumMismatchError`.
    """
    expected = _normalize_sha256(sha256) if sha256 else None
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
        part = _part_path(dest)
        partial = (
            f" A partial download ({part.stat().st_size / 1e6:.0f} MB) at {part} will be resumed "
            "once downloads are allowed."
            if part.is_file()
            else ""
        )
        raise CheckpointNotAvailableError(
            f"No SHARP checkpoint is cached at {dest} and downloads are disabled (SHARP_OFFLINE). "
            f"Download {url} and save it as {dest}, or set SHARP_CHECKPOINT to the path of a local "
            f"copy, or unset SHARP_OFFLINE to download it automatically.{partial}"
        )

    try:
        return _download(url, dest, sha256=expected, progress=progress, reuse_existing=True)
    except CheckpointDownloadError as exc:
        if not exc.unreachable:
            raise
        raise CheckpointNotAvailableError(
            f"Cannot reach {url} to download the SHARP checkpoint ({exc.reason}) and no copy is cached "
            f"at {dest}. Download {url} on a machine with internet access and save it as {dest}, or set "
            "SHARP_CHECKPOINT to the path of a local copy (SHARP_OFFLINE=1 skips download attempts)."
        ) from exc


# ------------------------------------------------------------------------------------------- download


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

    Bytes go to `<dest>.part`; only a complete transfer (Content-Length checked when given) whose
    SHA-256 matches `sha256` (if given) is fsync'ed and renamed onto `dest`, replacing any file
    there. Failures leave `dest` untouched; a checksum mismatch also deletes the `.part`.
    `timeout_s` is the longest wait for any single network operation, in seconds. Connection
    errors, truncated bodies and HTTP 408/429/5xx are retried `retries` times with exponential
    backoff (1 s, 2 s, 4 s, ...), each retry resuming where the last one stopped. If another
    process holds `<dest>.lock` this call waits, and uses the file that process produced.
    """
    expected = _normalize_sha256(sha256) if sha256 else None
    return _download(
        url,
        Path(dest).expanduser(),
        sha256=expected,
        progress=progress,
        timeout_s=timeout_s,
        retries=retries,
        reuse_existing=False,
    )


def _download(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    progress: bool,
    reuse_existing: bool,
    timeout_s: float = 60.0,
    retries: int = 3,
) -> Path:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointDownloadError(
            f"Cannot create the directory {dest.parent} to download {url} into ({exc}). "
            "Set SHARP_CACHE_DIR to a writable directory.",
            url=url,
        ) from exc
    before = _stat_key(dest)
    with _exclusive_lock(_lock_path(dest)) as waited:
        now = _stat_key(dest)
        if now is not None and (reuse_existing or (waited and now != before)):
            logger.info("Using %s, downloaded by another process.", dest)
            if sha256:
                verify_sha256(dest, sha256)
            return dest

        part, meta = _part_path(dest), _meta_path(dest)
        resuming = f" (resuming {part.name})" if part.is_file() else ""
        logger.info("Downloading %s to %s%s.", url, dest, resuming)
        _fetch_to_part(
            url, part, meta, label=dest.name, progress=progress, timeout_s=timeout_s, retries=retries
        )
        digest = _hash_file(part, label=part.name) if sha256 else None
        if sha256 and digest != sha256:
            _unlink(part, meta)
            raise ChecksumMismatchError(
                f"The file downloaded from {url} has SHA-256 {digest}, expected {sha256} "
                f"(SHARP_CHECKPOINT_SHA256). The downloaded copy was deleted and {dest} was left as it "
                "was. Check that SHARP_CHECKPOINT_SHA256 belongs to SHARP_CHECKPOINT_URL, then retry."
            )
        os.replace(part, dest)
        _fsync_dir(dest.parent)
        _unlink(meta, _sidecar_path(dest))
        if digest:
            _write_sidecar(dest, digest)
        logger.info("Downloaded %s to %s.", url, dest)
    return dest


def _fetch_to_part(
    url: str, part: Path, meta: Path, *, label: str, progress: bool, timeout_s: float, retries: int
) -> None:
    """Make `part` a complete copy of `url`, in up to `retries + 1` attempts."""
    responded, last = False, ""
    attempts = max(0, retries) + 1
    for attempt in range(attempts):
        if attempt:
            delay = min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S)
            logger.info("Retrying the download of %s in %.0f s.", url, delay)
            time.sleep(delay)
        try:
            _attempt(url, part, meta, label=label, progress=progress, timeout_s=timeout_s)
            return
        except _RetryableError as exc:
            responded = responded or exc.responded
            last = str(exc)
            logger.warning("Download attempt %d/%d of %s failed: %s", attempt + 1, attempts, url, last)
    kept = (
        f" The {part.stat().st_size} bytes received so far are kept in {part} and the next attempt "
        "resumes from there."
        if part.is_file()
        else ""
    )
    raise CheckpointDownloadError(
        f"Downloading {url} failed after {attempts} attempt(s): {last}.{kept} Check the network "
        "connection and SHARP_CHECKPOINT_URL, or download the file yourself and set SHARP_CHECKPOINT.",
        url=url,
        reason=last,
        unreachable=not responded,
    )


def _attempt(url: str, part: Path, meta: Path, *, label: str, progress: bool, timeout_s: float) -> None:
    """One HTTP request that extends `part` towards completion; raises `_RetryableError`."""
    info = _resumable_info(part, meta, url)
    offset = part.stat().st_size if info is not None else 0
    if info is not None and info.get("size") == offset:
        return
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if info is not None:
        headers["Range"] = f"bytes={offset}-"
        if info.get("validator"):
            headers["If-Range"] = info["validator"]
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            _, _, total = _parse_content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return
            logger.info("Server refused to resume %s at byte %d; starting over.", url, offset)
            _unlink(part, meta)
            restart = True
        elif exc.code in _RETRYABLE_HTTP:
            raise _RetryableError(f"HTTP {exc.code} {exc.reason}", responded=True) from exc
        else:
            raise CheckpointDownloadError(
                f"Downloading {url} failed: HTTP {exc.code} {exc.reason}. Check SHARP_CHECKPOINT_URL, or "
                "download the checkpoint yourself and set SHARP_CHECKPOINT to its path.",
                url=url,
                reason=f"HTTP {exc.code} {exc.reason}",
            ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _RetryableError(_describe_network_error(exc), responded=False) from exc
    else:
        restart = False
    if not restart:
        with response:
            plan = _body_plan(response, url=url, part=part, meta=meta, info=info, offset=offset)
            if plan is not None:
                offset, expected_total, mode = plan
                out = _open_for_writing(part, mode, url)
                with out:
                    bar = _Progress(label, total=expected_total, initial=offset, enabled=progress)
                    written = _stream(response, out, bar)
                    out.flush()
                    os.fsync(out.fileno())
                    bar.close()
        restart = plan is None
    if restart:
        # Without a .part no Range header is sent, so this recursion happens at most once.
        _attempt(url, part, meta, label=label, progress=progress, timeout_s=timeout_s)
        return

    size = offset + written
    if expected_total is not None and size < expected_total:
        raise _RetryableError(f"transfer truncated at {size} of {expected_total} bytes", responded=True)
    if expected_total is not None and size > expected_total:
        _unlink(part, meta)
        raise CheckpointDownloadError(
            f"Downloading {url} failed: received {size} bytes, more than the {expected_total} announced.",
            url=url,
        )
    if expected_total is None:
        _write_json(meta, {**(_read_json(meta) or {"url": url}), "size": size})


def _body_plan(
    response: http.client.HTTPResponse,
    *,
    url: str,
    part: Path,
    meta: Path,
    info: dict[str, Any] | None,
    offset: int,
) -> tuple[int, int | None, str] | None:
    """(offset the body starts at, expected final size or None, file mode), or None to start over."""
    length = _int_or_none(response.headers.get("Content-Length"))
    if response.status == 206 and info is not None:
        start, _, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset or (info.get("size") is not None and total not in (None, info["size"])):
            logger.info(
                "Server answered a resume of %s at byte %d with Content-Range %r; starting over.",
                url,
                offset,
                response.headers.get("Content-Range"),
            )
            _unlink(part, meta)
            return None
        return offset, total if total is not None else (offset + length if length is not None else None), "ab"
    if response.status == 200:
        if offset:
            logger.info("Server sent all of %s instead of resuming at byte %d; starting over.", url, offset)
        validator = response.headers.get("ETag")
        if not validator or validator.startswith("W/"):
            validator = response.headers.get("Last-Modified")
        try:
            _write_json(meta, {"url": url, "size": length, "validator": validator})
        except OSError as exc:
            raise _write_error(meta, exc, url) from exc
        return 0, length, "wb"
    raise CheckpointDownloadError(
        f"Downloading {url} failed: unexpected HTTP status {response.status} {response.reason}.",
        url=url,
        reason=f"HTTP {response.status}",
    )


def _open_for_writing(part: Path, mode: str, url: str) -> IO[bytes]:
    try:
        return part.open(mode)
    except OSError as exc:
        raise _write_error(part, exc, url) from exc


def _write_error(path: Path, exc: OSError, url: str = "") -> CheckpointDownloadError:
    return CheckpointDownloadError(
        f"Cannot write {path} ({exc}). Free some disk space, or set SHARP_CACHE_DIR to a writable "
        "directory with room for the checkpoint.",
        url=url,
        reason=str(exc),
    )


def _stream(response: http.client.HTTPResponse, out: IO[bytes], bar: _Progress) -> int:
    """Copy the response body into `out`; returns the bytes written."""
    written = 0
    while True:
        try:
            chunk = response.read(_CHUNK_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            bar.close()
            raise _RetryableError(
                f"connection lost after {bar.done} bytes ({_describe_network_error(exc)})", responded=True
            ) from exc
        if not chunk:
            return written
        try:
            out.write(chunk)
        except OSError as exc:
            bar.close()
            raise _write_error(Path(out.name), exc) from exc
        written += len(chunk)
        bar.update(len(chunk))


def _resumable_info(part: Path, meta: Path, url: str) -> dict[str, Any] | None:
    """The metadata of a `.part` that can be resumed, else None (and any stale `.part` is removed)."""
    if not part.is_file():
        _unlink(meta)
        return None
    info = _read_json(meta)
    size = part.stat().st_size
    if info is None or info.get("url") != url or size == 0 or size > (info.get("size") or math.inf):
        _unlink(part, meta)
        return None
    return info


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first byte, last byte, total size) of a Content-Range header; None where absent or `*`."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return _int_or_none(start), _int_or_none(end), _int_or_none(total)


def _describe_network_error(exc: BaseException) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    text = str(reason) or type(reason).__name__
    return f"{type(reason).__name__}: {text}" if type(reason).__name__ not in text else text


# ------------------------------------------------------------------------------------------- progress


class _Progress:
    """Download progress on stderr: a redrawn bar on a TTY, else an INFO log line every 10 %.

    Sizes are shown in MB (10^6 bytes); speed counts only this transfer's bytes.
    """

    def __init__(self, label: str, *, total: int | None, initial: int, enabled: bool) -> None:
        self.label, self.total, self.done = label, total, initial
        self.enabled = enabled
        self.tty = enabled and getattr(sys.stderr, "isatty", lambda: False)()
        self.start, self.initial = time.monotonic(), initial
        self.last_draw = 0.0
        self.next_log = self._next_step(initial)
        self.closed = False

    def _next_step(self, done: int) -> int:
        step = self.total / 10 if self.total else 100e6
        return int((done // step + 1) * step)

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and (now - self.last_draw >= 0.1 or self.done == self.total):
            self.last_draw = now
            sys.stderr.write("\r" + self._line(now, bar=True))
            sys.stderr.flush()
        elif not self.tty and self.done >= self.next_log:
            self.next_log = self._next_step(self.done)
            logger.info("Downloading %s", self._line(now, bar=False))

    def _line(self, now: float, *, bar: bool) -> str:
        elapsed = max(now - self.start, 1e-9)
        speed = (self.done - self.initial) / elapsed
        if not self.total:
            return f"{self.label}: {self.done / 1e6:,.1f} MB, {speed / 1e6:.1f} MB/s"
        fraction = min(self.done / self.total, 1.0)
        eta = (self.total - self.done) / speed if speed > 0 else math.inf
        eta_text = "?" if math.isinf(eta) else f"{int(eta) // 60}:{int(eta) % 60:02d}"
        drawn = f"[{'#' * int(fraction * 30):<30}] " if bar else ""
        return (
            f"{self.label}: {drawn}{fraction:4.0%} {self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB, "
            f"{speed / 1e6:.1f} MB/s, ETA {eta_text}"
        )

    def close(self) -> None:
        if self.tty and not self.closed:
            sys.stderr.write("\r" + self._line(time.monotonic(), bar=True) + "\n")
            sys.stderr.flush()
        self.closed = True


# ------------------------------------------------------------------------------------------- checksum


def _normalize_sha256(value: str) -> str:
    digest = value.strip().lower().removeprefix("sha256:")
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"SHARP_CHECKPOINT_SHA256 must be 64 hexadecimal digits, got {value!r}.")
    return digest


def file_sha256(path: Path, *, use_sidecar: bool = True) -> str:
    """SHA-256 (hex) of a file, read from / recorded in the sidecar `<path>.sha256` if `use_sidecar`.

    The sidecar holds the digest with the file's size (bytes) and mtime (ns); it is trusted only
    while both still match, so a replaced or modified file is hashed again.
    """
    path = Path(path)
    st = path.stat()
    if use_sidecar:
        record = _read_json(_sidecar_path(path))
        if record and record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns:
            digest = record.get("sha256")
            if isinstance(digest, str) and _SHA256_HEX.fullmatch(digest):
                return digest
    digest = _hash_file(path, label=path.name)
    if use_sidecar:
        _write_sidecar(path, digest)
    return digest


def verify_sha256(path: Path, sha256: str) -> None:
    """Raise `ChecksumMismatchError` unless the file's SHA-256 is `sha256` (uses the sidecar cache)."""
    expected = _normalize_sha256(sha256)
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path} has SHA-256 {actual}, expected {expected} (SHARP_CHECKPOINT_SHA256). The file was "
            "not modified. Delete it to download a fresh copy, or correct SHARP_CHECKPOINT_SHA256."
        )


def _hash_file(path: Path, *, label: str) -> str:
    started = time.monotonic()
    hasher = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    with path.open("rb") as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    elapsed = time.monotonic() - started
    if elapsed > 1.0:
        logger.info("Computed the SHA-256 of %s in %.1f s.", label, elapsed)
    return hasher.hexdigest()


def _write_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    _write_json(
        _sidecar_path(path),
        {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        best_effort=True,
    )


# -------------------------------------------------------------------------------------- files & locks


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def _lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, Any], *, best_effort: bool = False) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        if not best_effort:
            raise
        logger.debug("Could not write %s: %s", path, exc)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if needed); yields whether we had to wait."""
    if fcntl is None:  # pragma: no cover
        yield False
        return
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        waited = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("Waiting for another process to finish downloading (lock %s).", path)
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            # Some network filesystems do not support flock.
            logger.warning("Cannot lock %s (%s); downloading without a lock.", path, exc)
        yield waited
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------- loading


def load_state_dict(
    path: Path, *, mmap: bool = True, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a state_dict with `torch.load(weights_only=True)`.

    With `mmap` the tensors are views of the memory-mapped file: loading costs almost nothing and
    pages are read on first use (combine with `load_weights(..., assign=True)` into a model built on
    the meta device for a cold load without copying). Files in the legacy, pre-zip format cannot be
    mapped and are read fully instead. A dict wrapping the weights under "state_dict" or "model" is
    unwrapped. Raises `CheckpointFormatError` naming the file if it cannot be read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotAvailableError(f"The checkpoint file {path} does not exist.")
    try:
        with path.open("rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
    except OSError as exc:
        raise CheckpointFormatError(f"Cannot read the checkpoint file {path}: {exc}.") from exc
    if mmap and not is_zip:
        logger.info("%s uses the legacy torch.save format; loading it without mmap.", path)
        mmap = False
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        summary = " ".join(str(exc).split())
        if len(summary) > 300:
            summary = summary[:300] + "..."
        raise CheckpointFormatError(
            f"{path} is not a loadable PyTorch checkpoint ({type(exc).__name__}: {summary}). It may be "
            "truncated or corrupt: delete it to download it again, or point SHARP_CHECKPOINT at a "
            "state_dict saved with torch.save."
        ) from exc
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    def is_tensor_dict(value: object) -> bool:
        return (
            isinstance(value, Mapping)
            and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
        )

    if is_tensor_dict(obj):
        return dict(obj)  # type: ignore[call-overload]
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:_MAX_LISTED]) or "none"
        raise CheckpointFormatError(
            f"{path} holds a dict that is not a state_dict (top-level keys: {keys}) and has no tensor "
            "dict under 'state_dict' or 'model'. Point SHARP_CHECKPOINT at the SHARP model's state_dict."
        )
    raise CheckpointFormatError(
        f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors). Point "
        "SHARP_CHECKPOINT at the SHARP model's state_dict."
    )


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Raise `CheckpointMismatchError` unless `state_dict` has exactly the expected keys and shapes.

    The message gives the counts and the first few missing keys, unexpected keys and shape
    mismatches; the error's `missing`, `unexpected` and `mismatched` attributes list them all.
    """
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        (key, tuple(tensor.shape), tuple(expected[key]))
        for key, tensor in state_dict.items()
        if key in expected and tuple(tensor.shape) != tuple(expected[key])
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(items: list[str]) -> str:
        shown = "; ".join(items[:_MAX_LISTED])
        return f"{shown}; ..." if len(items) > _MAX_LISTED else shown

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {listing(unexpected)}")
    if mismatched:
        shapes = [f"{key}: got {list(got)} vs expected {list(want)}" for key, got, want in mismatched]
        parts.append(f"{len(mismatched)} shape mismatch(es): {listing(shapes)}")
    raise CheckpointMismatchError(
        f"The checkpoint does not fit the model (the model has {len(expected)} tensors, the checkpoint "
        f"{len(state_dict)}). {'. '.join(parts)}. Use the checkpoint that matches the model preset "
        "(SHARP_PRESET=sharp loads the official SHARP checkpoint).",
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def load_weights(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, assign: bool = True
) -> None:
    """Check `state_dict` against the model's keys and shapes, then load it strictly.

    With `assign=True` the model's parameters become the given tensors (no copy): this is what
    makes a model built on the meta device usable, and with an mmap'ed state_dict the weights stay
    backed by the file. `assign=False` copies into the model's existing tensors (dtype/device kept).
    Tensors that are not in the state_dict (non-persistent buffers) are left as they are; a warning
    names any that are still on the meta device. Raises `CheckpointMismatchError`.
    """
    own = model.state_dict()
    check_state_dict({key: tensor.shape for key, tensor in own.items()}, state_dict)
    if not assign and any(tensor.is_meta for tensor in own.values()):
        raise ValueError("The model is on the meta device: load into it with assign=True.")
    try:
        model.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"Loading the checkpoint into the model failed: {exc}") from exc
    still_meta = meta_tensor_names(model)
    if still_meta:
        logger.warning(
            "%d model tensor(s) are still on the meta device after loading (not in the checkpoint): %s",
            len(still_meta),
            ", ".join(still_meta[:_MAX_LISTED]),
        )


def meta_tensor_names(model: torch.nn.Module) -> list[str]:
    """Names of the model's parameters and buffers (persistent or not) that are on the meta device."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, tensor in tensors if tensor.is_meta]

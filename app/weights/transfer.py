"""Fetching a URL into `<dest>.part` with httpx: HTTP Range resume, retries with exponential backoff, progress.

httpx does the HTTP (connections, redirects, proxies from the environment, chunked and close-delimited
bodies, timeouts); what it leaves to us is what no client library does: resuming. The `.part` has a
metadata file `<dest>.part.json` with the URL, the size the server announced (None if it did not) and
its validator (a strong ETag, else Last-Modified). A later attempt, in this call or a later one, asks for
the rest with `Range: bytes=<size>-` and `If-Range: <validator>`, so a file that changed on the server is
fetched whole again rather than spliced. This module only ever writes the `.part`; `download.py` decides
whether it is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.files import write_atomically
from app.weights.errors import CheckpointDownloadError
from app.weights.progress import Progress

logger = logging.getLogger(__name__)

_BACKOFF_BASE_S = 1.0
"""Delay before the first retry, in seconds; doubled for each later one."""
_BACKOFF_MAX_S = 30.0
_HEADERS = {"User-Agent": "sharp-serve (httpx)", "Accept-Encoding": "identity"}
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


def retryable_http(status: int) -> bool:
    """HTTP statuses that may go away by themselves: 408, 425, 429 and every 5xx."""
    return status in (408, 425, 429) or 500 <= status <= 599


@dataclass(frozen=True)
class Fetched:
    """What `fetch` left in the `.part`."""

    total: int | None
    """The file size the server announced (Content-Length or Content-Range), or None if it never did."""
    resumed: bool
    """True when the bytes came from more than one response (a resumed download)."""


class _Retry(Exception):
    """A failure that another attempt may not have; `responded`: some HTTP response was received."""

    def __init__(self, message: str, *, responded: bool) -> None:
        super().__init__(message)
        self.responded = responded


def fetch(url: str, part: Path, meta: Path, *, label: str, progress: bool, timeout_s: float, retries: int) -> Fetched:
    """Extend `part` until the server says the body is complete, in up to `retries + 1` attempts.

    Connection errors, timeouts, bodies shorter than announced and HTTP 408/425/429/5xx are
    retried after 1 s, 2 s, 4 s, ... (at most 30 s), each attempt resuming where the last stopped.
    Raises `CheckpointDownloadError`, retryable unless the failure was one no retry can fix.
    """
    responded, last = False, ""
    attempts = max(0, retries) + 1
    with httpx.Client(headers=_HEADERS, timeout=timeout_s, follow_redirects=True) as client:
        for attempt in range(attempts):
            if attempt:
                delay = min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S)
                logger.info("Retrying the download of %s in %.0f s.", url, delay)
                time.sleep(delay)
            try:
                return _attempt(client, url, part, meta, label=label, progress=progress)
            except _Retry as exc:
                responded = responded or exc.responded
                last = str(exc)
                # INFO: the last attempt's failure is the caller's to report (the server logs one line a retry).
                logger.info("Download attempt %d/%d of %s failed: %s", attempt + 1, attempts, url, last)
    kept = (
        f" The {part.stat().st_size} bytes received so far are kept in {part} and the next attempt "
        "resumes from there."
        if part.is_file()
        else ""
    )
    raise CheckpointDownloadError(
        f"Downloading {url} failed after {attempts} attempt(s): {last}.{kept} Retrying later may help; "
        "check the network connection and SHARP_CHECKPOINT_URL, or download the file yourself and set "
        "SHARP_CHECKPOINT to its path.",
        url=url,
        reason=last,
        retryable=True,
        unreachable=not responded,
    )


def _attempt(client: httpx.Client, url: str, part: Path, meta: Path, *, label: str, progress: bool) -> Fetched:
    # A second round happens only when the server refused to resume (the .part is deleted then).
    for _ in range(2):
        info = _resumable_info(part, meta, url)
        offset = part.stat().st_size if info is not None else 0
        if info is not None and info.get("size") == offset:
            return Fetched(total=offset, resumed=True)  # an earlier run got it all but did not finish
        headers = {}
        if info is not None:
            headers["Range"] = f"bytes={offset}-"
            if info.get("validator"):
                headers["If-Range"] = info["validator"]
        try:
            response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        except httpx.TransportError as exc:
            raise _Retry(_describe(exc), responded=False) from exc
        with contextlib.closing(response):
            if response.status_code == 416 and offset:
                if _parse_content_range(response.headers.get("Content-Range"))[2] == offset:
                    return Fetched(total=offset, resumed=True)
                logger.info("Server refused to resume %s at byte %d; starting over.", url, offset)
                _unlink(part, meta)
                continue
            if response.is_error:
                reason = f"HTTP {response.status_code} {response.reason_phrase}"
                if retryable_http(response.status_code):
                    raise _Retry(reason, responded=True)
                raise CheckpointDownloadError(
                    f"Downloading {url} failed: {reason}. Retrying will not help: check SHARP_CHECKPOINT_URL, "
                    "or download the checkpoint yourself and set SHARP_CHECKPOINT to its path.",
                    url=url,
                    reason=reason,
                )
            plan = _body_plan(response, url=url, part=part, meta=meta, info=info, offset=offset)
            if plan is None:
                continue
            start, total, mode = plan
            bar = Progress(label, total=total, initial=start, enabled=progress)
            size = start + _write_body(response, part, mode, bar)
        if total is not None and size < total:
            raise _Retry(f"transfer truncated at {size} of {total} bytes", responded=True)
        if total is not None and size > total:
            _unlink(part, meta)
            raise _Retry(f"received {size} bytes, more than the {total} announced", responded=True)
        return Fetched(total=total, resumed=start > 0)
    raise CheckpointDownloadError(
        f"Downloading {url} failed: the server refused to resume and then to send the whole file.", url=url
    )


def _body_plan(
    response: httpx.Response, *, url: str, part: Path, meta: Path, info: dict[str, Any] | None, offset: int
) -> tuple[int, int | None, str] | None:
    """(offset the body starts at, announced final size or None, file mode), or None to start over."""
    length = _int_or_none(response.headers.get("Content-Length"))
    if response.status_code == 206 and info is not None:
        start, _, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset or (info.get("size") is not None and total not in (None, info["size"])):
            logger.info("Server answered a resume of %s at byte %d with Content-Range %r; starting over.",
                        url, offset, response.headers.get("Content-Range"))
            _unlink(part, meta)
            return None
        if total is None and length is not None:
            total = offset + length
        return offset, total, "ab"
    if response.status_code == 200:
        if offset:
            logger.info("Server sent all of %s instead of resuming at byte %d; starting over.", url, offset)
        validator = response.headers.get("ETag")
        if not validator or validator.startswith("W/"):
            validator = response.headers.get("Last-Modified")
        try:
            write_atomically(meta, [json.dumps({"url": url, "size": length, "validator": validator}).encode()])
        except OSError as exc:
            raise write_error(meta, exc, url) from exc
        return 0, length, "wb"
    raise CheckpointDownloadError(
        f"Downloading {url} failed: unexpected HTTP status {response.status_code} {response.reason_phrase}.",
        url=url,
        reason=f"HTTP {response.status_code}",
    )


def _write_body(response: httpx.Response, part: Path, mode: str, bar: Progress) -> int:
    """Copy the response body, as sent (no content decoding), into `part` (fsync'ed); returns the bytes written."""
    written = 0
    try:
        out = part.open(mode)
    except OSError as exc:
        raise write_error(part, exc) from exc
    with out:
        try:
            for chunk in response.iter_raw():  # as received, so a cut connection loses nothing
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise write_error(part, exc) from exc
                written += len(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        except httpx.TransportError as exc:
            raise _Retry(f"connection lost after {bar.done} bytes ({_describe(exc)})", responded=True) from exc
        finally:
            bar.close()
    return written


def write_error(path: Path, exc: OSError, url: str = "") -> CheckpointDownloadError:
    return CheckpointDownloadError(
        f"Cannot write {path} ({exc}). Free some disk space, or set SHARP_CACHE_DIR to a writable "
        "directory with room for the checkpoint.",
        url=url,
        reason=str(exc),
    )


def _resumable_info(part: Path, meta: Path, url: str) -> dict[str, Any] | None:
    """The metadata of a `.part` that can be resumed, else None (and any stale `.part` is removed)."""
    if not part.is_file():
        _unlink(meta)
        return None
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        info = None
    size = part.stat().st_size
    if not isinstance(info, dict) or info.get("url") != url or size == 0 or size > (info.get("size") or math.inf):
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


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


def _unlink(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)

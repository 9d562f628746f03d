"""Tests for app.weights against real files and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import socket
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from app import weights
from app.weights import (
    CheckpointDownloadError,
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotAvailableError,
    ChecksumMismatchError,
    cached_checkpoint_path,
    check_state_dict,
    checkpoint_filename,
    download_file,
    load_state_dict,
    load_weights,
    resolve_checkpoint,
    transfer,
)
from app.weights.lock import download_lock

SIZE = 400_000
CUT = 150_000


def payload(size: int = SIZE, seed: int = 0) -> bytes:
    """A zip archive laid out like a `torch.save` file (downloads must be one), about `size` bytes long."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("sharp_test/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("sharp_test/data/0", random.Random(seed).randbytes(max(size - 300, 0)))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ test HTTP server


@dataclass
class Behaviour:
    """What the test server does; tests change it between calls."""

    content: bytes = field(default_factory=payload)
    etag: str | None = '"v1"'
    honor_range: bool = True
    send_length: bool = True
    """Send Content-Length; without it the body is close-delimited (HTTP/1.0) or chunked."""
    chunked: bool = False
    cut_after: int | None = None
    """Close the connection after this many body bytes (for the next `cuts` responses)."""
    cuts: int = 0
    status: int | None = None
    """Answer with this error status (for the next `status_times` requests)."""
    status_times: int = 1_000_000
    gate: threading.Event | None = None
    """If set, wait for it before answering."""
    requests: list[dict[str, str]] = field(default_factory=list)
    """Headers (lower-cased names) of every request seen, plus `path` and the `status` answered."""
    seen: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        b = self.server.behaviour
        record = {k.lower(): v for k, v in self.headers.items()} | {"path": self.path}
        b.requests.append(record)
        b.seen.set()
        if b.gate is not None:
            b.gate.wait(10)
        if b.status is not None and b.status_times > 0:
            b.status_times -= 1
            record["status"] = str(b.status)
            self.send_error(b.status)
            return
        content, start = b.content, 0
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if range_header and b.honor_range and (if_range is None or if_range == b.etag):
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match[1])
            if start >= len(content):
                record["status"] = "416"
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(content)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            record["status"] = "206"
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            record["status"] = "200"
            self.send_response(200)
        body = content[start:]
        if b.send_length:
            self.send_header("Content-Length", str(len(body)))
        if b.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Content-Type", "application/octet-stream")
        if b.etag:
            self.send_header("ETag", b.etag)
        self.end_headers()
        write = self._write_chunk if b.chunked else self.wfile.write
        if b.cut_after is not None and b.cuts > 0:
            b.cuts -= 1
            write(body[: b.cut_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        write(body)
        if b.chunked:
            self._write_chunk(b"")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    behaviour: Behaviour

    def url(self, name: str = "sharp_test.pt") -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/models/{name}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.behaviour = Behaviour()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    if srv.behaviour.gate is not None:
        srv.behaviour.gate.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _fast_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transfer, "_BACKOFF_BASE_S", 0.01)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def cut_once(server: _Server, dest: Path, cut_after: int = CUT) -> None:
    """A download of `server`'s file to `dest` that the server cuts after `cut_after` bytes: it fails (no
    retries), leaving its `.part`."""
    server.behaviour.cut_after, server.behaviour.cuts = cut_after, 1
    with pytest.raises(CheckpointDownloadError):
        download_file(server.url(), dest, progress=False, retries=0)


def leftovers(directory: Path) -> list[str]:
    """Download by-products in `directory`: lock files, partial downloads and their metadata."""
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith((".lock", ".part", ".part.json")))


# ------------------------------------------------------------------------------------------ file names


def test_checkpoint_filename_is_the_url_basename() -> None:
    url = "https://ml-site.cdn-apple.com/models/sharp/sharp_2572gikvuh.pt"
    assert checkpoint_filename(url) == "sharp_2572gikvuh.pt"
    assert checkpoint_filename("https://h/a/b%20c.pt?sig=1#x") == "b c.pt"
    assert checkpoint_filename("https://h/evil/..%2F..%2Fpasswd") == "passwd"
    fallback = checkpoint_filename("https://h/")
    assert fallback.startswith("checkpoint-") and fallback == checkpoint_filename("https://h/")
    assert cached_checkpoint_path(url, Path("/c")) == Path("/c/sharp_2572gikvuh.pt")


# ---------------------------------------------------------------------------------------------- download


def test_download_success(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "ckpt.pt"
    assert download_file(server.url(), dest, progress=False) == dest
    assert dest.read_bytes() == server.behaviour.content
    assert leftovers(tmp_path) == []
    assert len(server.behaviour.requests) == 1 and "range" not in server.behaviour.requests[0]


def test_download_with_matching_sha256_records_it(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.pt"
    download_file(server.url(), dest, sha256=sha(server.behaviour.content).upper(), progress=False)
    assert dest.read_bytes() == server.behaviour.content
    assert sha(server.behaviour.content) in dest.with_name("ckpt.pt.sha256").read_text()


def test_checksum_mismatch_creates_nothing(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.pt"
    with pytest.raises(ChecksumMismatchError) as info:
        download_file(server.url(), dest, sha256="0" * 64, progress=False)
    assert info.value.code == "checksum_mismatch" and not info.value.retryable
    assert sha(server.behaviour.content) in str(info.value)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_checksum_mismatch_leaves_existing_file_untouched(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.pt"
    old = payload(1000, seed=7)
    dest.write_bytes(old)
    stat = dest.stat()
    with pytest.raises(ChecksumMismatchError):
        download_file(server.url(), dest, sha256="0" * 64, progress=False)
    assert dest.read_bytes() == old
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert not part_of(dest).exists()


def test_interrupted_download_keeps_part_then_resumes(server: _Server, tmp_path: Path) -> None:
    b = server.behaviour
    b.cut_after, b.cuts = CUT, 1
    dest = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointDownloadError) as info:
        download_file(server.url(), dest, progress=False, retries=0)
    assert info.value.code == "checkpoint_download_failed" and "\n" not in str(info.value)
    assert info.value.retryable
    assert not dest.exists()
    assert part_of(dest).stat().st_size == CUT

    download_file(server.url(), dest, sha256=sha(b.content), progress=False, retries=0)
    assert dest.read_bytes() == b.content
    assert not part_of(dest).exists()
    assert b.requests[1]["range"] == f"bytes={CUT}-" and b.requests[1]["status"] == "206"
    assert b.requests[1]["if-range"] == '"v1"'


def test_interrupted_download_leaves_existing_file_untouched(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "ckpt.pt"
    old = payload(1000, seed=7)
    dest.write_bytes(old)
    cut_once(server, dest)
    assert dest.read_bytes() == old


def test_retry_resumes_within_one_call(server: _Server, tmp_path: Path) -> None:
    b = server.behaviour
    b.cut_after, b.cuts = CUT, 2
    dest = tmp_path / "ckpt.pt"
    download_file(server.url(), dest, progress=False, retries=2)
    assert dest.read_bytes() == b.content
    assert [r.get("range") for r in b.requests] == [None, f"bytes={CUT}-", f"bytes={2 * CUT}-"]


def test_server_ignoring_range_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    b = server.behaviour
    dest = tmp_path / "ckpt.pt"
    cut_once(server, dest)
    b.honor_range = False
    download_file(server.url(), dest, progress=False, retries=0)
    assert b.requests[1]["range"] == f"bytes={CUT}-" and b.requests[1]["status"] == "200"
    assert dest.read_bytes() == b.content


def test_changed_remote_file_is_not_spliced(server: _Server, tmp_path: Path) -> None:
    b = server.behaviour
    dest = tmp_path / "ckpt.pt"
    cut_once(server, dest)
    b.content, b.etag = payload(seed=1), '"v2"'
    download_file(server.url(), dest, progress=False, retries=0)
    assert b.requests[1]["if-range"] == '"v1"' and b.requests[1]["status"] == "200"
    assert dest.read_bytes() == b.content


def test_416_on_resume_starts_over(server: _Server, tmp_path: Path) -> None:
    b = server.behaviour
    b.etag = None
    dest = tmp_path / "ckpt.pt"
    cut_once(server, dest, cut_after=300_000)
    b.content = payload(200_000, seed=2)
    download_file(server.url(), dest, progress=False, retries=0)
    assert [r["status"] for r in b.requests] == ["200", "416", "200"]
    assert dest.read_bytes() == b.content


def test_http_404_fails_at_once_naming_the_url(server: _Server, tmp_path: Path) -> None:
    server.behaviour.status = 404
    dest = tmp_path / "ckpt.pt"
    url = server.url()
    with pytest.raises(CheckpointDownloadError) as info:
        download_file(url, dest, progress=False, retries=3)
    assert url in str(info.value) and "404" in str(info.value)
    assert len(server.behaviour.requests) == 1
    assert not dest.exists() and leftovers(tmp_path) == []
    assert info.value.code == "checkpoint_download_failed" and not info.value.retryable


def test_http_503_is_retried(server: _Server, tmp_path: Path) -> None:
    server.behaviour.status, server.behaviour.status_times = 503, 1
    dest = tmp_path / "ckpt.pt"
    download_file(server.url(), dest, progress=False, retries=1)
    assert dest.read_bytes() == server.behaviour.content
    assert len(server.behaviour.requests) == 2


# ------------------------------------------------------------------------------- integrity and locks


def test_body_without_length_is_accepted_when_whole(server: _Server, tmp_path: Path) -> None:
    server.behaviour.send_length = False
    dest = tmp_path / "ckpt.pt"
    download_file(server.url(), dest, progress=False, retries=0)
    assert dest.read_bytes() == server.behaviour.content
    assert leftovers(tmp_path) == []


def test_body_cut_short_without_length_is_never_renamed_into_place(server: _Server, tmp_path: Path) -> None:
    """HTTP/1.0 close-delimited body: the client cannot tell the cut from the end, the zip check can."""
    b = server.behaviour
    b.send_length, b.cut_after, b.cuts = False, CUT, 1
    dest = tmp_path / "ckpt.pt"
    old = payload(1000, seed=7)
    dest.write_bytes(old)
    with pytest.raises(CheckpointDownloadError) as info:
        download_file(server.url(), dest, progress=False, retries=0)
    err = info.value
    assert err.retryable and err.code == "checkpoint_download_failed"
    assert "cut short" in str(err) and "end-of-central-directory" in str(err) and str(dest) in str(err)
    assert dest.read_bytes() == old
    assert leftovers(tmp_path) == []

    download_file(server.url(), dest, progress=False, retries=0)  # the next try gets the whole file
    assert dest.read_bytes() == b.content


def test_chunked_body_cut_short_is_retried_and_resumed(server: _Server, tmp_path: Path) -> None:
    b = server.behaviour
    b.content = payload(3 << 20)
    b.send_length, b.chunked, b.cut_after, b.cuts = False, True, 3 << 19, 1
    dest = tmp_path / "ckpt.pt"
    download_file(server.url(), dest, progress=False, retries=1)
    assert dest.read_bytes() == b.content
    # Every byte received before the cut was kept: the resume asks for exactly the rest.
    assert [(r.get("range"), r["status"]) for r in b.requests] == [(None, "200"), (f"bytes={3 << 19}-", "206")]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["truncated-zip", "not-a-zip", "zip-without-data.pkl"])
def test_complete_body_that_is_no_checkpoint_is_rejected(server: _Server, tmp_path: Path, kind: str) -> None:
    """The announced length matches, so only the archive check can tell; retrying would not help."""
    b = server.behaviour
    if kind == "truncated-zip":
        b.content = payload()[: SIZE // 2]
    elif kind == "not-a-zip":
        b.content = random.Random(1).randbytes(SIZE)
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("notes.txt", "hello")
        b.content = buffer.getvalue()
    dest = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointDownloadError) as info:
        download_file(server.url(), dest, progress=False, retries=2)
    assert not info.value.retryable and "retrying will not help" in str(info.value)
    assert len(b.requests) == 1
    assert not dest.exists() and leftovers(tmp_path) == []


def test_archive_check_accepts_torch_save_and_rejects_the_legacy_format(tmp_path: Path) -> None:
    from app.weights.download import archive_problem

    torch.save(tiny_state_dict(), tmp_path / "new.pt")
    torch.save(tiny_state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert archive_problem(tmp_path / "new.pt") is None
    assert "zip archive" in (archive_problem(tmp_path / "old.pt") or "")


@pytest.mark.parametrize("outcome", ["success", "http-404", "checksum", "cut-with-length", "cut-without-length"])
def test_no_lock_file_is_left_behind(server: _Server, tmp_path: Path, outcome: str) -> None:
    b = server.behaviour
    sha256 = "0" * 64 if outcome == "checksum" else None
    if outcome == "http-404":
        b.status = 404
    elif outcome.startswith("cut"):
        b.cut_after, b.cuts, b.send_length = CUT, 1, outcome == "cut-with-length"
    dest = tmp_path / "ckpt.pt"
    if outcome == "success":
        download_file(server.url(), dest, progress=False)
    else:
        with pytest.raises((CheckpointDownloadError, ChecksumMismatchError)):
            download_file(server.url(), dest, sha256=sha256, progress=False, retries=0)
    assert not dest.with_name("ckpt.pt.lock").exists()


def test_lock_stays_exclusive_although_its_file_is_deleted(tmp_path: Path) -> None:
    """Each holder deletes the lock file before releasing; waiters on the old file must not get in."""
    path = tmp_path / "x.lock"
    inside: list[int] = []
    overlaps: list[int] = []
    entries: list[int] = []

    def worker(n: int) -> None:
        for _ in range(15):
            with download_lock(path):
                inside.append(n)
                entries.append(n)
                if len(inside) > 1:
                    overlaps.append(n)
                time.sleep(0.001)
                inside.remove(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert overlaps == [] and len(entries) == 4 * 15
    assert not path.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock is Unix-only")
def test_waiter_does_not_get_in_after_the_lock_file_is_deleted(tmp_path: Path) -> None:
    """The premise of deleting the lock file while holding it: a waiter that may have the deleted
    file open must not take the lock while another process holds the new file at the same path."""
    import fcntl

    path = tmp_path / "x.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    result: list[str] = []

    def waiter() -> None:
        try:
            with download_lock(path):
                result.append("got in")
        except Exception as exc:  # handed to the main thread
            result.append(repr(exc))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the waiter is polling the first file
    os.unlink(path)  # what download_lock does on the way out: delete while held, then release
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    newcomer = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    fcntl.flock(newcomer, fcntl.LOCK_EX)
    try:
        time.sleep(0.5)
        assert result == [], "the waiter got in while another process held the lock"
    finally:
        os.unlink(path)
        fcntl.flock(newcomer, fcntl.LOCK_UN)
        os.close(newcomer)
    thread.join(5)
    assert result == ["got in"]


def test_retryable_classification(server: _Server, tmp_path: Path) -> None:
    server.behaviour.status = 503
    with pytest.raises(CheckpointDownloadError) as info:
        download_file(server.url(), tmp_path / "a.pt", progress=False, retries=1)
    assert info.value.retryable and "503" in str(info.value) and len(server.behaviour.requests) == 2
    server.behaviour.status = 429
    with pytest.raises(CheckpointDownloadError) as info:
        download_file(server.url(), tmp_path / "b.pt", progress=False, retries=0)
    assert info.value.retryable
    for status in (403, 404, 410):
        server.behaviour.status = status
        with pytest.raises(CheckpointDownloadError) as info:
            download_file(server.url(), tmp_path / "c.pt", progress=False, retries=3)
        assert not info.value.retryable and "Retrying will not help" in str(info.value)
    assert CheckpointError.retryable is False and CheckpointError.status == 503
    for cls in (ChecksumMismatchError, CheckpointFormatError, CheckpointMismatchError):
        assert cls("x").retryable is False and issubclass(cls, CheckpointError)
    assert CheckpointNotAvailableError("x", retryable=True).retryable


def test_progress_logs_about_every_ten_percent(
    server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.behaviour.content = payload(12 << 20)
    caplog.set_level(logging.INFO, logger="app.weights")
    download_file(server.url(), tmp_path / "ckpt.pt", progress=True)
    lines = [r.getMessage() for r in caplog.records if "MB/s" in r.getMessage()]
    assert 8 <= len(lines) <= 12, lines
    assert "100%" in lines[-1] and "12.6/12.6 MB" in lines[-1]


def test_progress_bar_on_a_tty(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download_file(server.url(), tmp_path / "ckpt.pt", progress=True)
    text = terminal.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert "100%" in text and "MB/s" in text and "ETA" in text


def test_progress_off_is_silent(server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.weights")
    download_file(server.url(), tmp_path / "ckpt.pt", progress=False)
    assert not [r for r in caplog.records if "MB/s" in r.getMessage()]


@pytest.mark.parametrize("second", ["resolve_checkpoint", "download_file"])
def test_second_process_waits_for_the_lock_and_uses_the_file(
    server: _Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, second: str
) -> None:
    b = server.behaviour
    b.gate = threading.Event()
    url = server.url()
    dest = cached_checkpoint_path(url, tmp_path)
    results: dict[str, object] = {}

    def run(name: str, fn: str) -> None:
        try:
            if fn == "download_file":
                results[name] = download_file(url, dest, progress=False)
            else:
                results[name] = resolve_checkpoint(None, url=url, cache_dir=tmp_path, progress=False)
        except Exception as exc:  # handed to the main thread
            results[name] = exc

    caplog.set_level(logging.INFO, logger="app.weights")
    first = threading.Thread(target=run, args=("first", "resolve_checkpoint"))
    first.start()
    assert b.seen.wait(5)
    other = threading.Thread(target=run, args=("second", second))
    other.start()
    deadline = time.monotonic() + 5
    while not any("Waiting for another process" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the second caller never waited for the lock"
        time.sleep(0.01)
    b.gate.set()
    first.join(5)
    other.join(5)
    assert results == {"first": dest, "second": dest}
    assert len(b.requests) == 1
    assert dest.read_bytes() == b.content
    assert leftovers(tmp_path) == []


# -------------------------------------------------------------------------------------------- resolution


def test_offline_with_nothing_cached_says_what_and_where(server: _Server, tmp_path: Path) -> None:
    url = server.url()
    with pytest.raises(CheckpointNotAvailableError) as info:
        resolve_checkpoint(None, url=url, cache_dir=tmp_path, offline=True)
    message = str(info.value)
    assert info.value.code == "checkpoint_unavailable" and not info.value.retryable
    assert url in message and str(tmp_path / "sharp_test.pt") in message
    assert "SHARP_CHECKPOINT=/path/to/file.pt" in message and "SHARP_PRESET=tiny" in message
    assert "\n" not in message
    assert server.behaviour.requests == []


def test_unreachable_with_nothing_cached_says_what_and_where(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/sharp_test.pt"
    with pytest.raises(CheckpointNotAvailableError) as info:
        resolve_checkpoint(None, url=url, cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert url in message and str(tmp_path / "sharp_test.pt") in message
    assert "SHARP_CHECKPOINT=/path/to/file.pt" in message and "SHARP_PRESET=tiny" in message
    assert info.value.code == "checkpoint_unavailable" and info.value.retryable
    assert isinstance(info.value.__cause__, CheckpointDownloadError)
    assert leftovers(tmp_path) == []


def test_explicit_path_must_exist(server: _Server, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotAvailableError) as info:
        resolve_checkpoint(missing, url=server.url(), cache_dir=tmp_path)
    assert str(missing) in str(info.value) and "SHARP_CHECKPOINT" in str(info.value)
    assert not info.value.retryable
    assert server.behaviour.requests == []


def test_explicit_path_wins_over_cache(server: _Server, tmp_path: Path) -> None:
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"mine")
    cached_checkpoint_path(server.url(), tmp_path).write_bytes(b"cached")
    assert resolve_checkpoint(explicit, url=server.url(), cache_dir=tmp_path) == explicit
    assert server.behaviour.requests == []


def test_cached_file_is_used_without_http(server: _Server, tmp_path: Path) -> None:
    dest = cached_checkpoint_path(server.url(), tmp_path)
    dest.write_bytes(b"cached")
    assert resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path) == dest
    assert resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, offline=True) == dest
    assert server.behaviour.requests == []


def test_resolve_downloads_into_the_cache(server: _Server, tmp_path: Path) -> None:
    content = server.behaviour.content
    path = resolve_checkpoint(
        None, url=server.url(), cache_dir=tmp_path / "c", sha256=sha(content), progress=False
    )
    assert path == tmp_path / "c" / "sharp_test.pt" and path.read_bytes() == content
    assert resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path / "c", sha256=sha(content)) == path
    assert len(server.behaviour.requests) == 1


def test_cached_digest_is_reused_until_the_file_changes(server: _Server, tmp_path: Path) -> None:
    dest = cached_checkpoint_path(server.url(), tmp_path)
    good = payload(1000)
    dest.write_bytes(good)
    resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, sha256=sha(good))

    # Same size and mtime: the recorded digest is trusted, so this edit goes unnoticed (no re-hash).
    stat = dest.stat()
    dest.write_bytes(payload(1000, seed=3))
    os.utime(dest, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, sha256=sha(good))

    os.utime(dest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ChecksumMismatchError):
        resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, sha256=sha(good))
    assert server.behaviour.requests == []


def test_cached_file_with_wrong_digest_is_reported_not_touched(server: _Server, tmp_path: Path) -> None:
    dest = cached_checkpoint_path(server.url(), tmp_path)
    dest.write_bytes(b"cached")
    with pytest.raises(ChecksumMismatchError) as info:
        resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, sha256="ab" * 32)
    assert str(dest) in str(info.value)
    assert dest.read_bytes() == b"cached"
    assert server.behaviour.requests == []


def test_malformed_sha256_setting_is_rejected(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, sha256="abc")


# --------------------------------------------------------------------------------------------- loading


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x).mean(dim=(2, 3))))


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Tiny().state_dict().items()}


@pytest.mark.parametrize("mmap", [True, False])
def test_load_state_dict_round_trip(tmp_path: Path, mmap: bool) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    loaded = load_state_dict(path, mmap=mmap)
    assert list(loaded) == list(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_load_state_dict_legacy_format_falls_back_from_mmap(tmp_path: Path) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "legacy.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    loaded = load_state_dict(path, mmap=True)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_load_state_dict_unwraps(tmp_path: Path, key: str) -> None:
    sd = tiny_state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({key: sd, "epoch": 3, "note": "x"}, path)
    assert list(load_state_dict(path)) == list(sd)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a checkpoint" * 100, b"\x80\x02garbage pickle", "truncated zip"],
    ids=["empty", "text", "bad-pickle", "truncated-zip"],
)
def test_load_state_dict_rejects_garbage(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "bad.pt"
    if content == "truncated zip":
        torch.save(tiny_state_dict(), path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError) as info:
        load_state_dict(path)
    assert info.value.code == "checkpoint_format" and not info.value.retryable
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("obj", [[torch.zeros(2)], {"epoch": 3}, {}], ids=["list", "no-tensors", "empty"])
def test_load_state_dict_rejects_non_state_dicts(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointFormatError, match=re.escape(str(path))):
        load_state_dict(path)


def test_load_state_dict_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotAvailableError, match=r"nope\.pt"):
        load_state_dict(tmp_path / "nope.pt")


def test_check_state_dict_lists_every_kind_of_mismatch() -> None:
    model = Tiny()
    sd = tiny_state_dict()
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["conv.weight"] = torch.zeros(4, 3, 5, 5)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        check_state_dict(expected, sd)
    err = info.value
    message = str(err)
    assert err.code == "checkpoint_mismatch" and "\n" not in message and not err.retryable
    assert "1 missing key(s): head.bias" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "conv.weight: got [4, 3, 5, 5] vs expected [4, 3, 3, 3]" in message
    assert err.missing == ["head.bias"] and err.unexpected == ["extra.weight"]


def test_check_state_dict_lists_at_most_five() -> None:
    expected = {f"layer{i}.weight": (2,) for i in range(7)}
    with pytest.raises(CheckpointMismatchError) as info:
        check_state_dict(expected, {})
    message = str(info.value)
    assert "7 missing key(s)" in message
    assert "layer4.weight" in message and "layer5.weight" not in message
    assert len(info.value.missing) == 7


def test_check_state_dict_accepts_a_match() -> None:
    sd = tiny_state_dict()
    check_state_dict({k: tuple(v.shape) for k, v in sd.items()}, sd)


def test_load_weights_mismatch_leaves_model_untouched() -> None:
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = tiny_state_dict(seed=1)
    sd["head.weight"] = torch.zeros(3, 4)
    with pytest.raises(CheckpointMismatchError, match=r"head.weight: got \[3, 4\] vs expected \[2, 4\]"):
        load_weights(model, sd)
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize("assign", [True, False])
def test_load_weights_strict_success(assign: bool) -> None:
    model = Tiny()
    sd = tiny_state_dict(seed=1)
    load_weights(model, sd, assign=assign)
    assert all(torch.equal(model.state_dict()[k], sd[k]) for k in sd)


def test_meta_model_with_mmap_assign_needs_no_copy(tmp_path: Path) -> None:
    sd = tiny_state_dict(seed=2)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    with torch.device("meta"):
        model = Tiny()
    loaded = load_state_dict(path, mmap=True)
    load_weights(model, loaded, assign=True)
    assert weights.meta_tensor_names(model) == []
    assert model.conv.weight.data_ptr() == loaded["conv.weight"].data_ptr()
    reference = Tiny()
    reference.load_state_dict(sd)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(model(x), reference(x))


def test_meta_model_cannot_be_loaded_by_copy() -> None:
    with torch.device("meta"):
        model = Tiny()
    with pytest.raises(ValueError, match="assign=True"):
        load_weights(model, tiny_state_dict(), assign=False)


def test_error_messages_are_json_friendly(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotAvailableError) as info:
        resolve_checkpoint(None, url=server.url(), cache_dir=tmp_path, offline=True)
    body = json.loads(json.dumps({"code": info.value.code, "message": str(info.value)}))
    assert body["code"] == "checkpoint_unavailable"

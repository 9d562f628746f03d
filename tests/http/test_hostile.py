"""An adversarial battery: hostile files, form fields, transport tricks, paths and methods, over real HTTP.

One live tiny-preset server takes every case. Each case asserts its status and JSON error code (or, for a
request uvicorn's HTTP parser refuses before the app sees it, uvicorn's plain 400), and after every case
the server must still answer `/health` with 200 and must not have logged an error (a 500, an unhandled
exception). The last test sends a good request, which must still succeed. Nothing here may get a 5xx.

The hostile files are built in `hostile_inputs.py`. Cases that the server accepts run the tiny model, a
few seconds each on a busy CPU, so acceptance cases are kept to the ones that exercise something new.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.focal import F_PX_MAX, F_PX_MIN
from app.http import create_app
from app.http.server import uvicorn_options
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, assert_error, make_clip, multipart, tiny_settings
from tests.http import hostile_inputs as h

ORIGIN = "https://viewer.example"
MAX_UPLOAD_MB = 1
MAX_PIXELS = 4_000_000
VIDEO_MAX_PIXELS = 1_000_000
UPLOAD_TIMEOUT_S = 2.0
UPLOAD_DEADLINE_S = 6.0
HEAD_TIMEOUT_S = 2.0
KEPT = 64
"""max_gaussians on accepted requests, so responses stay small."""

GOOD_PNG = h.save(h.gradient(), "PNG")


# ---------------------------------------------------------------------------------------- the server


class ErrorLog(logging.Handler):
    """Collects ERROR records of the app and of uvicorn (a crash in the app is logged by one of them)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("app", "uvicorn", "uvicorn.error", "uvicorn.asgi")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def server(error_log: ErrorLog) -> Iterator[LiveServer]:
    settings = tiny_settings(max_upload_mb=MAX_UPLOAD_MB, max_pixels=MAX_PIXELS, cors_origins=[ORIGIN],
                             upload_timeout_s=UPLOAD_TIMEOUT_S, upload_deadline_s=UPLOAD_DEADLINE_S,
                             video_max_pixels=VIDEO_MAX_PIXELS)
    live = LiveServer.start(create_app(settings, predictor=SharpPredictor.load("tiny", device="cpu")),
                            **uvicorn_options(head_timeout_s=HEAD_TIMEOUT_S))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(autouse=True)
def stays_healthy(server: LiveServer, error_log: ErrorLog) -> Iterator[None]:
    """After every case: /health is 200 on a fresh connection, and nothing was logged as an error."""
    yield
    with server.client() as fresh:
        assert fresh.get("/health").status_code == 200
    messages = [record.getMessage() for record in error_log.records]
    error_log.records.clear()
    assert not messages, messages


def assert_accepted(response: httpx.Response) -> dict[str, Any]:
    """A 200 prediction whose Gaussians are finite and whose focal length is positive and finite."""
    assert response.status_code == 200, response.text
    body = response.json()
    meta = body["metadata"]
    assert meta["num_gaussians"] == KEPT
    assert math.isfinite(meta["f_px"]) and meta["f_px"] > 0
    positions = np.frombuffer(base64.b64decode(body["positions"]["data"]), "<f4")
    assert np.isfinite(positions).all()
    return meta


def predict(client: httpx.Client, content: bytes, filename: str = "upload.png", **data: Any) -> httpx.Response:
    fields = {"max_gaussians": str(KEPT), "encoding": "base64", **data}
    return client.post("/predict", files={"file": (filename, content)}, data=fields)


# ------------------------------------------------------------------------------------------- files

REJECTED_FILES: list[tuple[str, Callable[[], bytes], str, int, str]] = [
    # (id, builder, upload file name, status, code)
    *[(f"truncated-{fmt.lower()}", lambda fmt=fmt: h.truncated(fmt), f"cut.{fmt.lower()}", 400, "corrupt_image")
      for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF")],
    ("png-signature-only", lambda: b"\x89PNG\r\n\x1a\n", "sig.png", 400, "corrupt_image"),
    ("jpeg-magic-then-garbage", h.jpeg_magic_then_garbage, "x.jpg", 400, "corrupt_image"),
    ("bomb-png-ihdr", h.png_bomb, "bomb.png", 413, "image_too_large"),
    ("bomb-png-zlib", h.png_zlib_bomb, "bomb.png", 413, "image_too_large"),
    ("bomb-png-long-side", h.png_long_side, "strip.png", 413, "image_too_large"),
    ("bomb-gif-screen", h.gif_bomb, "bomb.gif", 413, "image_too_large"),
    ("bomb-tiff-ifd", h.tiff_bomb, "bomb.tif", 413, "image_too_large"),
    ("bomb-bmp-header", h.bmp_bomb, "bomb.bmp", 413, "image_too_large"),
    ("bomb-jpeg-sof", h.jpeg_sof_bomb, "bomb.jpg", 413, "image_too_large"),
    ("bomb-webp-vp8x-canvas", h.webp_vp8x_bomb, "bomb.webp", 413, "image_too_large"),
    ("bomb-webp-vp8l-header", h.webp_vp8l_bomb, "bomb.webp", 413, "image_too_large"),
    ("bomb-psd-header", h.psd_bomb, "bomb.psd", 413, "image_too_large"),
    ("bomb-ico-embedded-png", h.ico_bomb, "bomb.ico", 413, "image_too_large"),
    ("bomb-tga-header", h.tga_bomb, "bomb.tga", 413, "image_too_large"),
    ("bomb-ppm-header", h.ppm_bomb, "bomb.ppm", 413, "image_too_large"),
    ("bomb-qoi-header", h.qoi_bomb, "bomb.qoi", 413, "image_too_large"),
    ("polyglot-html-as-png", lambda: h.HTML, "page.png", 415, "unsupported_image"),
    ("polyglot-zip-as-jpg", h.zip_archive, "archive.jpg", 415, "unsupported_image"),
    ("polyglot-pdf-as-png", lambda: h.PDF, "doc.png", 415, "unsupported_image"),
    ("polyglot-svg-as-png", lambda: h.SVG, "vector.png", 415, "unsupported_image"),
    ("eps-as-jpg", lambda: h.EPS, "ghostscript.jpg", 415, "unsupported_image"),
    ("random-bytes", h.random_bytes, "noise.jpg", 415, "unsupported_image"),
    ("zero-bytes", lambda: b"", "empty.png", 400, "empty_file"),
]


@pytest.mark.parametrize(("builder", "filename", "status", "code"), [case[1:] for case in REJECTED_FILES],
                         ids=[case[0] for case in REJECTED_FILES])
def test_hostile_file_is_refused(client: httpx.Client, builder: Callable[[], bytes], filename: str, status: int,
                                 code: str) -> None:
    data = builder()
    assert len(data) <= MAX_UPLOAD_MB * 2**20
    assert_error(predict(client, data, filename), status, code)


ACCEPTED_FILES: list[tuple[str, Callable[[], bytes]]] = [
    *[(f"mode-{kind}", lambda kind=kind: h.mode_image(kind))
      for kind in ("1bit", "I;16", "F", "CMYK", "P+transparency", "LA", "1x1", "1x20000")],
    *[(f"exif-{kind}", lambda kind=kind: h.exif_case(kind))
      for kind in ("focal-zero", "focal-nan", "focal-negative", "orientation-bogus", "exif-enormous")],
    ("polyglot-gif-with-zip", h.gifar),
]


@pytest.mark.parametrize("builder", [case[1] for case in ACCEPTED_FILES], ids=[case[0] for case in ACCEPTED_FILES])
def test_odd_but_valid_file_is_served(client: httpx.Client, builder: Callable[[], bytes]) -> None:
    meta = assert_accepted(predict(client, builder()))
    assert meta["f_px_source"] == "default"  # no usable EXIF focal length in any of these


def test_absurd_exif_focal_length_is_not_used(client: httpx.Client) -> None:
    """FocalLength 4294967295/1 (f_px 7.9e9 if believed) is outside the accepted 1-10,000 mm: the default is used."""
    meta = assert_accepted(predict(client, h.exif_case("focal-huge")))
    assert meta["f_px_source"] == "default"
    assert F_PX_MIN <= meta["f_px"] <= F_PX_MAX, meta["f_px"]


# ------------------------------------------------------------------------------------------- renders

RENDER_TOO_LARGE = [("mp4-2048px-240-frames", "2048", "240"), ("mp4-2048px-128-frames", "2048", "128")]
"""GOOD_PNG is 4:3, so 2048 px is 2048x1536: 755 M and 403 M pixels to render, over the 400 M limit."""


@pytest.mark.parametrize(("size", "frames"), [case[1:] for case in RENDER_TOO_LARGE],
                         ids=[case[0] for case in RENDER_TOO_LARGE])
def test_render_over_the_pixel_budget_is_refused(client: httpx.Client, size: str, frames: str) -> None:
    """Each field is within its own bounds; together they are minutes of rendering: 413 before the first frame."""
    response = client.post("/render", files={"file": ("a.png", GOOD_PNG)},
                           data={"output": "mp4", "size": size, "frames": frames})
    error = assert_error(response, 413, "too_large")
    assert "at most 127 frames" in error["message"]


# ------------------------------------------------------------------------------------------- form fields

REJECTED_FIELDS: list[tuple[str, dict[str, Any]]] = [
    *[(f"f_px={value}", {"f_px": value})
      for value in ("0", "-1", "0.5", "1000001", "1e20", "1e-30", "nan", "inf", "-inf", "1e309", "abc", "0x10")],
    ("f_px-repeated", {"f_px": ["100", "200"]}),
    *[(f"max_gaussians={value}", {"max_gaussians": value}) for value in ("0", "-1", "1.5", "many", "1e3")],
    ("max_gaussians-repeated", {"max_gaussians": ["5", "6"]}),
    *[(f"encoding={value}", {"encoding": value}) for value in ("xml", "BASE64", "base64\x00")],
]


@pytest.mark.parametrize("fields", [case[1] for case in REJECTED_FIELDS], ids=[case[0] for case in REJECTED_FIELDS])
def test_bad_field_is_refused(client: httpx.Client, fields: dict[str, Any]) -> None:
    data = {"max_gaussians": str(KEPT), **fields}
    response = client.post("/predict", files={"file": ("a.png", GOOD_PNG)}, data=data)
    error = assert_error(response, 422, "validation_error")
    name = next(iter(fields))
    assert any(detail["loc"] == ["body", name] for detail in error["details"]), error


@pytest.mark.parametrize("value", ["maybe", "2", "", "truee"])
def test_bad_vertex_only_is_refused(client: httpx.Client, value: str) -> None:
    response = client.post("/predict/ply", files={"file": ("a.png", GOOD_PNG)}, data={"vertex_only": value})
    if value == "":  # an empty form value is an absent field: the default (false) applies
        assert response.status_code == 200
        return
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "vertex_only"]


@pytest.mark.parametrize("value", ["1", "1e6"])
def test_f_px_at_its_bounds_is_accepted(client: httpx.Client, value: str) -> None:
    meta = assert_accepted(predict(client, GOOD_PNG, f_px=value))
    assert (meta["f_px"], meta["f_px_source"]) == (float(value), "request")


def test_empty_f_px_and_unknown_fields_are_ignored(client: httpx.Client) -> None:
    response = client.post("/predict", files={"file": ("a.png", GOOD_PNG)},
                           data={"f_px": "", "encoding": "base64",
                                 "colour": "blue", "__proto__": "{}", "file_extra": "x" * 10_000})
    assert response.status_code == 200, response.text
    meta = response.json()["metadata"]
    assert meta["f_px_source"] == "default"
    assert meta["num_gaussians"] == meta["total_gaussians"]


def test_a_budget_above_the_count_is_refused_naming_the_range(client: httpx.Client) -> None:
    """A budget is a count from 1 to the scene's, or a fraction in (0, 1] (issue 17): 10^30 is neither."""
    response = client.post("/predict", files={"file": ("a.png", GOOD_PNG)}, data={"max_gaussians": str(10**30)})
    error = assert_error(response, 422, "validation_error")
    assert "max_gaussians" in error["message"] and "from 1 to 131,072" in error["message"]


def test_two_files_are_refused(client: httpx.Client) -> None:
    response = client.post("/predict", files=[("file", ("a.png", GOOD_PNG)), ("file", ("b.png", GOOD_PNG))])
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["loc"] == ["body", "file"]


def test_file_sent_as_text_field_is_refused(client: httpx.Client) -> None:
    assert_error(client.post("/predict", data={"file": GOOD_PNG.decode("latin-1")}), 422, "missing_file")


# ------------------------------------------------ repeated fields: one rule on every route (issue 19, harden2)

REPEATED_FIELDS: list[tuple[str, str, dict[str, Any]]] = [
    # (route, the field sent twice, the other fields)
    *[("/jobs", name, {"f_px": ["100", "200"], "outputs": ["spz", "ply"], "max_gaussians": ["5", "6"],
                       "encoding": ["list", "base64"]}[name]) for name in ("f_px", "outputs", "max_gaussians",
                                                                               "encoding")],
    *[("/render", name, {"size": ["64", "128"], "output": ["png", "mp4"], "path": ["orbit", "swipe"],
                         "frames": ["2", "3"], "depth": ["true", "false"], "f_px": ["100", "200"]}[name])
      for name in ("size", "output", "path", "frames", "depth", "f_px")],
    ("/predict/spz", "f_px", ["100", "200"]),
    ("/predict/ply", "vertex_only", ["true", "false"]),
]


@pytest.mark.parametrize(("route", "name", "values"), REPEATED_FIELDS,
                         ids=[f"{route}-{name}" for route, name, _ in REPEATED_FIELDS])
def test_a_field_sent_twice_is_refused_on_every_route(client: httpx.Client, route: str, name: str,
                                                      values: list[str]) -> None:
    response = client.post(route, files={"file": ("a.png", GOOD_PNG)}, data={name: values})
    error = assert_error(response, 422, "validation_error")
    assert [(d["loc"], d["type"]) for d in error["details"]] == [(["body", name], "duplicate_field")], error


# ------------------------------------------------------------------------------------ raw HTTP helpers


def raw_request(server: LiveServer, data: bytes | list[bytes], *, pause_s: float = 0.0, close_early: bool = False,
                timeout_s: float = 30.0) -> bytes:
    """Send `data` (pieces, `pause_s` apart) on a new socket and read the answer until the server closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            for piece in [data] if isinstance(data, bytes) else data:
                sock.sendall(piece)
                time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read its answer
        if close_early:
            return b""
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # closed with unread data of ours still queued; what it sent before is kept
    return received


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_raw_error(raw: bytes, status: int, code: str | None) -> None:
    """`code` None: refused by uvicorn's HTTP parser before the app (its plain-text 400)."""
    got, headers, body = parse_response(raw)
    assert got == status, raw[:500]
    if code is None:
        assert b"Invalid HTTP request" in body, raw[:500]
        return
    assert headers["content-type"] == "application/json", raw[:500]
    assert re.search(rb'"code":"' + code.encode() + rb'"', body), raw[:500]


def http_request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


MULTIPART_BODY, MULTIPART_TYPE = multipart({}, "a.png", GOOD_PNG)


# ---------------------------------------------------------------------------------------------- transport


def oversized_body() -> bytes:
    return multipart({}, "big.png", b"\x00" * (MAX_UPLOAD_MB * 2**20 + 100_000))[0]


def test_oversized_body_with_content_length(client: httpx.Client) -> None:
    response = client.post("/predict", content=oversized_body(), headers={"Content-Type": MULTIPART_TYPE})
    assert_error(response, 413, "upload_too_large")


def test_oversized_body_chunked(client: httpx.Client) -> None:
    body = oversized_body()
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = client.post("/predict", content=chunks, headers={"Content-Type": MULTIPART_TYPE})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "upload_too_large")


def test_huge_declared_content_length_is_refused_before_reading(server: LiveServer) -> None:
    request = http_request("POST", "/predict", {"Content-Type": MULTIPART_TYPE, "Content-Length": str(10**15)},
                           MULTIPART_BODY)
    assert_raw_error(raw_request(server, request), 413, "upload_too_large")


def test_content_length_shorter_than_the_body(server: LiveServer) -> None:
    request = http_request("POST", "/predict", {"Content-Type": MULTIPART_TYPE, "Content-Length": "100"},
                           MULTIPART_BODY)
    status, _, body = parse_response(raw_request(server, request))
    assert status in (400, 422), body  # the form is cut at 100 bytes: unparseable, or without a file
    assert b'"code":"' in body


def test_content_length_longer_than_the_body_stalls_into_a_408(server: LiveServer) -> None:
    request = http_request("POST", "/predict", {"Content-Type": MULTIPART_TYPE,
                                                "Content-Length": str(len(MULTIPART_BODY) + 1000)}, MULTIPART_BODY)
    assert_raw_error(raw_request(server, request), 408, "upload_timeout")


def test_client_that_sends_nothing_after_the_headers_gets_a_408(server: LiveServer) -> None:
    request = http_request("POST", "/predict/ply", {"Content-Type": MULTIPART_TYPE, "Transfer-Encoding": "chunked"})
    assert_raw_error(raw_request(server, request), 408, "upload_timeout")


@pytest.mark.parametrize("opening", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n", b"P"],
                         ids=["silent", "head-never-finished", "one-byte"])
def test_connection_without_a_complete_head_is_closed(server: LiveServer, opening: bytes) -> None:
    """Slowloris: a connection that never completes its request head is closed, without an answer."""
    assert raw_request(server, opening, timeout_s=60) == b""


def test_keep_alive_connection_whose_next_head_stalls_is_closed(server: LiveServer) -> None:
    """After a first answer, the start of a second head (which stops uvicorn's keep-alive timer), then nothing."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b'"max_queue"' not in answer:
            answer += sock.recv(65536)
        assert parse_response(answer)[0] == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        assert sock.recv(65536) == b""  # closed, without an answer


def test_slow_but_steady_client_is_served(server: LiveServer) -> None:
    body, content_type = multipart({"max_gaussians": str(KEPT), "encoding": "base64"}, "slow.png", GOOD_PNG)
    request = http_request("POST", "/predict", {"Content-Type": content_type, "Content-Length": str(len(body))}, body)
    pieces = [request[i : i + 256] for i in range(0, len(request), 256)]
    status, _, answer = parse_response(raw_request(server, pieces, pause_s=0.05))
    assert status == 200, answer[:300]


# ------------------------------------------------ a body dripped a byte at a time (issue 19, harden2)


def test_body_dripped_under_the_idle_timeout_meets_the_upload_deadline(server: LiveServer) -> None:
    """One byte every second never stalls for SHARP_UPLOAD_TIMEOUT_S (2 s here), but the whole body must arrive
    within SHARP_UPLOAD_DEADLINE_S (6 s here): 408, and the connection is closed."""
    request = http_request("POST", "/predict", {"Content-Type": MULTIPART_TYPE,
                                                "Content-Length": str(len(MULTIPART_BODY))})
    host, port = server.url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        for byte in MULTIPART_BODY[: int(4 * UPLOAD_DEADLINE_S)]:  # 24 s of drip at most
            if select.select([sock], [], [], 1.0)[0]:
                break
            sock.sendall(bytes([byte]))
        while chunk := sock.recv(65536):
            answer += chunk
    assert_raw_error(answer, 408, "upload_timeout")
    assert b"SHARP_UPLOAD_DEADLINE_S" in answer


@pytest.mark.parametrize("sent", [0.0, 0.5, 1.0], ids=["after-headers", "mid-upload", "whole-body-then-gone"])
def test_client_that_disconnects(server: LiveServer, sent: float) -> None:
    """The client goes away: during the upload, or after it, while its prediction runs."""
    body, content_type = multipart({}, "gone.png", GOOD_PNG)
    request = http_request("POST", "/predict", {"Content-Type": content_type, "Content-Length": str(len(body))}, body)
    cut = len(request) - len(body) + int(len(body) * sent)
    raw_request(server, request[:cut], close_early=True)
    if sent == 1.0:
        time.sleep(0.5)  # let the server start on the abandoned request; /health must answer meanwhile


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (http_request("GET", "/health", {"X-Odd": "\x01\x7f\xff"}), 200, "ok"),
        (http_request("GET", "/health", {"X-Long": "a" * 200_000}), 400, None),
        (http_request("GET", "/health", {"X-Huge": "a" * 8_000_000}), 400, None),
        (http_request("GET", "/health", {f"X-Many-{i}": "v" for i in range(2000)}), 200, "ok"),
        (http_request("GET", "/health", {"X-Request-ID": "<script>alert(1)</script>" * 10}), 200, "ok"),
        (http_request("GET", "/health", {"Content-Length": "5", "Transfer-Encoding": "chunked"}), 200, "ok"),
        (http_request("GET", "/health", {"Content-Length": "-1"}), 400, None),
        (http_request("POST", "/predict", {"Content-Type": MULTIPART_TYPE, "Transfer-Encoding": "chunked"},
                      b"zz\r\nnot hex\r\n0\r\n\r\n"), 400, None),
        (b"GARBAGE\r\n\r\n", 400, None),
        (b"GET /health HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n", 200, "ok"),
    ],
    ids=["header-control-bytes", "header-200kB", "header-8MB", "2000-headers", "hostile-request-id", "cl-and-te",
         "negative-content-length", "bad-chunk-size", "garbage-request-line", "http-9.9"],
)
def test_odd_requests(server: LiveServer, request_bytes: bytes, status: int, code: str | None) -> None:
    raw = raw_request(server, request_bytes)
    if code == "ok":
        got, headers, body = parse_response(raw)
        assert got == status and b'"status":"ready"' in body
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
        return
    assert_raw_error(raw, status, code)


NON_MULTIPART = [
    ("json", "application/json", b'{"file": "aGVsbG8="}', 422, "missing_file"),
    ("urlencoded", "application/x-www-form-urlencoded", b"file=%89PNG&f_px=5", 422, "missing_file"),
    ("text", "text/plain", b"hello", 422, "missing_file"),
    ("raw-image", "image/png", GOOD_PNG, 422, "missing_file"),
    ("no-content-type", None, GOOD_PNG, 422, "missing_file"),
    ("multipart-no-boundary", "multipart/form-data", MULTIPART_BODY, 400, "bad_request"),
    ("multipart-empty-boundary", "multipart/form-data; boundary=", MULTIPART_BODY, 400, "bad_request"),
    ("multipart-wrong-boundary", "multipart/form-data; boundary=other", MULTIPART_BODY, 400, "bad_request"),
    ("multipart-unterminated", MULTIPART_TYPE, MULTIPART_BODY[:-40], 422, "missing_file"),
    ("multipart-garbage", MULTIPART_TYPE, b"--sharp-serve-test-boundary\r\n\x00\xff\r\n\r\n", 400, "bad_request"),
    ("multipart-no-part-name", MULTIPART_TYPE, MULTIPART_BODY.replace(b' name="file";', b""), 400, "bad_request"),
    ("multipart-huge-part-header", MULTIPART_TYPE,
     MULTIPART_BODY.replace(b"Content-Type: application/octet-stream", b"X-Junk: " + b"j" * 100_000), 400,
     "bad_request"),
]


@pytest.mark.parametrize(("content_type", "body", "status", "code"), [case[1:] for case in NON_MULTIPART],
                         ids=[case[0] for case in NON_MULTIPART])
def test_not_a_well_formed_multipart_body(client: httpx.Client, content_type: str | None, body: bytes, status: int,
                                          code: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error(client.post("/predict", content=body, headers=headers), status, code)


# ---------------------------------------------------------------------------------------- paths, methods

PATHS = [
    ("GET", "/no-such-page", 404, "not_found"),
    ("POST", "/no-such-page", 404, "not_found"),
    ("GET", "/predict/../health", 404, "not_found"),
    ("POST", "/predict/../health", 404, "not_found"),
    ("GET", "/" + "a" * 8000, 404, "not_found"),
    ("GET", "/" + "a" * 100_000, 404, "not_found"),  # arrives in one read: h11 bounds only what it must buffer
    ("GET", "/" + "a" * 4_000_000, 400, None),
    ("GET", "/%ff%fe%00%2e%2e", 404, "not_found"),
    ("POST", "/predict/%00", 404, "unknown_format"),
    ("POST", "/predict/..%2f..%2fetc%2fpasswd", 404, "not_found"),
    ("POST", "/predict/ply/extra", 404, "not_found"),
    ("GET", "/health?%ff=%00&x=<script>", 200, "ok"),
    ("GET", "//health", 404, "not_found"),
    ("PUT", "/predict", 405, "method_not_allowed"),
    ("DELETE", "/health", 405, "method_not_allowed"),
    ("PATCH", "/", 405, "method_not_allowed"),
    ("GET", "/predict/ply", 405, "method_not_allowed"),
    ("HEAD", "/predict", 405, "method_not_allowed"),
    ("TRACE", "/", 405, "method_not_allowed"),
    ("FOO", "/health", 405, "method_not_allowed"),
    ("OPTIONS", "/predict", 405, "method_not_allowed"),
    ("GET", "*", 404, "not_found"),
]


@pytest.mark.parametrize(("method", "target", "status", "code"), PATHS,
                         ids=[f"{m} {t[:40]}" for m, t, _, _ in PATHS])
def test_paths_and_methods(server: LiveServer, method: str, target: str, status: int, code: str | None) -> None:
    raw = raw_request(server, http_request(method, target, {"Content-Length": "0"} if method == "POST" else {}))
    if code == "ok":
        assert parse_response(raw)[0] == status
        return
    if method == "HEAD":
        assert parse_response(raw)[0] == status
        return
    assert_raw_error(raw, status, code)


@pytest.mark.parametrize("path", ["/", "/health"])
def test_head_probes(client: httpx.Client, path: str) -> None:
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""


CORS = [
    ("origin", {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, "cors_origin_not_allowed"),
    ("null-origin", {"Origin": "null", "Access-Control-Request-Method": "POST"}, "cors_origin_not_allowed"),
    ("method", {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"}, "cors_method_not_allowed"),
    ("headers", {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers":
                 "x-evil"}, "cors_headers_not_allowed"),
]


@pytest.mark.parametrize(("headers", "code"), [case[1:] for case in CORS], ids=[case[0] for case in CORS])
def test_refused_cors_preflight_is_a_json_error(client: httpx.Client, headers: dict[str, str], code: str) -> None:
    response = client.options("/predict", headers=headers)
    assert_error(response, 400, code)
    assert "access-control-allow-origin" not in response.headers or headers["Origin"] == ORIGIN
    assert "Origin" in response.headers["vary"]


def test_allowed_cors_preflight_still_works(client: httpx.Client) -> None:
    response = client.options("/predict", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN


# ------------------------------------- ranges, HEAD, redirects, page headers (issue 19, harden2)


@pytest.fixture(scope="module")
def finished_job(client: httpx.Client) -> str:
    """The URL of a finished job's small result (JSON of 64 Gaussians)."""
    job = client.post("/jobs", files={"file": ("a.png", GOOD_PNG)},
                      data={"outputs": "json", "max_gaussians": str(KEPT)}).json()
    deadline = time.monotonic() + 120
    while (job := client.get(f"/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "succeeded", job
    return str(job["results"]["json"])


@pytest.mark.parametrize(("range_header", "status", "code"), [
    ("bytes=5-1", 400, "bad_range"), ("bytes=abc", 400, "bad_range"), ("items=0-1", 400, "bad_range"),
    ("bytes=999999999-", 416, "range_not_satisfiable"),
], ids=["reversed", "not-numbers", "not-bytes", "past-the-end"])
def test_bad_range_is_a_json_error(client: httpx.Client, finished_job: str, range_header: str, status: int,
                                   code: str) -> None:
    response = client.get(finished_job, headers={"Range": range_header})
    assert_error(response, status, code)
    if status == 416:
        size = len(client.get(finished_job).content)
        assert response.headers["content-range"] == f"bytes */{size}"


def test_good_range_and_head_of_a_job_result(client: httpx.Client, finished_job: str) -> None:
    whole = client.get(finished_job)
    part = client.get(finished_job, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == whole.content[:10]
    head = client.head(finished_job)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(whole.content)


def test_head_of_the_page(client: httpx.Client) -> None:
    head = client.head("/viewer")
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("path", ["/static", "/jobs/", "/health/", "/viewer/"])
def test_no_redirect_built_from_a_forged_host(server: LiveServer, path: str) -> None:
    raw = raw_request(server, http_request("GET", path).replace(b"Host: 127.0.0.1", b"Host: evil.example"))
    assert_raw_error(raw, 404, "not_found")
    assert "location" not in parse_response(raw)[1]


def test_page_headers_and_long_lived_vendor_files(client: httpx.Client) -> None:
    page = client.get("/viewer")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'self'" in policy and "'unsafe-inline'" not in policy
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "SAMEORIGIN"
    assert client.get("/health").headers["x-content-type-options"] == "nosniff"
    vendor = re.search(r'"three": "\./(static/v/[0-9a-f]{12}/three/build/three\.module\.js)"', page.text)
    assert vendor, page.text[:1000]
    module = client.get(f"/{vendor.group(1)}")
    if module.status_code == 404:
        pytest.skip("the page's renderer files are not installed (make web)")
    assert module.status_code == 200 and "immutable" in module.headers["cache-control"]
    assert "immutable" not in client.get("/static/app.js").headers.get("cache-control", "")


def test_docs_load_nothing_from_another_origin(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    urls = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    for url in urls:
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert client.get("/redoc").status_code == 404


# ------------------------------------------------------------------- clips that lie (issue 28, harden3)


def clip_job(client: httpx.Client, clip: bytes, **fields: str) -> httpx.Response:
    return client.post("/jobs", files={"file": ("clip.mp4", clip)}, data={"max_gaussians": str(KEPT), **fields})


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while (job := client.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


REJECTED_CLIP_FIELDS = [
    *[(f"max_frames={value}", "max_frames", value) for value in ("1e20", str(10**20), str(2**63), "0", "-1")],
    *[(f"start={value}", "start", value) for value in ("1e300", "inf", "nan", "-1")],
    *[(f"end={value}", "end", value) for value in ("1e300", "-inf", "0")],
    *[(f"fps={value}", "fps", value) for value in ("1e9", "0", "nan")],
]


@pytest.mark.parametrize(("name", "value"), [case[1:] for case in REJECTED_CLIP_FIELDS],
                         ids=[case[0] for case in REJECTED_CLIP_FIELDS])
def test_a_clip_field_out_of_range_is_a_422_naming_it(client: httpx.Client, name: str, value: str) -> None:
    """max_frames=10^20 passed the form and failed writing the job (500); each field's range is the form's."""
    error = assert_error(clip_job(client, make_clip(2), **{name: value}), 422, "validation_error")
    assert [detail["loc"] for detail in error["details"]] == [["body", name]], error


REJECTED_CLIPS: list[tuple[str, Callable[[], bytes], dict[str, str], int, str, str]] = [
    # (id, builder, fields, status, code, part of the message)
    ("unknown-codec", h.clip_unknown_codec, {}, 415, "unsupported_video", "codec is unknown"),
    ("orbit-per-frame", make_clip, {"outputs": "ply,orbit"}, 422, "validation_error", "orbit output is not made"),
    ("base64-without-json", make_clip, {"encoding": "base64"}, 422, "validation_error", "only applies to the json"),
]


@pytest.mark.parametrize(("builder", "fields", "status", "code", "message"), [case[1:] for case in REJECTED_CLIPS],
                         ids=[case[0] for case in REJECTED_CLIPS])
def test_a_bad_clip_is_refused_at_submission(client: httpx.Client, builder: Callable[[], bytes],
                                             fields: dict[str, str], status: int, code: str, message: str) -> None:
    error = assert_error(clip_job(client, builder(), **fields), status, code)
    assert message in error["message"]


FAILED_CLIPS: list[tuple[str, Callable[[], bytes], str, str]] = [
    # (id, builder, the job's error code, part of its message): the header passes, a frame does not
    ("frame-larger-than-its-header", lambda: h.mjpeg_clip([(16, 16), (2000, 2000)]), "video_too_large",
     "SHARP_VIDEO_MAX_PIXELS"),
    ("frame-of-another-shape", lambda: h.mjpeg_clip([(16, 16), (32, 16)]), "corrupt_video", "another shape"),
]


@pytest.mark.parametrize(("builder", "code", "message"), [case[1:] for case in FAILED_CLIPS],
                         ids=[case[0] for case in FAILED_CLIPS])
def test_a_clip_whose_frames_lie_fails_its_job_with_the_frames_error(client: httpx.Client,
                                                                     builder: Callable[[], bytes], code: str,
                                                                     message: str) -> None:
    response = clip_job(client, builder())
    assert response.status_code == 202, response.text
    job = finished(client, response.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == code and message in job["error"]["message"], job


def test_head_and_range_on_a_clips_files(client: httpx.Client) -> None:
    """HEAD on a clip's frame files answered 405; it answers as GET does, without the body."""
    response = clip_job(client, h.mjpeg_clip([(16, 16), (32, 16 * 2)]), outputs="ply,preview")
    assert response.status_code == 202, response.text
    job = finished(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert "frames/000001.png" in job["results"]
    for url in job["results"].values():
        whole = client.get(url)
        head = client.head(url)
        assert head.status_code == 200 and head.content == b"", url
        assert int(head.headers["content-length"]) == len(whole.content)
        assert head.headers["content-type"] == whole.headers["content-type"]
        assert client.get(url, headers={"Range": "bytes=0-3"}).content == whole.content[:4]


# ----------------------------------------------------------------------------------------------- the end


def test_zz_a_good_request_still_succeeds(client: httpx.Client) -> None:
    """Runs last (file order): after everything above, the server still predicts."""
    assert_accepted(predict(client, GOOD_PNG))
    health = client.get("/health").json()
    assert (health["queue_depth"], health["in_progress"]) == (0, 0)

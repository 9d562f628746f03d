"""Schema-driven fuzzing with schemathesis (v4): every operation in /openapi.json, positive and negative
cases, against a live tiny-preset server on loopback.

Each case must get no 5xx, a status and Content-Type the schema documents, and a body and headers that
conform to the documented schema (error bodies are `ErrorResponse`). `SHARP_FUZZ_EXAMPLES` sets
hypothesis' examples per operation (CI: 40, which sends about 360 cases in about 30 s, derandomized so that
a failure reproduces); `make fuzz` runs 500 per operation with fresh randomness.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.http import create_app
from app.http.server import UVICORN_OPTIONS
from app.predictor import SharpPredictor
from tests.helpers import LiveServer, tiny_settings

EXAMPLES = int(os.environ.get("SHARP_FUZZ_EXAMPLES", "40"))
RANDOM = os.environ.get("SHARP_FUZZ_RANDOM", "") == "1"

CALLS: list[tuple[str, int]] = []
"""(operation, status) of every case sent, for the summary test at the end."""


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[LiveServer]:
    settings_ = tiny_settings(max_upload_mb=1, max_pixels=1_000_000, upload_timeout_s=5.0)
    server = LiveServer.start(create_app(settings_, predictor=SharpPredictor.load("tiny", device="cpu")),
                              **UVICORN_OPTIONS)
    yield server
    server.stop()


def served_schema() -> dict:
    """The OpenAPI document the fuzzed server serves (test_zz checks they are the same). Taken from an app
    built here, at import, so that pytest can list the operations before the server starts
    (schemathesis' lazy `from_fixture` loader does not work with pytest 9)."""
    return create_app(tiny_settings()).openapi()


schema = schemathesis.openapi.from_dict(served_schema())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_openapi(case: schemathesis.Case, fuzz_server: LiveServer) -> None:
    # A schema-valid body is random bytes for `file`, which is rightly refused as not an image (415), so
    # "valid data is accepted" cannot hold here; every other built-in check runs.
    response = case.call_and_validate(base_url=fuzz_server.url, timeout=120,
                                      excluded_checks=[positive_data_acceptance])
    CALLS.append((case.operation.label, response.status_code))
    assert response.status_code < 500, response.text


def test_fuzz_zz_summary(fuzz_server: LiveServer) -> None:
    """Runs after the fuzz cases: how many were sent; the server is healthy and served the fuzzed schema."""
    with fuzz_server.client() as client:
        assert client.get("/health").status_code == 200
        assert client.get("/openapi.json").json() == served_schema()
    if not CALLS:
        pytest.skip("no fuzz case ran in this session (deselected)")
    by_status: dict[int, int] = {}
    for _, status in CALLS:
        by_status[status] = by_status.get(status, 0) + 1
    print(f"\nschemathesis: {len(CALLS)} cases over {len({op for op, _ in CALLS})} operations; statuses {by_status}")
    assert all(status < 500 for _, status in CALLS)

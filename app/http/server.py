"""How uvicorn runs the app (`python -m app serve`); the tests start their live servers with the same options.

uvicorn's default HTTP parser (httptools) puts no bound on the request line or the headers, and builds
them by repeated concatenation: one client sending a 20 MB header holds the event loop for over a second,
a 60 MB one for 23 s, and `/health` stops answering meanwhile. h11 answers 400 and closes the connection
when a request head is still incomplete after `MAX_REQUEST_HEAD_BYTES` (it checks while waiting for more,
so a head that arrives in one read may be a little longer). Its pure-Python parsing costs microseconds
per request, nothing next to a prediction. (On Modal, Modal's own web server runs the app instead.)
"""

from __future__ import annotations

from typing import Any

MAX_REQUEST_HEAD_BYTES = 64 * 1024
"""Longest request line plus headers accepted (h11's `max_incomplete_event_size`); more is a 400."""

UVICORN_OPTIONS: dict[str, Any] = {"http": "h11", "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES}
"""Keyword arguments for `uvicorn.run` / `uvicorn.Config`."""

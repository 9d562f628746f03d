"""How uvicorn runs the app (`python -m app serve`); the tests start their live servers with the same options.

Two holes of uvicorn's defaults, closed here:

* Unbounded request heads. uvicorn's default HTTP parser (httptools) puts no bound on the request line or
  the headers, and builds them by repeated concatenation: one client sending a 20 MB header holds the
  event loop for 2.5 s, a 60 MB one for 23 s, and `/health` stops answering meanwhile. h11 answers 400
  and closes the connection when a request head is still incomplete after `MAX_REQUEST_HEAD_BYTES` (it
  checks while waiting for more, so a head that arrives in one read may be a little longer). Its
  pure-Python parsing costs microseconds per request, nothing next to a prediction.
* No deadline for a request head. uvicorn closes an idle keep-alive connection after 5 s, but a new
  connection that sends nothing, or a head one byte at a time, is kept open for ever (slowloris).
  `BoundedH11Protocol` closes a connection whose request head is not complete `head_timeout_s` after the
  connection opened or after its previous response. A stalled upload *body* is `UploadGuard`'s business
  (408 after `SHARP_UPLOAD_TIMEOUT_S`).

And one of shutdown: uvicorn waits for requests in flight without a bound. `SHUTDOWN_GRACE_S` after a
SIGTERM, the requests still running are cancelled; the service stops their runs at the next block or frame.

On Modal, Modal's own web server runs the app instead, and none of this applies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_REQUEST_HEAD_BYTES = 64 * 1024
"""Longest request line plus headers accepted (h11's `max_incomplete_event_size`); more is a 400."""
REQUEST_HEAD_TIMEOUT_S = 10.0
"""Time a connection gets to send a complete request line and headers."""
SHUTDOWN_GRACE_S = 8.0
"""Time requests in flight get to finish after a SIGTERM (under Docker's 10 s before its SIGKILL)."""


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request head (see the module docstring)."""

    head_timeout_s: float = REQUEST_HEAD_TIMEOUT_S
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head on this keep-alive connection

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # IDLE: the client has not completed a request head since the timer was armed (a request in
        # progress has moved it on to SEND_BODY or DONE).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("Closing a connection that sent no complete request head in %g s.", self.head_timeout_s)
            self.transport.close()


def uvicorn_options(head_timeout_s: float = REQUEST_HEAD_TIMEOUT_S,
                    shutdown_grace_s: float = SHUTDOWN_GRACE_S) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` (tests shorten the deadlines)."""
    protocol = BoundedH11Protocol
    if head_timeout_s != REQUEST_HEAD_TIMEOUT_S:
        protocol = type("BoundedH11Protocol", (BoundedH11Protocol,), {"head_timeout_s": head_timeout_s})
    return {"http": protocol, "h11_max_incomplete_event_size": MAX_REQUEST_HEAD_BYTES,
            "timeout_graceful_shutdown": shutdown_grace_s}


UVICORN_OPTIONS: dict[str, Any] = uvicorn_options()
"""What `python -m app serve` passes to uvicorn."""

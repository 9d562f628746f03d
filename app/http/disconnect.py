"""Work that stops when its client hangs up: a synchronous prediction or render nobody waits for any more.

`until_disconnect(request, work)` awaits `work` while it watches the connection; if the client disconnects
first, `work` is cancelled (the service stops the run at its next block or frame, `app.service`) and
`ClientGoneError` is raised: its 499 is logged, nobody receives it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from app.cancel import RunCancelledError

T = TypeVar("T")


class ClientGoneError(RunCancelledError):
    """The client disconnected before its answer was ready (nginx's 499 in the access log)."""

    code = "client_closed_request"


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`await work`, unless the client disconnects first (then `work` is cancelled: `ClientGoneError`).

    The request's body must have been read already (the routes read their form first): what the
    connection delivers afterwards is only its end.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this request is cancelled itself (the server's graceful shutdown ran out)
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RunCancelledError):
                await task
    if task.cancelled():
        raise ClientGoneError("The client disconnected before its answer was ready.")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass

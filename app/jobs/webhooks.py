"""Signed webhooks: a job's events POSTed to its `webhook_url`, as the Standard Webhooks specification says.

    POST <webhook_url>
    webhook-id: msg_<random>          the event's id, the same on every retry (receivers deduplicate on it)
    webhook-timestamp: <unix seconds> when this attempt was sent
    webhook-signature: v1,<base64>    HMAC-SHA256 of "<id>.<timestamp>.<body>" with the key of SHARP_WEBHOOK_SECRET
    {"type": "job.succeeded", "timestamp": "...Z", "data": {"id", "status", "stage", "progress", "url", ...}}

A job asks for them at submission (`webhook_url`, `webhook_events`, see `check_target` and `parse_events`);
`WebhookSender.observe` sees every change of the job (the queue calls it where it wakes watchers) and turns
status changes into events (`job.started`, `job.succeeded`, `job.failed`, `job.cancelled`) and, if asked for,
`job.progress` at most every `PROGRESS_INTERVAL_S`. Each job's events are delivered in order by one task.

Persistence: a job's undelivered events are written to `<jobs dir>/.webhooks/<job id>.json` before their first
attempt and after each one, so that a restart delivers what was left (the next server reads the folder at
`start`). What was sent is recorded in the job itself (`Job.webhook`: `attempts`, `last_status`, `last_error`,
`last_event`, `last_attempt_at`, `delivered`, and `notified`, the last status turned into an event).

Retries: an attempt succeeds on a 2xx answer; anything else (an error status, a redirect, which is never
followed, a timeout, a refused connection) is retried after `RETRY_DELAYS_S`, at most `MAX_ATTEMPTS` times
and never later than `MAX_AGE_S` after the event; then the event is dropped (recorded in `last_error`).

Targets: http or https URLs only; a host that resolves to a private, loopback, link-local or otherwise
non-global address is refused (422 at submission, and again at each delivery, as DNS may change) unless
it is listed in `SHARP_WEBHOOK_ALLOWED_HOSTS`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
import orjson

from app import __version__
from app.errors import InvalidRequestError
from app.files import write_atomically
from app.jobs.job import Job, check_job_id, iso_time
from app.settings import Settings

LOGGER = logging.getLogger(__name__)

EVENTS = ("started", "progress", "succeeded", "failed", "cancelled")
"""What a job can be told about (`webhook_events`); each is sent as the type `job.<name>`."""
DEFAULT_EVENTS = ("started", "succeeded", "failed", "cancelled")
"""What a job with a `webhook_url` and no `webhook_events` is sent: every status change."""
PROGRESS_INTERVAL_S = 0.5
"""At most one `job.progress` event per job this often (seconds)."""
RETRY_DELAYS_S = (1.0, 5.0, 30.0, 120.0, 600.0, 1800.0)
"""Wait before attempt 2, 3, ...: an event is tried at most len + 1 times, over about 43 minutes."""
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1
MAX_AGE_S = 3 * 3600.0
"""No attempt is made later than this after the event (a server that was down longer drops it)."""
TIMEOUT_S = 10.0
"""Longest one attempt may take (connect, send, answer), in seconds."""
MAX_URL_LENGTH = 2048
OUTBOX_DIR = ".webhooks"
"""Under the jobs directory (a dot name: the job store never reads it as a job)."""


class WebhookTargetError(InvalidRequestError):
    code = "webhook_url_refused"


class WebhooksDisabledError(InvalidRequestError):
    code = "webhooks_disabled"


# ------------------------------------------------------------------------------------------ submission


def parse_events(value: str | None) -> list[str]:
    """`started,succeeded` -> `["started", "succeeded"]` (in `EVENTS` order); empty or None: `DEFAULT_EVENTS`."""
    names = [part.strip().lower().removeprefix("job.") for part in (value or "").split(",") if part.strip()]
    unknown = [name for name in names if name not in EVENTS]
    if unknown:
        raise InvalidRequestError(f"webhook_events: unknown event {', '.join(map(repr, unknown))}; use a "
                                  f"comma-separated subset of: {', '.join(EVENTS)}.")
    return [name for name in EVENTS if name in names] if names else list(DEFAULT_EVENTS)


async def check_target(url: str, allowed_hosts: list[str]) -> str:
    """`url` if a webhook may be sent there (module docstring), else `WebhookTargetError` naming why."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookTargetError(f"webhook_url: longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise WebhookTargetError(f"webhook_url: not a URL ({error}).") from None
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookTargetError("webhook_url: must be an http:// or https:// URL with a host.")
    if host.lower() in allowed_hosts:
        return url
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise WebhookTargetError(f"webhook_url: the host {host!r} does not resolve ({error}).") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if _internal(address):
            raise WebhookTargetError(
                f"webhook_url: {host!r} resolves to {address}, a private, loopback or link-local address; "
                "webhooks go to public hosts only, unless the server lists the host in "
                "SHARP_WEBHOOK_ALLOWED_HOSTS.")
    return url


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


async def webhook_of(url: str | None, events: str | None, settings: Settings) -> dict[str, Any] | None:
    """A submission's webhook (`Job.webhook`'s starting value), checked; None without a `webhook_url`."""
    if url is None or not url.strip():
        if events:
            raise InvalidRequestError("webhook_events needs a webhook_url.")
        return None
    if settings.webhook_secret is None:
        raise WebhooksDisabledError("This server sends no webhooks (SHARP_WEBHOOK_SECRET is not set); follow "
                                    "the job with GET /jobs/{id} or its /events instead.")
    names = parse_events(events)
    return {"url": await check_target(url.strip(), settings.webhook_allowed_hosts), "events": names,
            "attempts": 0, "delivered": 0, "last_status": None, "last_error": None, "last_event": None,
            "last_attempt_at": None, "notified": "queued"}


# ---------------------------------------------------------------------------------------------- signing


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` + base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>"), the key
    being the base64 after `whsec_`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_body(job: Job, event: str, now: float) -> bytes:
    """The JSON an event carries: its type, when it happened, and the job in brief (`GET` its `url` for all)."""
    return orjson.dumps({"type": f"job.{event}", "timestamp": iso_time(now), "data": {
        "id": job.id, "status": job.status, "stage": job.stage, "progress": round(job.progress, 4),
        "url": f"/jobs/{job.id}", "results": job.result_urls(), "error": job.error, "frame": job.frame,
        "frames": job.frames}})


# --------------------------------------------------------------------------------------------- delivery


@dataclass
class Event:
    """One event on its way: `body` is sent as is on every attempt (its `id` too); times are Unix seconds."""

    id: str
    type: str
    body: str
    created_at: float
    next_at: float
    attempts: int = 0


@dataclass
class Outbox:
    """A job's undelivered events, in order, and where they go (`<jobs dir>/.webhooks/<job id>.json`)."""

    job_id: str
    url: str
    events: list[Event] = field(default_factory=list)


Record = Callable[[str, dict[str, Any]], Awaitable[None]]
"""`record(job_id, changes)`: merge `changes` into that job's `webhook` and save it (the queue's business)."""


class WebhookSender:
    """Delivers the webhooks of one queue's jobs (module docstring); `root`: its outbox folder."""

    def __init__(self, root: Path, settings: Settings, record: Record) -> None:
        self.root = root
        self.settings = settings
        self.record = record
        self._outboxes: dict[str, Outbox] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._progress_sent: dict[str, tuple[float, float]] = {}
        """Job id -> (monotonic time, progress) of its last `job.progress` event."""
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        """Load the events a previous server left undelivered and deliver them (oldest first, per job)."""
        # No proxy from the environment (it would bypass the address check), no redirects followed.
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False,
                                         headers={"user-agent": f"sharp-serve/{__version__} (webhooks)"})
        for outbox in await anyio.to_thread.run_sync(self._load_all):
            self._outboxes[outbox.job_id] = outbox
            self._spawn(outbox.job_id)
        if self._outboxes:
            LOGGER.info("Webhooks: %d jobs' events left undelivered by the last run", len(self._outboxes))

    async def close(self) -> None:
        """Stop delivering; what is left stays in the outbox folder for the next server."""
        client, self._client = self._client, None  # `observe` queues nothing from now on
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._outboxes:
            await anyio.to_thread.run_sync(lambda: [self._save(outbox) for outbox in self._outboxes.values()])
        if client is not None:
            await client.aclose()

    def observe(self, job: Job) -> None:
        """Queue the events `job`'s change calls for (on the event loop, after every change)."""
        hook = job.webhook
        if hook is None or self._client is None:
            return
        now = time.time()
        if job.status != hook.get("notified"):
            event = {"running": "started", "queued": None}.get(job.status, job.status)
            job.webhook = {**hook, "notified": job.status}
            if event in hook["events"]:
                self._enqueue(job, hook["url"], event, now)
            if job.final:
                self._progress_sent.pop(job.id, None)
            return
        if job.status == "running" and "progress" in hook["events"]:
            sent_at, sent = self._progress_sent.get(job.id, (-math.inf, -1.0))
            if job.progress > sent and time.monotonic() - sent_at >= PROGRESS_INTERVAL_S:
                self._progress_sent[job.id] = (time.monotonic(), job.progress)
                self._enqueue(job, hook["url"], "progress", now)

    def _enqueue(self, job: Job, url: str, event: str, now: float) -> None:
        outbox = self._outboxes.setdefault(job.id, Outbox(job_id=job.id, url=url))
        new = Event(id=f"msg_{secrets.token_urlsafe(18)}", type=f"job.{event}",
                    body=event_body(job, event, now).decode(), created_at=now, next_at=now)
        waiting = outbox.events[1:]  # the first may be on its way now
        if event == "progress" and waiting and waiting[-1].type == "job.progress" and not waiting[-1].attempts:
            outbox.events[-1] = new  # a newer progress replaces one not yet sent
        else:
            if event != "progress":  # progress not yet sent is stale once the status changed
                outbox.events[1:] = [e for e in waiting if e.type != "job.progress" or e.attempts]
            outbox.events.append(new)
        self._spawn(job.id)

    def _spawn(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is None or task.done():
            self._tasks[job_id] = asyncio.get_running_loop().create_task(self._deliver(job_id),
                                                                         name=f"sharp-webhooks-{job_id[:8]}")

    async def _deliver(self, job_id: str) -> None:
        """Send `job_id`'s events one after the other until none is left."""
        outbox = self._outboxes[job_id]
        try:
            while outbox.events:
                await anyio.to_thread.run_sync(self._save, outbox)  # on disk before it is sent
                event = outbox.events[0]
                delay = event.next_at - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # the first event may have changed meanwhile (a newer progress)
                status, error = await self._attempt(outbox.url, event)
                event.attempts += 1
                now = time.time()
                delivered = status is not None and 200 <= status < 300
                if delivered or event.attempts >= MAX_ATTEMPTS or now - event.created_at >= MAX_AGE_S \
                        or isinstance(error, WebhookTargetError):
                    outbox.events.pop(0)
                    if not delivered:
                        LOGGER.warning("Webhook %s of job %s to %s dropped after %d attempts: %s", event.type,
                                       job_id, outbox.url, event.attempts, error or f"HTTP {status}")
                else:
                    event.next_at = now + RETRY_DELAYS_S[event.attempts - 1]
                await anyio.to_thread.run_sync(self._save, outbox)
                await self.record(job_id, {"last_event": event.type, "last_status": status,
                                           "last_error": None if delivered else _describe(error, status),
                                           "last_attempt_at": iso_time(now), "_attempted": 1,
                                           "_delivered": int(delivered)})
        except Exception:  # (a full disk, ...) the events stay; the job's next event starts a new task
            LOGGER.exception("Webhooks of job %s: delivery stopped", job_id)
        finally:
            if not outbox.events:
                self._outboxes.pop(job_id, None)
                self._tasks.pop(job_id, None)

    async def _attempt(self, url: str, event: Event) -> tuple[int | None, Exception | None]:
        """One POST of `event`: (the answer's status or None, the error or None)."""
        secret = self.settings.webhook_secret
        if self._client is None:
            return None, WebhooksDisabledError("the server is stopping")
        if secret is None:
            return None, WebhooksDisabledError("SHARP_WEBHOOK_SECRET is no longer set")
        try:
            await check_target(url, self.settings.webhook_allowed_hosts)  # again: DNS may have changed
            timestamp = int(time.time())
            body = event.body.encode()
            response = await self._client.post(url, content=body, headers={
                "content-type": "application/json", "webhook-id": event.id, "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret.get_secret_value(), event.id, timestamp, body)})
            await response.aclose()
            return response.status_code, None
        except (httpx.HTTPError, WebhookTargetError) as error:
            return None, error

    # ---------------------------------------------------------------------------------------- files

    def _path(self, job_id: str) -> Path:
        return self.root / f"{check_job_id(job_id)}.json"

    def _save(self, outbox: Outbox) -> None:
        path = self._path(outbox.job_id)
        if not outbox.events:
            path.unlink(missing_ok=True)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(path, [orjson.dumps(asdict(outbox))])

    def _load_all(self) -> list[Outbox]:
        outboxes = []
        if not self.root.is_dir():
            return outboxes
        for path in sorted(self.root.glob("*.json")):
            try:
                state = orjson.loads(path.read_bytes())
                outbox = Outbox(job_id=check_job_id(state["job_id"]), url=state["url"],
                                events=[Event(**event) for event in state["events"]])
            except Exception as error:  # a damaged file must not stop the server
                LOGGER.error("Webhooks: ignoring %s (%s)", path, error)
                continue
            if outbox.events:
                outboxes.append(outbox)
        return outboxes


def _describe(error: Exception | None, status: int | None) -> str:
    if error is None:
        return f"HTTP {status}" + (" (a redirect: not followed)" if status is not None and 300 <= status < 400
                                   else "")
    return f"{type(error).__name__}: {error}"[:300]


def merge_record(hook: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`hook` (a `Job.webhook`) after an attempt's `changes` (from `WebhookSender`): counters added up."""
    attempted, delivered = changes.get("_attempted", 0), changes.get("_delivered", 0)
    plain = {key: value for key, value in changes.items() if not key.startswith("_")}
    return {**hook, **plain, "attempts": hook.get("attempts", 0) + attempted,
            "delivered": hook.get("delivered", 0) + delivered}

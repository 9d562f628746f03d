"""`Idempotency-Key` on `POST /jobs` and `POST /predict*`, as the IETF HTTP API draft
(draft-ietf-httpapi-idempotency-key-header) says: a client retries a submission safely by sending the same key.

    same key, same request (path, query, form fields, the file's name and bytes)
        POST /jobs: the same job (202, its current state, `Idempotent-Replayed: true`); no second job
        POST /predict*: the same answer, predicted again (a prediction has no side effect to repeat)
    same key, another request               422 `idempotency_key_reused`
    same key while its first request runs   409 `idempotency_key_in_use` (Retry-After: 1)
    a key that is not a short ASCII string  400 `invalid_idempotency_key`

A key is remembered once its request succeeded (a refused or failed request leaves it free for a retry), in
`<jobs dir>/.idempotency/<sha256 of the key>.json` (the key itself is not stored): for a job, as long as
the job exists (deleted or removed after its time to live, the key is free again; expired, the replay
answers 410 like the job's URL); for a prediction, `SHARP_JOB_TTL_S`. Keys are the server's, not a client's:
every client shares them (use random keys, e.g. UUIDs).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import anyio.to_thread
import orjson
from fastapi import Depends, Header, Request
from starlette.datastructures import UploadFile

from app.errors import SharpError
from app.files import write_atomically
from app.jobs.store import STATE_FILE

MAX_KEY_LENGTH = 255
SWEEP_INTERVAL_S = 60.0
"""Forgotten keys (their job gone, or their time up) are deleted at most this often, on a later request."""


class IdempotencyKeyInUseError(SharpError):
    code = "idempotency_key_in_use"
    status = 409


class IdempotencyKeyReusedError(SharpError):
    code = "idempotency_key_reused"
    status = 422


class InvalidIdempotencyKeyError(SharpError):
    code = "invalid_idempotency_key"
    status = 400


class IdempotencyKeys:
    """The keys of one server: those in flight (in memory) and those remembered (files under `root`)."""

    def __init__(self, root: Path, *, jobs_root: Path, ttl_s: float) -> None:
        self.root = root
        self.jobs_root = jobs_root
        self.ttl_s = ttl_s
        self._in_flight: set[str] = set()
        self._swept_at = 0.0

    @contextlib.asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[Held]:
        """`key` in flight for the block (409 if it already is); a no-op `Held` without a key."""
        if key is None:
            yield Held(self, None)
            return
        digest = hashlib.sha256(_check(key).encode()).hexdigest()
        if digest in self._in_flight:
            raise IdempotencyKeyInUseError("A request with this Idempotency-Key is still being processed; retry "
                                           "once it has finished.", retry_after_s=1)
        self._in_flight.add(digest)
        try:
            if time.time() - self._swept_at >= SWEEP_INTERVAL_S:
                self._swept_at = time.time()
                await anyio.to_thread.run_sync(self._sweep)
            yield Held(self, digest)
        finally:
            self._in_flight.discard(digest)

    def _path(self, digest: str) -> Path:
        return self.root / f"{digest}.json"

    def _load(self, digest: str) -> dict | None:
        """The remembered request of this key, if it is still alive."""
        try:
            record = orjson.loads(self._path(digest).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return record if self._alive(record, time.time()) else None

    def _alive(self, record: dict, now: float) -> bool:
        if record.get("job_id") is not None:
            return (self.jobs_root / record["job_id"] / STATE_FILE).is_file()
        return now < record.get("expires_at", 0)

    def _save(self, digest: str, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomically(self._path(digest), [orjson.dumps(record)])

    def _sweep(self) -> None:
        if not self.root.is_dir():
            return
        now = time.time()
        for path in self.root.glob("*.json"):
            try:
                record = orjson.loads(path.read_bytes())
                alive = path.stem in self._in_flight or self._alive(record, now)
            except (OSError, orjson.JSONDecodeError):
                alive = False
            if not alive:
                path.unlink(missing_ok=True)


@dataclass
class Held:
    """A request's key while it runs: `check` it against the remembered request, `remember` it on success."""

    keys: IdempotencyKeys
    digest: str | None
    fingerprint: str = ""

    async def check(self, request: Request, data: bytes) -> str | None:
        """The job id an earlier, identical request made (None if there was none, or it made no job);
        `IdempotencyKeyReusedError` if the key was used for another request."""
        if self.digest is None:
            return None
        self.fingerprint = await fingerprint(request, data)
        record = await anyio.to_thread.run_sync(self.keys._load, self.digest)
        if record is None:
            return None
        if record["fingerprint"] != self.fingerprint:
            raise IdempotencyKeyReusedError("This Idempotency-Key was used for another request (another path, "
                                            "fields or file); use a new key for a new request.")
        return record.get("job_id")

    async def remember(self, job_id: str | None = None) -> None:
        """The request succeeded: its key now means it (for `job_id`'s life, or the time to live)."""
        if self.digest is None or not self.fingerprint:
            return
        record = {"fingerprint": self.fingerprint, "job_id": job_id, "created_at": time.time(),
                  "expires_at": None if job_id else time.time() + self.keys.ttl_s}
        await anyio.to_thread.run_sync(self.keys._save, self.digest, record)


async def fingerprint(request: Request, data: bytes) -> str:
    """SHA-256 of what makes a request this request: its path and query, every form field (a file by its name;
    `data`, the upload's bytes, counts once)."""
    form = await request.form()  # already parsed for the route: Starlette keeps it
    fields = sorted((name, (value.filename or "") if isinstance(value, UploadFile) else value)
                    for name, value in form.multi_items())
    digest = hashlib.sha256(orjson.dumps([request.url.path, request.url.query, fields]))
    digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def _check(key: str) -> str:
    """The key without the quotes of its structured-field form (`"abc"`), if it is a short visible-ASCII string."""
    key = key.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(32 < ord(c) < 127 for c in key):
        raise InvalidIdempotencyKeyError(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters "
                                         "(e.g. a UUID).")
    return key


async def _held(request: Request, key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Makes a retry safe: the same key with the same request gives the "
        "same job (or answer); with another request, 422; while the first still runs, 409. See docs/api.md.",
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"])] = None) -> AsyncIterator[Held]:
    async with request.app.state.idempotency.hold(key) as held:
        yield held


IdempotencyKey = Annotated[Held, Depends(_held)]
"""A route parameter: the request's `Idempotency-Key`, held while the route runs."""

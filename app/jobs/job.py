"""What a job is: its record (`Job`), how it and its files are named, and what of it a client may have now.

A job is one photo turned into one or more output files, asynchronously: submitted (`queued`), taken
by a worker (`running`, with a `stage` and a `progress` in [0, 1]), then `succeeded` (its files can be
downloaded until it expires), `failed` (with an `error`) or `cancelled`. The queues (`app.jobs.base`)
keep it in a `JobStore`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.errors import SharpError
from app.jobs.errors import JobExpiredError, JobNotFinishedError, JobNotFoundError, ResultFailedError
from app.outputs import FORMATS
from app.vocabulary import FINAL_JOB_STATUSES, JobStatus

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
"""`secrets.token_urlsafe(24)`: 192 random bits in 32 URL-safe characters. Anything else is not a job."""


def new_job_id() -> str:
    return secrets.token_urlsafe(24)


def check_job_id(job_id: str) -> str:
    """`job_id` if it can be one of ours, else `JobNotFoundError` (before any file is looked at)."""
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise JobNotFoundError(f"No job {job_id[:64]!r}.")
    return job_id


def result_name(format_name: str) -> str:
    """The file name of a job's result in this format, also the last part of its URL (`app.outputs`' rule)."""
    return FORMATS[format_name].result_file


RESULT_FORMATS = {result_name(name): name for name in FORMATS}
"""`result.ply` -> `ply`, `result.vertex.ply` -> `ply_vertex`, `preview.png` -> `preview`, ..."""

SEQUENCE_ZIP = "sequence.zip"
"""A clip job's files in one archive (the same paths inside), made once every frame is done."""
SEQUENCE_FILE_PATTERN = re.compile(r"frames/[0-9]{6}(\.[a-z0-9]+){1,2}|manifest\.json|preview\.mp4"
                                   r"|sequence\.zip|sequence\.sogv")
"""The paths a clip job's files can have (checked before any path is built from one)."""


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass
class Job:
    """A job's whole state: what the state file holds (`to_dict`); clients see it as `JobResponse`
    (`app.http.schemas`, built by `app.http.routes.jobs.job_view`)."""

    id: str
    created_at: float
    outputs: list[str]
    status: JobStatus = "queued"
    stage: str = "queued"
    progress: float = 0.0
    filename: str | None = None
    f_px: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """`max_gaussians` (the budget of every output) and the json output's `encoding`."""
    name: str | None = None
    """The output file stem (the photo's name without suffix), once predicted."""
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    model: dict[str, str] | None = None
    metadata: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: dict[str, str] | None = None
    results: dict[str, int] = field(default_factory=dict)
    """Format -> size in bytes of its stored file (only a succeeded job has them)."""
    input_bytes: int = 0
    """Size of the stored upload (kept until the job has run)."""
    projected_bytes: int = 0
    """The size its files are expected to reach (`app.jobs.size.projected_bytes`), the upload's excluded: the
    room it reserves in the store while it is unfinished."""
    expired: str | None = None
    """Why the results are gone: `expired` (time to live) or `evicted` (size cap); None while they are there."""
    sequence: dict[str, Any] | None = None
    """A clip's job: its options (`fps`, `start`, `end`, `max_frames`, `align`); None for a photo's. Its
    `results` are then its files by path (`frames/000000.ply`, `manifest.json`, `preview.mp4`, the zip)."""
    frame: int | None = None
    """A clip's job: the frame being made (1-based), of `frames` (the header's estimate, then the count)."""
    frames: int | None = None
    call_id: str | None = None
    """The Modal function call running it (`app.jobs.modal`)."""
    requeues: int = 0
    """Times its Modal call was lost (terminated, Modal's internal failure, an eviction) and the job queued
    again on a new call (`app.jobs.modal`); 0 elsewhere."""
    webhook: dict[str, Any] | None = None
    """Where its events go and how their delivery went (`app.jobs.webhooks.webhook_of`); None: no webhook."""
    queue_position: int | None = None
    """Jobs ahead of this one (0: next); None unless queued. Computed by the queue, not stored."""
    first: str | None = None
    """The output made first, before the job succeeds (`first_output`); the others follow (`app.jobs.lazy`)."""
    pending: list[str] = field(default_factory=list)
    """Outputs of a succeeded job still to encode from its kept prediction, in order (`app.jobs.lazy`)."""
    encoding: str | None = None
    """The output being encoded from the kept prediction now; None when none is."""
    file_errors: dict[str, dict[str, str]] = field(default_factory=dict)
    """Output -> the error (`code`, `message`) of its encode, for an output that could not be made."""
    kept_bytes: int = 0
    """Size of the kept prediction (`app.jobs.store.PREDICTION_FILE`) while outputs are pending; else 0."""

    @property
    def settled(self) -> bool:
        """Final, with no output still to encode: nothing about it changes any more but its expiry."""
        return self.final and not self.pending

    @property
    def final(self) -> bool:
        return self.status in FINAL_JOB_STATUSES

    @property
    def stored_bytes(self) -> int:
        """What its files take on disk (its results, its upload and its kept prediction)."""
        return sum(self.results.values()) + self.input_bytes + self.kept_bytes

    @property
    def held_bytes(self) -> int:
        """What it counts against the jobs folder's cap (`JobStore.sweep`): a settled job's files; an unfinished
        job's (or one with outputs still to encode) upload plus its projected files (its kept prediction
        included), or what it has stored if more."""
        if self.settled:
            return self.stored_bytes
        return max(self.stored_bytes, self.input_bytes + self.projected_bytes)

    def to_dict(self) -> dict[str, Any]:
        state = asdict(self)
        del state["queue_position"], state["encoding"]
        return state

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Job:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in known})

    def finish(self, status: JobStatus, now: float, ttl_s: float, error: SharpError | None = None) -> None:
        self.status, self.finished_at, self.expires_at = status, now, now + ttl_s
        self.queue_position = None
        if status == "succeeded":
            self.stage, self.progress = "done", 1.0
        if error is not None:
            self.error = {"code": error.code, "message": error.message}

    def result_urls(self) -> dict[str, str]:
        """Format -> the URL of its file (a succeeded job's files, made or still `pending`: a download waits for
        one not made yet); a clip's job: path -> URL."""
        if self.sequence is not None:
            return {path: f"/jobs/{self.id}/{path}" for path in [*self.results, *self.pending]}
        return {name: f"/jobs/{self.id}/{result_name(name)}" for name in self.outputs
                if name in self.results or name in self.pending}

    def file_states(self) -> dict[str, str]:
        """Output -> `waiting` (not made yet), `encoding`, `ready` or `failed`; a clip's job: each of its files
        by path (none until it succeeds; then all `ready` but `sequence.zip`, made after)."""
        names = self.outputs if self.sequence is None else list(dict.fromkeys(
            [*self.results, *self.pending, *self.file_errors]))
        return {name: "ready" if name in self.results else "failed" if name in self.file_errors else
                "encoding" if name == self.encoding else "waiting" for name in names}


@dataclass(frozen=True)
class ResultFile:
    """A finished job's file: where it is, and the job it belongs to (for headers); `body`: its bytes when
    the queue read it into memory (a Modal Volume's files must not stay open while a response is sent)."""

    job: Job
    format: str
    path: Path
    body: bytes | None = None


def check_live(job: Job) -> None:
    """`JobExpiredError` if the job's files are gone (time to live, or the size cap)."""
    if job.expired is not None:
        why = "was evicted to keep the job store under its size limit" if job.expired == "evicted" else \
            "expired (SHARP_JOB_TTL_S)"
        raise JobExpiredError(f"Job {job.id} {why}; its results are gone.")


def check_result(job: Job, format_name: str) -> None:
    """That `job` has a file for `format_name`: 404 if it is a clip's job (its files are per frame) or if
    it was not asked for, 409 while unfinished or if it did not succeed."""
    if job.sequence is not None:
        raise JobNotFoundError(f"Job {job.id} is a clip's job: it has no {result_name(format_name)}; its files "
                               f"are frames/000000{FORMATS[format_name].suffix}, ... (one per frame: see the job's "
                               f"`results`), manifest.json, preview.mp4 and {SEQUENCE_ZIP}, under /jobs/{job.id}/.",
                               code="clip_job_files")
    if format_name not in job.outputs:
        raise JobNotFoundError(f"Job {job.id} was not asked for {format_name} (its outputs: "
                               f"{', '.join(job.outputs)}).", code="result_not_requested")
    check_finished(job)
    check_made(job, format_name)


def check_made(job: Job, name: str) -> None:
    """409 `result_failed` if the output (or clip file) `name` of a succeeded job could not be made."""
    if name in job.file_errors:
        error = job.file_errors[name]
        raise ResultFailedError(f"Job {job.id}'s {name} could not be made: {error['message']} "
                                f"({error['code']}); its other files are unaffected.")


def check_finished(job: Job) -> None:
    """409 unless `job` succeeded: `job_not_finished` while it runs, `job_failed` / `job_cancelled` after."""
    if job.status != "succeeded":
        if job.final:
            raise JobNotFinishedError(f"Job {job.id} {job.status}; it has no results.", code=f"job_{job.status}")
        raise JobNotFinishedError(f"Job {job.id} is {job.status}; its results are not ready yet.", retry_after_s=1)


def check_file(job: Job, path: str) -> None:
    """That `job` is a clip's and has the file `path`: 404 if not, 409 while unfinished or if it failed."""
    if job.sequence is None or not SEQUENCE_FILE_PATTERN.fullmatch(path):
        raise JobNotFoundError(f"Job {job.id} has no file {path[:100]!r}.", code="not_found")
    if job.status != "succeeded":
        check_finished(job)
    check_made(job, path)
    if path not in job.results and path not in job.pending:
        raise JobNotFoundError(f"Job {job.id} has no file {path[:100]!r}.", code="not_found")

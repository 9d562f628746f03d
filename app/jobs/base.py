"""What a job is, how it is named and reported, its errors, and the `JobQueue` interface.

A job is one photo turned into one or more output files, asynchronously: submitted (`queued`), taken
by a worker (`running`, with a `stage` and a `progress` in [0, 1]), then `succeeded` (its files can be
downloaded until it expires), `failed` (with an `error`) or `cancelled`. Two implementations share this
interface: `app.jobs.local` (a worker task in this process) and `app.jobs.modal` (Modal's own queue:
each job is a spawned call of the GPU class). Both keep their state and results in a `JobStore`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from app.budget import budget_count
from app.errors import InvalidRequestError, SharpError
from app.outputs import FORMATS, check_options
from app.vocabulary import FINAL_JOB_STATUSES, JobStatus

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
"""`secrets.token_urlsafe(24)`: 192 random bits in 32 URL-safe characters. Anything else is not a job."""

STAGE_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("decode", 0.02), ("preprocess", 0.02), ("forward", 0.88), ("postprocess", 0.03), ("encode", 0.05),
)
"""The share of a job's progress each stage covers, in order; the forward pass is ~90 % of the time on
any device, the rest is small (measured: postprocess is 2 % of the forward on CPU, encoding less)."""

_STAGE_START = {name: sum(w for _, w in STAGE_WEIGHTS[:i]) for i, (name, _) in enumerate(STAGE_WEIGHTS)}
_STAGE_WEIGHT = dict(STAGE_WEIGHTS)


def overall_progress(stage: str, fraction: float, frame: int | None = None, frames: int | None = None) -> float:
    """A job's progress in [0, 1] when `stage` is `fraction` done; for a clip, of frame `frame` (1-based) of
    `frames` (each frame an equal share; its preview render counts as the end of its encode)."""
    if frame is not None and frames:
        within = 1.0 if stage == "preview" else overall_progress(stage, fraction)
        return min(1.0, (frame - 1 + within) / frames)
    if stage not in _STAGE_START:
        return 0.0
    return min(1.0, _STAGE_START[stage] + _STAGE_WEIGHT[stage] * max(0.0, min(1.0, fraction)))


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

DEFAULT_OUTPUTS = [name for name, fmt in FORMATS.items() if fmt.kind == "scene"]
"""What a job makes when it names no outputs: every scene format (renders cost more: ask for them)."""
DEFAULT_SEQUENCE_OUTPUTS = ["spz"]
"""What a clip's job makes for each frame when it names no outputs: the compact format (about 16 B a Gaussian,
a quarter of the PLY), so that a clip of the real model's size fits the store's default cap; the manifest and
the preview come with every clip."""
SEQUENCE_ZIP = "sequence.zip"
"""A clip job's files in one archive (the same paths inside), made once every frame is done."""
SEQUENCE_FILE_PATTERN = re.compile(r"frames/[0-9]{6}(\.[a-z0-9]+){1,2}|manifest\.json|preview\.mp4"
                                   r"|sequence\.zip|sequence\.sogv")
"""The paths a clip job's files can have (checked before any path is built from one)."""


def parse_outputs(value: str | None) -> list[str]:
    """`ply,spz` -> `["ply", "spz"]` (registry order, no duplicates); empty or None: `DEFAULT_OUTPUTS`."""
    names = [part.strip().lower() for part in (value or "").split(",") if part.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise InvalidRequestError(f"outputs: unknown format {', '.join(map(repr, unknown))}; use a "
                                  f"comma-separated subset of: {', '.join(FORMATS)}.")
    return [name for name in FORMATS if name in names] if names else list(DEFAULT_OUTPUTS)


def first_output(outputs: list[str], first: str | None) -> str:
    """The output a job makes before it succeeds: `first` (the one its client needs first: it must be one of
    `outputs`), else the first of `outputs`.

    Raises:
        InvalidRequestError: `first` is not one of `outputs`.
    """
    if first is None:
        return outputs[0]
    name = first.strip().lower()
    if name not in outputs:
        raise InvalidRequestError(f"first: {first[:40]!r} is not one of this job's outputs ({', '.join(outputs)}).")
    return name


def keeps_prediction(outputs: list[str], sequence: Mapping[str, Any] | None) -> bool:
    """Whether a job keeps its prediction to encode its outputs one by one after it succeeds (a photo's job
    with more than one output, `app.jobs.lazy`); a clip's job, or one output, is made whole before."""
    return sequence is None and len(outputs) > 1


def check_job_options(outputs: list[str], options: Mapping[str, Any], num_gaussians: int) -> dict[str, Any]:
    """A job's options, without the unset ones: `max_gaussians`, the budget of every output (checked against
    `num_gaussians`, the model's count), and the json output's (`encoding`), refused when it writes no JSON.

    Raises:
        BudgetError, InvalidRequestError: naming what is accepted.
    """
    options = {key: value for key, value in options.items() if value is not None}
    if "max_gaussians" in options:
        budget_count(options["max_gaussians"], num_gaussians)
    json_options = json_options_of(options)
    if json_options and "json" not in outputs:
        raise InvalidRequestError(f"{', '.join(sorted(json_options))} only applies to the json output, which "
                                  "this job does not make.")
    check_options("json", json_options)
    return options


def json_options_of(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a job that are the json output's (all but the budget, which applies to every output)."""
    return {key: value for key, value in options.items() if key != "max_gaussians"}


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


# ----------------------------------------------------------------------------------------------- errors


class JobNotFoundError(SharpError):
    code = "job_not_found"
    status = 404


class JobExpiredError(SharpError):
    code = "job_expired"
    status = 410


class JobNotFinishedError(SharpError):
    code = "job_not_finished"
    status = 409


class JobQueueFullError(SharpError):
    code = "queue_full"
    status = 503
    retryable = True


class JobTooLargeError(SharpError):
    """A job whose projected files do not fit the store's cap (`app.jobs.size`)."""

    code = "job_too_large"
    status = 413


class JobStoreFullError(SharpError):
    """A job that fits the cap, but not beside the room the unfinished jobs reserve: retry once they are done."""

    code = "store_full"
    status = 503
    retryable = True


class ResultFailedError(SharpError):
    """An output of a succeeded job that could not be encoded from its kept prediction (`Job.file_errors`)."""

    code = "result_failed"
    status = 409


class ResultNotReadyError(SharpError):
    """An output still being encoded after a download waited `SHARP_JOB_FILE_WAIT_S` for it: retry."""

    code = "result_encoding"
    status = 503
    retryable = True


class JobCancelledError(Exception):
    """Raised from a job's progress callback to stop its prediction at the next block boundary."""


# -------------------------------------------------------------------------------------------------- job


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


# ---------------------------------------------------------------------------------------------- the queue


class JobQueue(Protocol):
    """What the HTTP routes need from a job queue (`app.jobs.local.LocalJobQueue`,
    `app.jobs.modal.ModalJobQueue`)."""

    async def start(self) -> None:
        """Load the stored jobs (marking those that were queued or running as failed `interrupted`)."""

    async def close(self) -> None:
        """Stop the workers; unfinished jobs end as failed `interrupted`."""

    async def submit(self, data: bytes, *, filename: str | None, f_px: float | None, outputs: list[str],
                     options: dict[str, Any], sequence: dict[str, Any] | None = None,
                     projected_bytes: int = 0, first: str | None = None,
                     webhook: dict[str, Any] | None = None) -> Job:
        """Store a checked upload and queue it (`sequence`: a clip's options, see `Job.sequence`;
        `projected_bytes`: the room its files will take, `app.jobs.size`; `first`: the output made first,
        `Job.first`; `webhook`: where its events go, `app.jobs.webhooks`); `JobQueueFullError` when too many
        wait. A submission that fails leaves nothing stored."""

    async def get(self, job_id: str) -> Job:
        """The job; `JobNotFoundError` (unknown or malformed id), `JobExpiredError`."""

    async def cancel(self, job_id: str) -> Job:
        """Cancel an unfinished job (and delete its files); delete a finished one. Returns its last state."""

    async def result(self, job_id: str, format_name: str) -> ResultFile:
        """A succeeded job's file; `JobNotFinishedError` before, `JobNotFoundError` for an output it has not."""

    async def file(self, job_id: str, path: str) -> ResultFile:
        """A succeeded clip job's file at `path` (`check_file` for the errors)."""

    def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then again after every change until it is final."""
        ...

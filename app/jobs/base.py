"""The `JobQueue` interface the HTTP routes use. Two implementations share it: `app.jobs.local` (a worker
task in this process) and `app.jobs.modal` (Modal's own queue: each job is a spawned call of the GPU class).
Both keep their jobs (`app.jobs.job`) and results in a `JobStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from app.jobs.job import Job, ResultFile


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

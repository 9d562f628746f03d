"""Asynchronous jobs: submit a photo, follow its progress, download its results later.

`job` (the `Job` record, its names, what a client may have of it), `errors`, `options` (what a job
is asked to make), `progress`, `base` (the `JobQueue` interface), `store` (state and results on disk, time to
live, size cap), `local` (this process's worker), `modal` (Modal's queue: spawned GPU calls).
"""

from app.jobs.base import JobQueue
from app.jobs.job import Job, ResultFile
from app.jobs.store import JobStore

__all__ = ["Job", "JobQueue", "JobStore", "ResultFile"]

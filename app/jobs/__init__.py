"""Asynchronous jobs: submit a photo, follow its progress, download its results later.

`base` (the `Job`, its errors, the `JobQueue` interface), `store` (state and results on disk, time to
live, size cap), `local` (this process's worker), `modal` (Modal's queue: spawned GPU calls).
"""

from app.jobs.base import Job, JobQueue, ResultFile
from app.jobs.store import JobStore

__all__ = ["Job", "JobQueue", "JobStore", "ResultFile"]

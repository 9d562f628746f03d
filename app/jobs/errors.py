"""The errors of jobs: what a client of the jobs API is told when a job, or one of its files, cannot be had."""

from __future__ import annotations

from app.errors import BusyError, SharpError


class JobNotFoundError(SharpError):
    code = "job_not_found"
    status = 404


class JobExpiredError(SharpError):
    code = "job_expired"
    status = 410


class JobNotFinishedError(SharpError):
    code = "job_not_finished"
    status = 409


class JobQueueFullError(BusyError):
    code = "queue_full"


class JobTooLargeError(SharpError):
    """A job whose projected files do not fit the store's cap (`app.jobs.size`)."""

    code = "job_too_large"
    status = 413


class JobStoreFullError(BusyError):
    """A job that fits the cap, but not beside the room the unfinished jobs reserve: retry once they are done."""

    code = "store_full"


class ResultFailedError(SharpError):
    """An output of a succeeded job that could not be encoded from its kept prediction (`Job.file_errors`)."""

    code = "result_failed"
    status = 409


class ResultNotReadyError(BusyError):
    """An output still being encoded after a download waited `SHARP_JOB_FILE_WAIT_S` for it: retry."""

    code = "result_encoding"


class JobCancelledError(Exception):
    """Raised from a job's progress callback to stop its prediction at the next block boundary."""

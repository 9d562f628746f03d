"""Jobs on disk: one directory per job under `SHARP_JOBS_DIR`, bounded in time and in size.

    <jobs dir>/.lock, .holder              the server that owns the folder (`claim`; local servers only)
    <jobs dir>/<job id>/job.json           the job's state (`Job.to_dict()`), rewritten on every status change
    <jobs dir>/<job id>/input              the upload, until the job has run (a clip's: until its preview
                                           is made, when that is made after it: `app.jobs.lazy`)
    <jobs dir>/<job id>/result.<ext>       one file per requested output (`result.vertex.ply` for ply_vertex)
    <jobs dir>/<job id>/prediction.npz     a photo's prediction, kept (lossless) while some of its outputs are
                                           still to encode (`app.jobs.lazy`), deleted once all are made
    <jobs dir>/<job id>/sequence/...      a clip's job: its files (frames/000000.ply, ..., manifest.json,
                                           preview.mp4, sequence.zip), instead of result files
    <jobs dir>/<job id>/call               Modal only: the id of the function call running it, written by
                                           the web container alone (the worker never writes it)
    <jobs dir>/<job id>/work/000016.npz    Modal only: a clip's frame predicted in another GPU container
                                           (`app.sequence.fanout`), until the job's worker has used it

Every file is written atomically (`write_atomically`: a temporary file renamed into place), so a crash
leaves either the old file or the new one, never half of one. Job ids are checked against
`JOB_ID_PATTERN` before any path is built from them.

Limits (`sweep`): a finished job's files are deleted `SHARP_JOB_TTL_S` after it finished. The size cap
`SHARP_JOBS_MAX_BYTES` counts what every job holds or reserves (`Job.held_bytes`: a finished job's files; an
unfinished job's upload plus its projected files, or what it has written if that is more); when the sum
passes the cap, finished jobs' files go, the oldest finished first. A submission makes its room at once
(any finished job may go); any other sweep (after a job finishes, periodically) spares the job that finished
last, so that a job never loses its files to its own end (see `app.jobs.size`). Either way the state file
stays behind (`expired` set), so that the job's URLs answer 410 rather than 404, for one more time to live;
then the directory goes too. A succeeded job with outputs still to encode (not `Job.settled`) counts as
an unfinished one: it reserves its projection and is neither expired nor evicted until its last is made.

One server per folder (`claim`): a server holds `<jobs dir>/.lock` (an exclusive `filelock` lock) for its
whole life and writes who it is to `<jobs dir>/.holder`; a second server finds the lock taken and stops
before it reads any job (`JobsFolderBusyError`). Start-up work (marking interrupted jobs, `remove_orphans`:
directories without a state file, older than `ORPHAN_AGE_S`, left by a crash mid-submission) runs only
under the lock.

A directory whose state file is damaged (not JSON, a field of the wrong type, an id not its name) is set
aside at start-up as `.damaged-<name>` with an error in the log; the server starts without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import orjson
from filelock import FileLock, Timeout
from pydantic import TypeAdapter, ValidationError

from app.files import write_atomically
from app.jobs.errors import JobNotFoundError
from app.jobs.job import SEQUENCE_FILE_PATTERN, SEQUENCE_ZIP, Job, check_job_id, result_name
from app.sequence.run import PREVIEW_FILE

LOGGER = logging.getLogger(__name__)

DAMAGED_PREFIX = ".damaged-"
"""A damaged job's directory is renamed to this prefix + its name at start-up (names starting with a dot are
not read again)."""
_JOB_STATE = TypeAdapter(Job)
"""Checks a loaded state file's fields against `Job`'s types."""

STATE_FILE = "job.json"
INPUT_FILE = "input"
CALL_FILE = "call"
PREDICTION_FILE = "prediction.npz"
SEQUENCE_DIR = "sequence"
WORK_DIR = "work"
LOCK_FILE = ".lock"
HOLDER_FILE = ".holder"
ORPHAN_AGE_S = 60.0
"""A job directory without a state file older than this is a submission that never finished (removed at
start-up); a younger one may be a submission being written by this server."""


class JobsFolderBusyError(RuntimeError):
    """Another server holds the jobs folder (the message names the folder and the holder)."""


class JobStore:
    """The job directories under `root` (created on first use)."""

    def __init__(self, root: Path, *, ttl_s: float, max_bytes: int) -> None:
        self.root = Path(root)
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._lock: FileLock | None = None

    # ------------------------------------------------------------------------------------------ owner

    def claim(self, holder: str) -> None:
        """Hold the folder's lock until `release` (a second call is a no-op); `holder` (who is asking: pid,
        address) is written to `HOLDER_FILE` for whoever finds the lock taken.

        Raises:
            JobsFolderBusyError: another process holds it; its message names the folder and that holder.
        """
        if self._lock is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / LOCK_FILE, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            try:
                other = (self.root / HOLDER_FILE).read_text().strip() or "unknown"
            except OSError:
                other = "unknown"
            raise JobsFolderBusyError(f"the jobs folder {self.root} is in use by another server ({other}); "
                                      "stop it, or give this one its own SHARP_JOBS_DIR") from None
        self._lock = lock
        write_atomically(self.root / HOLDER_FILE, [holder.encode()])

    def release(self) -> None:
        """Let go of the folder's lock (taken by `claim`)."""
        if self._lock is not None:
            (self.root / HOLDER_FILE).unlink(missing_ok=True)
            self._lock.release()
            self._lock = None

    def remove_orphans(self, now: float | None = None) -> list[str]:
        """Delete job directories that have no state file and are older than `ORPHAN_AGE_S` (a submission
        cut short); the names removed. Run it only while holding the folder (`claim`)."""
        now = time.time() if now is None else now
        removed = []
        if not self.root.is_dir():
            return removed
        for directory in self.root.iterdir():
            if directory.name.startswith(".") or not directory.is_dir() or (directory / STATE_FILE).exists():
                continue
            try:
                check_job_id(directory.name)
                age = now - directory.stat().st_mtime
            except (JobNotFoundError, OSError):
                continue
            if age >= ORPHAN_AGE_S:
                LOGGER.warning("Removing %s: a job directory without %s, %.0f s old (a submission cut short)",
                               directory, STATE_FILE, age)
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory.name)
        return removed

    def directory(self, job_id: str) -> Path:
        return self.root / check_job_id(job_id)

    # ----------------------------------------------------------------------------------------- state

    def save(self, job: Job) -> None:
        directory = self.directory(job.id)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / STATE_FILE, [orjson.dumps(job.to_dict())])

    def load(self, job_id: str) -> Job | None:
        """The job stored under `job_id`; None if there is none. Raises ValueError (pydantic's
        `ValidationError` included) for a state file that is not a job's: not JSON, a field of the wrong type,
        an id that is not its directory's name."""
        directory = self.directory(job_id)
        try:
            state = orjson.loads((directory / STATE_FILE).read_bytes())
        except FileNotFoundError:
            return None
        if not isinstance(state, dict):
            raise ValueError(f"{STATE_FILE} holds a JSON {type(state).__name__}, not an object")
        job = _JOB_STATE.validate_python(asdict(Job.from_dict(state)))
        if job.id != job_id:
            raise ValueError(f"its job id {job.id[:64]!r} is not its directory's name")
        with contextlib.suppress(FileNotFoundError):
            job.call_id = (directory / CALL_FILE).read_text().strip() or job.call_id
        return job

    def save_call(self, job_id: str, call_id: str) -> None:
        """Record the Modal function call running the job (see the module docstring)."""
        write_atomically(self.directory(job_id) / CALL_FILE, [call_id.encode()])

    def load_all(self) -> list[Job]:
        """Every stored job, oldest first; unreadable directories are logged and skipped."""
        jobs = []
        if not self.root.is_dir():
            return jobs
        for directory in self.root.iterdir():
            if not directory.is_dir() or directory.name.startswith("."):
                continue
            try:
                job = self.load(directory.name)
            except JobNotFoundError:  # not a job id: not ours
                LOGGER.warning("Ignoring %s in the jobs directory: not a job's directory", directory)
                continue
            except Exception as error:  # a damaged job must not stop the server: set it aside, for a person to see
                self._set_aside(directory, error)
                continue
            if job is not None:
                jobs.append(job)
        return sorted(jobs, key=lambda job: job.created_at)

    def _set_aside(self, directory: Path, error: Exception) -> None:
        aside = directory.with_name(f"{DAMAGED_PREFIX}{directory.name}")
        try:
            directory.rename(aside)
        except OSError as rename_error:
            LOGGER.error("Job directory %s is damaged (%s) and could not be set aside (%s); ignoring it",
                         directory, _one_line(error), rename_error)
            return
        LOGGER.error("Job directory %s is damaged (%s); set aside as %s", directory, _one_line(error), aside.name)

    # ----------------------------------------------------------------------------------------- files

    def write_input(self, job_id: str, data: bytes) -> None:
        directory = self.directory(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / INPUT_FILE, [data])

    def read_input(self, job_id: str) -> bytes:
        return self.input_path(job_id).read_bytes()

    def input_path(self, job_id: str) -> Path:
        return self.directory(job_id) / INPUT_FILE

    def read_result(self, job_id: str, format_name: str) -> bytes | None:
        """A result's bytes (None if the file is gone), read whole so that no file stays open."""
        return _read_whole(self.result_path(job_id, format_name))

    def write_result(self, job_id: str, format_name: str, body: bytes) -> int:
        write_atomically(self.result_path(job_id, format_name), [body])
        return len(body)

    def result_path(self, job_id: str, format_name: str) -> Path:
        return self.directory(job_id) / result_name(format_name)

    def file_path(self, job_id: str, path: str) -> Path:
        """Where a clip job's file `path` is (`path` checked against `SEQUENCE_FILE_PATTERN`)."""
        if not SEQUENCE_FILE_PATTERN.fullmatch(path):
            raise ValueError(f"not a sequence file: {path!r}")
        return self.directory(job_id) / SEQUENCE_DIR / path

    def write_file(self, job_id: str, path: str, body: bytes) -> int:
        """Write a clip job's file atomically; its size."""
        return _write_into(self.file_path(job_id, path), body)

    def read_file(self, job_id: str, path: str) -> bytes | None:
        """A clip job's file (None if it is gone), read whole."""
        return _read_whole(self.file_path(job_id, path))

    def write_prediction(self, job_id: str, body: bytes) -> int:
        """Keep a photo job's prediction (`app.sequence.fanout.save_prediction`'s bytes) atomically; its size."""
        return _write_into(self.directory(job_id) / PREDICTION_FILE, body)

    def read_prediction(self, job_id: str) -> bytes | None:
        """The kept prediction's bytes (None if there is none), read whole."""
        return _read_whole(self.directory(job_id) / PREDICTION_FILE)

    def drop_input(self, job: Job) -> None:
        """Delete the upload (the job has run, and a clip's preview is made or never will be)."""
        (self.directory(job.id) / INPUT_FILE).unlink(missing_ok=True)
        job.input_bytes = 0

    def drop_prediction(self, job: Job) -> None:
        """Delete the kept prediction (every output is made, or none will be)."""
        (self.directory(job.id) / PREDICTION_FILE).unlink(missing_ok=True)
        job.kept_bytes = 0

    def write_stash(self, job_id: str, index: int, body: bytes) -> None:
        """Frame `index`'s prediction made in another container (`app.sequence.fanout.save_prediction`)."""
        _write_into(self.stash_path(job_id, index), body)

    def take_stash(self, job_id: str, index: int) -> bytes | None:
        """Frame `index`'s stashed prediction, read whole and deleted (None if there is none)."""
        path = self.stash_path(job_id, index)
        body = _read_whole(path)
        path.unlink(missing_ok=True)
        return body

    def stash_path(self, job_id: str, index: int) -> Path:
        return self.directory(job_id) / WORK_DIR / f"{index:06d}.npz"

    def zip_files(self, job_id: str, paths: Iterable[str]) -> int:
        """`SEQUENCE_ZIP` of the clip job's files `paths` (stored, not compressed: the formats that shrink
        already are), written atomically from the files on disk one at a time; its size."""
        target = self.file_path(job_id, SEQUENCE_ZIP)
        partial = target.with_name(f".{target.name}.partial")
        try:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
                for path in paths:
                    archive.write(self.file_path(job_id, path), arcname=path)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target.stat().st_size

    def delete_files(self, job: Job) -> None:
        """The job's upload and results (its state file stays)."""
        directory = self.directory(job.id)
        if directory.is_dir():
            for path in directory.iterdir():
                if path.name in (SEQUENCE_DIR, WORK_DIR) and path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.name != STATE_FILE:
                    path.unlink(missing_ok=True)
        job.results, job.input_bytes, job.kept_bytes, job.pending = {}, 0, 0, []

    def tidy(self, job: Job) -> None:
        """Delete what a job no longer needs after a run: its upload once it is final, its results unless it
        succeeded (a job that goes back to the queue keeps its upload), and any stashed frames."""
        directory = self.directory(job.id)
        shutil.rmtree(directory / WORK_DIR, ignore_errors=True)
        if job.final and PREVIEW_FILE not in job.pending:
            self.drop_input(job)
        if job.status != "succeeded":
            for format_name in job.outputs:
                self.result_path(job.id, format_name).unlink(missing_ok=True)
            shutil.rmtree(directory / SEQUENCE_DIR, ignore_errors=True)  # a clip's: nothing partial is kept
            job.results, job.pending = {}, []
            self.drop_prediction(job)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.directory(job_id), ignore_errors=True)

    # ---------------------------------------------------------------------------------------- limits

    def sweep(self, jobs: Iterable[Job], now: float, *, spare_last: bool = True) -> tuple[list[Job], list[Job]]:
        """Apply the time to live and the size cap to `jobs` (all of them, as the caller knows them).
        `spare_last`: keep the files of the job that finished last (module docstring); False when the room
        is made for a job just submitted, which is newer than all of them.

        Returns (jobs whose files were deleted, their state saved with `expired` set; jobs removed for
        good, state file included). Unfinished jobs, and finished ones with outputs still to encode (not
        `Job.settled`), are never touched.
        """
        jobs = list(jobs)
        expired, removed = [], []
        for job in jobs:
            if not job.settled or job.expires_at is None:
                continue
            if job.expired is not None and now >= job.expires_at + self.ttl_s:
                self.remove(job.id)
                removed.append(job)
            elif job.expired is None and now >= job.expires_at:
                self._expire(job, "expired", now)
                expired.append(job)
        gone = {job.id for job in removed}
        live = [job for job in jobs if job.id not in gone]
        total = sum(job.held_bytes for job in live)
        finished = sorted((j for j in live if j.settled and j.expired is None), key=lambda j: j.finished_at or 0)
        for job in finished[:-1] if spare_last else finished:
            if total <= self.max_bytes:
                break
            if not job.stored_bytes:
                continue
            total -= job.stored_bytes
            LOGGER.info("Evicting the results of job %s (%d bytes) to stay under SHARP_JOBS_MAX_BYTES=%d",
                        job.id, job.stored_bytes, self.max_bytes)
            self._expire(job, "evicted", now)
            expired.append(job)
        if total > self.max_bytes:
            LOGGER.warning("The job store holds or reserves %d bytes, over SHARP_JOBS_MAX_BYTES=%d, with nothing "
                           "left to evict", total, self.max_bytes)
        return expired, removed

    def reserved_bytes(self, jobs: Iterable[Job]) -> int:
        """What the unsettled ones of `jobs` (unfinished, or with outputs still to encode) hold or reserve
        (`Job.held_bytes`): room no eviction can make."""
        return sum(job.held_bytes for job in jobs if not job.settled)

    def _expire(self, job: Job, reason: str, now: float) -> None:
        self.delete_files(job)
        job.expired = reason
        job.expires_at = min(job.expires_at or now, now)
        self.save(job)


def _one_line(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())[:300]
    return " ".join(str(error).split())[:300] or type(error).__name__


def _read_whole(path: Path) -> bytes | None:
    """The file's bytes, read whole so that no file stays open; None if it is gone."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_into(path: Path, body: bytes) -> int:
    """`body` written atomically at `path`, its folder made first if need be; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, [body])
    return len(body)

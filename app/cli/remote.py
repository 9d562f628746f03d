"""`python -m app remote`: send photos to a sharp-serve server as jobs, watch them, download the results.

    python -m app remote -i IMAGE_OR_DIR -o OUT_DIR --url URL [--api-key K] [--format ply,spz] [--f-px F]
                         [--max-gaussians N|F]
    python -m app remote -i CLIP -o OUT_DIR --url URL [--fps F] [--start S] [--end E] [--max-frames N] [--align A]

A clip (docs/video.md) is one job: its progress line says the frame, and its files go to
OUT_DIR/<stem>/frames/000000<suffix>, ..., OUT_DIR/<stem>/manifest.json and OUT_DIR/<stem>/preview.mp4.

Every image is submitted first (`POST /jobs`; a 503 is retried after its `Retry-After`), so a server
with several GPU containers (Modal) works on them in parallel; then each job is followed through its
server-sent events (`GET /jobs/{id}/events`, polling `GET /jobs/{id}` if the stream breaks) with a
progress line on stderr, and its files are downloaded to OUT_DIR/<stem><suffix> (the registry's rule,
`app.outputs`: `<stem>.vertex.ply` for ply_vertex). It imports no torch. Exit status: 0 when every image
succeeded, 1 when any failed (one line each), 2 for a usage error; every error is one `error:` line, never
a traceback. The event stream is parsed by `httpx-sse`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from app.budget import budget_count
from app.cli import video
from app.cli.common import UsageError, f_px_option, gaussians_kept, max_gaussians_option, output_folder, settings_with
from app.errors import SharpError
from app.files import write_atomically
from app.outputs import FORMATS
from app.vocabulary import FINAL_JOB_STATUSES

FINAL = FINAL_JOB_STATUSES
MAX_SUBMIT_WAIT_S = 900.0
"""How long one submission keeps retrying 503s (queue full, model loading) before the image fails."""


class RemoteError(Exception):
    """One image failed; the message is what the user sees."""


def add_parser(commands: Any) -> None:
    """Add the `remote` command to `commands`."""
    remote = commands.add_parser("remote", help="predict on a sharp-serve server (jobs API) and download")
    remote.add_argument("-i", "--input", type=Path, required=True,
                        help="an image file, a directory of images, or a video clip (a scene per frame)")
    remote.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    remote.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    remote.add_argument("--api-key", default=os.environ.get("SHARP_API_KEY") or None,
                        help="bearer key (default: $SHARP_API_KEY)")
    remote.add_argument("--format", default="ply", help=f"comma-separated subset of {','.join(FORMATS)} "
                        "(default: ply)")
    remote.add_argument("--f-px", type=f_px_option, help="focal length in pixels (default: from EXIF, else 30 mm)")
    remote.add_argument("--max-gaussians", type=max_gaussians_option, metavar="N|F",
                        help="a splat budget for every output: merge neighbouring Gaussians down to N (or the "
                             "fraction F in (0, 1]); default: all")
    video.add_arguments(remote)
    remote.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The `remote` command; returns the exit status (an unexpected fault is one `error:` line, status 1)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted (jobs already submitted keep running on the server)", file=sys.stderr)
        return 130
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    formats = [name.strip().lower() for name in args.format.split(",") if name.strip()]
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        return _usage(f"--format: unknown format {', '.join(unknown) or '(none)'}; use some of {', '.join(FORMATS)}")
    if not args.url.startswith(("http://", "https://")):
        return _usage(f"--url must start with http:// or https://, got {args.url!r}")
    try:
        clip, images = video.find_inputs(args)
        clip_fields = video.form_fields(args, settings_with()) if clip else {}
        with output_folder(args.output):  # a run that fails before writing a file leaves no folder
            return _run_jobs(args, formats, images, clip_fields)
    except UsageError as error:
        return _usage(str(error))


def _run_jobs(args: argparse.Namespace, formats: list[str], images: list[Path], clip_fields: dict[str, str]) -> int:
    """Submit every image (or the clip, with `clip_fields`), follow the jobs, download their files."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    timeout = httpx.Timeout(60.0, connect=10.0)
    # Modal answers a request still running after 150 s with a 303 to where its result will be.
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=timeout, follow_redirects=True) as client:
        try:
            health = client.get("/health")
        except httpx.HTTPError as error:
            print(f"error: cannot reach {args.url}: {error}", file=sys.stderr)
            return 1
        problem = _budget_problem(args.max_gaussians, health)
        if problem:
            return _usage(problem)
        jobs: list[tuple[Path, str | None, str]] = []
        for path in images:
            try:
                fields = {**clip_fields, **({"max_gaussians": str(args.max_gaussians)}
                                                        if args.max_gaussians is not None else {})}
                jobs.append((path, _submit(client, path, formats, args.f_px, fields), ""))
            except RemoteError as error:
                jobs.append((path, None, str(error)))
        failures = 0
        for number, (path, job_id, problem) in enumerate(jobs, start=1):
            prefix = f"[{number}/{len(jobs)}] {path.name}"
            try:
                if job_id is None:
                    raise RemoteError(problem)
                job = _follow(client, job_id, prefix)
                written = _download(client, job, path.stem, args.output)
            except (RemoteError, httpx.HTTPError, OSError) as error:
                failures += 1
                print(f"{prefix}: failed: {error}", file=sys.stderr)
                continue
            meta = job.get("metadata") or {}
            frames = f"{job['frames']} frames of " if job.get("frames") else ""
            shown = [written[0].parent] if job.get("frames") else written
            kept = meta.get("num_gaussians") or 0
            gaussians = gaussians_kept(kept, meta.get("total_gaussians") or kept)
            print(f"{prefix}: {frames}{meta.get('image_width')}x{meta.get('image_height')} px, "
                  f"{gaussians} -> {', '.join(str(p) for p in shown)}")
    return 1 if failures else 0


def _budget_problem(max_gaussians: int | float | None, health: httpx.Response) -> str | None:
    """Why the server's model cannot keep `max_gaussians` (above its count), when its /health says the count."""
    if max_gaussians is None:
        return None
    try:
        num_gaussians = int(health.json()["num_gaussians"])
    except (ValueError, KeyError, TypeError):
        return None  # not known yet (loading): the server refuses a bad budget itself
    try:
        budget_count(max_gaussians, num_gaussians)
    except SharpError as error:
        return f"--max-gaussians: {error.message}"
    return None


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _submit(client: httpx.Client, path: Path, formats: list[str], f_px: float | None,
            fields: dict[str, str]) -> str:
    data = {"outputs": ",".join(formats), **({"f_px": str(f_px)} if f_px is not None else {}), **fields}
    deadline = time.monotonic() + MAX_SUBMIT_WAIT_S
    try:
        content = path.read_bytes()
    except OSError as error:
        raise RemoteError(f"cannot read {path}: {error.strerror or error}") from None
    while True:
        try:
            response = client.post("/jobs", data=data, files={"file": (path.name, content)})
        except httpx.HTTPError as error:
            raise RemoteError(f"could not submit: {error}") from None
        if response.status_code == 503 and time.monotonic() < deadline:
            wait = _retry_after(response)
            print(f"{path.name}: server busy ({_message(response)}); retrying in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)
            continue
        if response.status_code != 202:
            raise RemoteError(_message(response))
        return response.json()["id"]


def _follow(client: httpx.Client, job_id: str, prefix: str) -> dict[str, Any]:
    """The job's final state, showing its progress on stderr."""
    bar = _ProgressLine(prefix)
    job: dict[str, Any] = {}
    try:
        for job in _events(client, job_id):
            bar.show(job)
            if job["status"] in FINAL:
                break
    except (httpx.HTTPError, ValueError, KeyError):
        pass  # the stream broke: poll instead
    while job.get("status") not in FINAL:
        response = client.get(f"/jobs/{job_id}")
        if response.status_code != 200:
            raise RemoteError(_message(response))
        job = response.json()
        bar.show(job)
        if job["status"] not in FINAL:
            time.sleep(1.0)
    bar.done()
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise RemoteError(f"job {job['status']}: {error.get('message') or error.get('code') or ''}".rstrip(": "))
    return job


def _events(client: httpx.Client, job_id: str) -> Iterator[dict[str, Any]]:
    with connect_sse(client, "GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(60.0, read=120.0)) as source:
        if source.response.status_code != 200:
            source.response.read()
            raise RemoteError(_message(source.response))
        for event in source.iter_sse():
            if event.event == "job" and event.data:
                yield json.loads(event.data)


def _download(client: httpx.Client, job: dict[str, Any], stem: str, output: Path) -> list[Path]:
    """A photo's files as OUT/<stem><suffix>; a clip's as OUT/<stem>/frames/..., manifest.json, preview.mp4
    (the zip of them is not fetched)."""
    written = []
    for format_name, url in job["results"].items():
        if job.get("frames") is not None:
            if not video.is_clip_file(format_name) or format_name == video.SEQUENCE_ZIP:
                continue
            destination = output / stem / format_name
            destination.parent.mkdir(parents=True, exist_ok=True)
        else:
            destination = output / FORMATS[format_name].filename(stem)
        while not _fetch(client, url, format_name, destination):
            pass
        written.append(destination)
    return written


def _fetch(client: httpx.Client, url: str, what: str, destination: Path) -> bool:
    """Download `url` into `destination` (True); False after waiting out a 503 `result_encoding` (a job's output
    still being made after the server's wait for it: ask again)."""
    with client.stream("GET", url) as response:
        if response.status_code != 200:
            response.read()
            if response.status_code == 503 and _code(response) == "result_encoding":
                time.sleep(_retry_after(response))
                return False
            raise RemoteError(f"downloading {what}: {_message(response)}")
        write_atomically(destination, response.iter_bytes())
    return True


def _code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(60.0, max(1.0, float(response.headers.get("retry-after", "5"))))
    except ValueError:
        return 5.0


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} ({response.status_code} {error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


class _ProgressLine:
    """`prefix: stage 42%` on stderr: rewritten in place on a terminal, one line per change of stage or
    quarter elsewhere (logs, pipes)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, str, int] | None = None

    def show(self, job: dict[str, Any]) -> None:
        status, stage, progress = job.get("status", ""), job.get("stage", ""), float(job.get("progress") or 0)
        frame = f"frame {job['frame']}/{job['frames']} " if job.get("frame") and status == "running" else ""
        if status == "queued":
            position = job.get("queue_position")
            text = f"queued ({position} ahead)" if position else "queued"
        else:
            text = f"{status} {frame}{stage} {100 * progress:3.0f}%"
        key = (status, frame + stage, int(100 * progress) if self.tty else int(4 * progress))
        if key == self.last:
            return
        self.last = key
        if self.tty:
            bar = "#" * int(30 * progress)
            sys.stderr.write(f"\r{self.prefix}: [{bar:<30}] {text}\033[K")
        else:
            sys.stderr.write(f"{self.prefix}: {text}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.last is not None:
            sys.stderr.write("\n")

"""Lazy outputs: how long a job's first file takes when the job asks for every format, beside a job asking it alone.

    python -m bench.lazy [--preset tiny_full] [--repeat 3] [--first spz]

Starts `python -m app serve` on loopback (its own jobs folder) and, on the conformance photo, alternates two
jobs: one with `outputs=spz` alone, one with every scene format and `first=spz` (what the page asks for). For
each it times, from the start of `POST /jobs` to the end of `GET result.spz`, the client's way: the job's event
stream to `succeeded`, then the download. The job with every format is followed to its end (every file ready)
before the next job starts, so that its background encodes do not slow the next measurement. Prints each
run, the medians, `spz_ready_all_over_alone:` (the goal: at most 1.5) and how long every file took.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.outputs import SCENE_FORMATS
from bench.common import CONFORMANCE_DIR, REPO
from bench.load import HOST
from tests.helpers import free_port, sse_messages, stop_process, wait_ready


def start_server(port: int, preset: str, jobs_dir: Path, cwd: Path | None = None) -> subprocess.Popen:
    """`python -m app serve` of this repository (or of the checkout `cwd`) on loopback."""
    env = {**os.environ, "SHARP_DEVICE": "cpu", "SHARP_LOG_LEVEL": "warning", "SHARP_JOBS_DIR": str(jobs_dir)}
    env.pop("SHARP_API_KEY", None)
    if cwd is not None:
        env["PYTHONPATH"] = str(cwd)
    command = [sys.executable, "-m", "app", "serve", "--preset", preset, "--host", HOST, "--port", str(port)]
    return subprocess.Popen(command, cwd=cwd or REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def follow(client: httpx.Client, job_id: str, until_settled: bool) -> dict:
    """The job's events until it is final (`until_settled`: until the server ends the stream: every file made)."""
    job: dict = {}
    with client.stream("GET", f"/jobs/{job_id}/events") as response:
        response.raise_for_status()
        for kind, data in sse_messages(response):
            if kind == "job":
                job = orjson.loads(data)
                if not until_settled and job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
    return job


def timed_job(client: httpx.Client, files: dict, data: dict[str, str],
              download: str | None = None) -> tuple[float, float]:
    """Seconds from submitting a job (`files`, `data`: the form of `POST /jobs`) to its success and, given
    `download`, that result downloaded; and to every file ready (the job followed to its end). The job is then
    deleted."""
    start = time.perf_counter()
    response = client.post("/jobs", files=files, data=data)
    response.raise_for_status()
    job_id = response.json()["id"]
    job = follow(client, job_id, until_settled=False)
    if job.get("status") != "succeeded":
        raise RuntimeError(f"the job ended {job.get('status')}: {job.get('error')}")
    if download is not None:
        client.get(job["results"][download]).raise_for_status()
    ready = time.perf_counter() - start
    follow(client, job_id, until_settled=True)
    all_ready = time.perf_counter() - start
    client.delete(f"/jobs/{job_id}")
    return ready, all_ready


def one_job(client: httpx.Client, photo: bytes, outputs: list[str], first: str) -> tuple[float, float]:
    """Seconds from submission to `first` downloaded, and to every file ready (the job followed to its end)."""
    return timed_job(client, {"file": ("coffee.png", photo, "image/png")},
                     {"outputs": ",".join(outputs), "first": first}, download=first)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny_full", help="the server's preset (tiny_full: 1,179,648 Gaussians)")
    parser.add_argument("--repeat", type=int, default=3, help="jobs of each kind (alternated)")
    parser.add_argument("--first", default="spz", choices=SCENE_FORMATS, help="the format timed")
    parser.add_argument("--image", type=Path, default=CONFORMANCE_DIR / "coffee.png")
    args = parser.parse_args()
    photo = args.image.read_bytes()
    everything = [args.first, *[name for name in SCENE_FORMATS if name != args.first]]

    port = free_port()
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="sharp-bench-lazy-") as jobs_dir:
        server = start_server(port, args.preset, Path(jobs_dir))
        try:
            wait_ready(url, server, timeout_s=600)
            with httpx.Client(base_url=url, timeout=600) as client:
                one_job(client, photo, [args.first], args.first)  # warm-up: first-call costs stay out of the figures
                alone, together, every_file = [], [], []
                for run in range(args.repeat):
                    alone.append(one_job(client, photo, [args.first], args.first)[0])
                    ready, done = one_job(client, photo, everything, args.first)
                    together.append(ready)
                    every_file.append(done)
                    print(f"run {run + 1}: {args.first} alone {alone[-1]:.2f} s; with every format {ready:.2f} s "
                          f"({args.first} first), every file {done:.2f} s", flush=True)
        finally:
            stop_process(server, timeout_s=60)
    median_alone, median_all = statistics.median(alone), statistics.median(together)
    print(f"preset: {args.preset}; outputs of the second job: {','.join(everything)}")
    print(f"{args.first}_ready_alone_s: {median_alone:.2f}")
    print(f"{args.first}_ready_with_all_s: {median_all:.2f}")
    print(f"all_files_ready_s: {statistics.median(every_file):.2f}")
    print(f"{args.first}_ready_all_over_alone: {median_all / median_alone:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A clip's job: how long from submission until it succeeds, and until its preview and zip are ready.

    python -m bench.lazy_clip [--preset tiny] [--frames 6] [--repeat 3] [--before PATH]

Starts `python -m app serve` on loopback (its own jobs folder) from this repository and, with `--before`,
a second one from that checkout of the project (an older commit, `git archive <commit> app | tar -x -C
PATH`), and submits a clip of `--frames` frames (320x192, 10 frames/s, made from the conformance photo as
the tests' `make_clip` does) with `outputs=spz`, the page's clip format, to each in turn (one warm-up job
each first). For each job it times, from the start of `POST /jobs`, the job's event stream to `succeeded`,
then to its end (every file ready: the preview and the zip, when they are made after it); the next job
starts after that end. Prints each run, then the medians `clip_succeeded_s:` and `clip_all_files_s:` (and
`before_...` with `--before`, and `succeeded_over_before:`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lazy import start_server, timed_job
from bench.load import HOST
from tests.helpers import free_port, make_clip, stop_process, wait_ready


def one_clip(client: httpx.Client, clip: bytes) -> tuple[float, float]:
    """Seconds from submission to `succeeded`, and to every file ready (the job followed to its end)."""
    return timed_job(client, {"file": ("clip.mp4", clip, "video/mp4")}, {"outputs": "spz"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, default=None, help="also serve this checkout, alternating")
    args = parser.parse_args()
    clip = make_clip(args.frames, size=(320, 192), fps=10)
    kinds = {"": None} if args.before is None else {"": None, "before_": args.before}
    times: dict[str, tuple[list[float], list[float]]] = {kind: ([], []) for kind in kinds}
    with contextlib.ExitStack() as stack:
        clients = {}
        for kind, repo in kinds.items():
            port = free_port()
            jobs_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sharp-bench-lazy-clip-"))
            server = start_server(port, args.preset, Path(jobs_dir), cwd=repo)
            stack.callback(stop_process, server, timeout_s=60)
            wait_ready(f"http://{HOST}:{port}", server, timeout_s=600)
            clients[kind] = stack.enter_context(httpx.Client(base_url=f"http://{HOST}:{port}", timeout=600))
            one_clip(clients[kind], clip)  # warm-up: first-call costs stay out of the figures
        for run in range(args.repeat):
            for kind, client in clients.items():
                done, every_file = one_clip(client, clip)
                times[kind][0].append(done)
                times[kind][1].append(every_file)
                print(f"run {run + 1} {kind or 'this checkout'}: succeeded after {done:.2f} s, every file ready "
                      f"after {every_file:.2f} s", flush=True)
    print(f"preset: {args.preset}; clip: {args.frames} frames, 320x192; outputs=spz; before: {args.before}")
    for kind, (succeeded, settled) in times.items():
        print(f"{kind}clip_succeeded_s: {statistics.median(succeeded):.2f}")
        print(f"{kind}clip_all_files_s: {statistics.median(settled):.2f}")
    if args.before is not None:
        ratio = statistics.median(times[""][0]) / statistics.median(times["before_"][0])
        print(f"succeeded_over_before: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

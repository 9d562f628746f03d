"""Load/soak benchmark: the tiny-preset server on loopback under N concurrent clients for a bounded time.

Starts `python -m app serve --preset tiny` (the production entry point: uvicorn with `app.http.server`'s
options) on 127.0.0.1 with a small queue, runs `--clients` threads that POST predictions in a loop
(`/predict` JSON, `/predict/ply`, `/predict/spz`, in turn) while a prober GETs `/health` every 100 ms, and
reports:

- requests answered, by status; how many 503s carried a `Retry-After` header;
- prediction latency (200s, queue wait included) and `/health` latency during the load, p50/p95/max;
- the server's RSS after one warm-up request per endpoint, at the end and at its peak (sampled with each
  `/health` probe).

Clients stop sending at the deadline; requests in flight then are still answered (and counted), so the
wall time exceeds `--duration` by up to the queue's length times a prediction.

Every loop is bounded in time (`--duration`) and in count (`--max-requests`). Nothing leaves 127.0.0.1.
Run: `nice -n 5 .venv/bin/python -m bench.load [--clients 8] [--duration 20] [--max-queue 2]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.helpers import free_port, stop_process, wait_ready

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ENDPOINTS = (("/predict", {"max_gaussians": "256", "encoding": "base64"}), ("/predict/ply", {}), ("/predict/spz", {}))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(values), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * pick(0.95), 1), "max_ms": round(1000 * ordered[-1], 1)}


def start_server(port: int, max_queue: int) -> subprocess.Popen:
    env = {**os.environ, "SHARP_DEVICE": "cpu", "SHARP_MAX_QUEUE": str(max_queue), "SHARP_LOG_LEVEL": "warning"}
    command = [sys.executable, "-m", "app", "serve", "--preset", "tiny", "--host", HOST, "--port", str(port)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (at most 600)")
    parser.add_argument("--max-queue", type=int, default=2, help="SHARP_MAX_QUEUE of the server")
    parser.add_argument("--max-requests", type=int, default=5000, help="stop after this many predictions in all")
    args = parser.parse_args()
    duration = min(args.duration, 600.0)

    port = free_port()
    url = f"http://{HOST}:{port}"
    server = start_server(port, args.max_queue)
    try:
        wait_ready(url, server)
        with httpx.Client(base_url=url, timeout=120) as warm:  # one request per endpoint: its buffers exist
            for path, data in ENDPOINTS:
                warm.post(path, files={"file": ("w.png", photo(0))}, data=data).raise_for_status()
        rss_start = rss_mb(server.pid)

        lock = threading.Lock()
        statuses: Counter[int] = Counter()
        retry_after_503 = 0
        predict_latency: list[float] = []
        health_latency: list[float] = []
        rss_peak = rss_start
        stop = threading.Event()
        deadline = time.monotonic() + duration
        sent = 0

        def client(index: int) -> None:
            nonlocal retry_after_503, sent
            images = [photo(index * 100 + k) for k in range(4)]
            with httpx.Client(base_url=url, timeout=120) as http:
                k = 0
                while not stop.is_set() and time.monotonic() < deadline:
                    with lock:
                        if sent >= args.max_requests:
                            return
                        sent += 1
                    path, data = ENDPOINTS[(index + k) % len(ENDPOINTS)]
                    start = time.perf_counter()
                    response = http.post(path, files={"file": ("p.png", images[k % len(images)])}, data=data)
                    elapsed = time.perf_counter() - start
                    k += 1
                    with lock:
                        statuses[response.status_code] += 1
                        if response.status_code == 200:
                            predict_latency.append(elapsed)
                        elif response.status_code == 503 and response.headers.get("retry-after", "").isdigit():
                            retry_after_503 += 1
                    if response.status_code == 503:
                        time.sleep(0.2)  # a polite client would wait Retry-After; this one keeps the queue full

        def prober() -> None:
            nonlocal rss_peak
            with httpx.Client(base_url=url, timeout=60) as http:
                while not stop.is_set() and time.monotonic() < deadline:
                    start = time.perf_counter()
                    ok = http.get("/health").status_code == 200
                    elapsed = time.perf_counter() - start
                    with lock:
                        health_latency.append(elapsed if ok else float("inf"))
                        rss_peak = max(rss_peak, rss_mb(server.pid))
                    time.sleep(0.1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        threads.append(threading.Thread(target=prober))
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=duration + 180)
        stop.set()
        wall = time.monotonic() - began
        time.sleep(1.0)
        rss_end = rss_mb(server.pid)
        rss_peak = max(rss_peak, rss_end)
        with httpx.Client(base_url=url, timeout=10) as http:
            health_after = http.get("/health").json()
    finally:
        stop_process(server, timeout_s=20)

    answered = sum(statuses.values())
    report = {
        "clients": args.clients, "duration_s": round(wall, 1), "max_queue": args.max_queue,
        "answered": answered, "by_status": dict(sorted(statuses.items())),
        "predictions_per_s": round(statuses[200] / wall, 2),
        "503_with_retry_after": f"{retry_after_503}/{statuses[503]}",
        "server_errors": sum(n for status, n in statuses.items() if status >= 500 and status != 503),
        "predict_latency": percentiles(predict_latency),
        "health_latency_during_load": percentiles(health_latency),
        "health_failures": sum(1 for v in health_latency if v == float("inf")),
        "rss_mb": {"after_warmup": round(rss_start), "end": round(rss_end), "peak": round(rss_peak),
                   "growth": round(rss_end - rss_start)},
        "queue_after": {"queue_depth": health_after["queue_depth"], "in_progress": health_after["in_progress"]},
    }
    print(f"{answered} requests answered in {wall:.1f} s by {args.clients} clients (max_queue {args.max_queue}): "
          f"{report['by_status']}")
    print(f"503s with Retry-After: {report['503_with_retry_after']}; other 5xx: {report['server_errors']}")
    print(f"predictions: {report['predictions_per_s']}/s, latency {report['predict_latency']}")
    print(f"/health during the load: {report['health_latency_during_load']}, failures {report['health_failures']}")
    print(f"server RSS (MB): {report['rss_mb']}")
    print(json.dumps(report))
    return 0 if report["server_errors"] == 0 and report["health_failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

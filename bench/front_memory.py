"""Peak memory of Modal's CPU front (`deploy.front.Front`) while it passes on 8 concurrent full-size JSON answers.

    python -m bench.front_memory [--requests 8] [--modes stream whole]

Three kinds of process, so that each one's memory is its own:

* the GPU side: `create_app` with the `tiny_full` preset (1,179,648 Gaussians, the real output size, synthetic
  weights) on the CPU, served by uvicorn on loopback: what `SharpAPI` runs in its container;
* the front, one fresh process per mode: `Front` over `FrontService`, exactly as `modal_api.fastapi_app` builds
  it, whose `forward` posts the checked request to the GPU side over loopback HTTP (standing in for the Modal
  call) and hands the answer back as `SharpAPI.respond` does:
  - `stream`: the head, then the body in pieces of `FORWARD_CHUNK_BYTES` (this code);
  - `whole`: the head, then the whole body at once (what a pickled return value holds: the code before);
* this process: N client threads that each POST the conformance photo to `/predict` (list encoding, no budget:
  ~193 MB of JSON each) at once and read the answer in pieces, counting its bytes.

Printed per mode: the front's resident memory before the requests, its peak (the kernel's VmHWM), the peak
above the start, and the bytes each client received. The GPU side's own memory (it builds each JSON whole) is
not the front's and is not counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.helpers import free_port, stop_process, wait_ready

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "data" / "conformance" / "coffee.png"


def serve_gpu_side(port: int) -> None:
    """The GPU side: the local server's app with `tiny_full`, on loopback."""
    import uvicorn

    from app.http import create_app
    from app.settings import Settings

    settings = Settings(preset="tiny_full", device="cpu", max_queue=16, cache_dir=Path(tempfile.mkdtemp()))
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")


def serve_front(port: int, gpu_port: int, mode: str) -> None:
    """The front, as `modal_api.fastapi_app` builds it, forwarding to the GPU side over HTTP."""
    import uvicorn

    from app.http import create_app
    from app.jobs.local import LocalJobQueue
    from app.settings import Settings
    from deploy.front import FORWARD_CHUNK_BYTES, ForwardedRequest, ForwardedResponse, Front, FrontService

    settings = Settings(preset="tiny_full", device="cuda", cache_dir=Path(tempfile.mkdtemp()))
    service = FrontService(settings)
    gpu = httpx.AsyncClient(base_url=f"http://127.0.0.1:{gpu_port}", timeout=None)

    async def forward(request: ForwardedRequest) -> AsyncIterator[ForwardedResponse | bytes]:
        outgoing = gpu.build_request(request.method, request.target, headers=request.headers, content=request.body)
        response = await gpu.send(outgoing, stream=True)
        try:
            headers = [(k, v) for k, v in response.headers.raw
                       if k.lower() not in (b"connection", b"transfer-encoding", b"keep-alive")]
            yield ForwardedResponse(response.status_code, headers)
            if mode == "whole":
                yield b"".join([piece async for piece in response.aiter_raw()])
            else:
                async for piece in response.aiter_raw(FORWARD_CHUNK_BYTES):
                    yield piece
        finally:
            await response.aclose()

    local = create_app(settings, service=service, job_queue=LocalJobQueue(service, settings))
    uvicorn.run(Front(local, forward, service), host="127.0.0.1", port=port, log_level="warning")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def child(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, __file__, *args], env=env, cwd=REPO)


def run_mode(mode: str, gpu_port: int, requests: int) -> None:
    port = free_port()
    front = child("--front", str(port), str(gpu_port), mode)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, front, timeout_s=600)
        before = memory_kib(front.pid)["VmRSS"]
        received = [0] * requests
        barrier = threading.Barrier(requests)
        photo = PHOTO.read_bytes()

        def client(index: int) -> None:
            with httpx.Client(base_url=url, timeout=None) as http:
                barrier.wait()
                with http.stream("POST", "/predict", files={"file": ("coffee.png", photo, "image/png")}) as answer:
                    assert answer.status_code == 200, answer.read()[:300]
                    for piece in answer.iter_raw(1 << 20):
                        received[index] += len(piece)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(requests)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        peak = memory_kib(front.pid)["VmHWM"]
        print(f"{mode:>6}: front RSS before {before / 1024:7.0f} MiB, peak {peak / 1024:7.0f} MiB "
              f"(+{(peak - before) / 1024:6.0f} MiB) for {requests} answers of "
              f"{min(received) / 1e6:.0f}-{max(received) / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s",
              flush=True)
    finally:
        stop_process(front, timeout_s=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["stream", "whole"], choices=["stream", "whole"])
    parser.add_argument("--gpu-side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--front", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu_side:
        serve_gpu_side(args.gpu_side)
        return
    if args.front:
        port, gpu_port, mode = args.front
        serve_front(int(port), int(gpu_port), mode)
        return
    gpu_port = free_port()
    gpu = child("--gpu-side", str(gpu_port))
    try:
        wait_ready(f"http://127.0.0.1:{gpu_port}", gpu, timeout_s=600)
        for mode in args.modes:
            run_mode(mode, gpu_port, args.requests)
    finally:
        stop_process(gpu, timeout_s=30)


if __name__ == "__main__":
    main()

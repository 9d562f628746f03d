"""Peak memory: of decoding + preprocessing N concurrent "decompression bomb" PNGs, old path against new; and of
``python -m app render`` on hostile scene files and on long videos.

    python -m bench.memory [--side 7000] [--size 1536] [--concurrency 1 6]
    python -m bench.memory --cases scenes renders [--before /tmp/main-checkout] [--cap-mb 4000]
    python -m bench.memory --cases server [--before /tmp/main-checkout] [--side 7000] [--concurrency 6]

Server case (`--cases server`): a tiny-preset server (`python -m app serve`, a fresh process per source
tree) takes N concurrent `POST /predict/ply` of a side x side flat PNG; its RSS is sampled every 20 ms and
printed before (after one small warm-up prediction), at its peak (the sampled maximum and the kernel's
VmHWM) and 2 s after the last answer. This tree's run must stay under `SERVER_CEILING_MB` at the peak and
within `SERVER_KEPT_MB` of the start after (exit status 1 otherwise): six 7000 x 7000 uploads hold at
most three decoded photos (`app.service.DECODE_CONCURRENCY` + the one predicted) and give their memory
back (`app.service.fix_mmap_threshold`).

Scene and render cases (`--cases scenes renders`): each runs ``python -m app render`` in a fresh process, from
this checkout and, with `--before`, from another one (e.g. main's code, ``git archive main | tar -x -C DIR``),
and prints the child's peak RSS (the kernel's ru_maxrss of the process, imports included: about 260 MB before
any work), its exit status and the last line it printed. A child whose RSS passes `--cap-mb` is killed and
shown as ``>CAP``, so a bomb cannot take the machine down. The hostile files are those of the battery
(`tests/http/hostile_inputs.py`), at full size; the render cases draw a 2,000-Gaussian scene
(the frames, not the scene, are what a long render holds).

The bomb is a flat-colour side x side RGB PNG: ~160 KB on the wire, 147 MB as uint8 pixels. Each
measurement runs in a fresh Python process, which starts N threads that wait on a barrier and then each
decode the same bytes and turn them into the network's (1, 3, size, size) input at once (the worst case
for N admitted requests). Printed: the process's peak RSS above its RSS just before the threads start.

* old: the code before this change, reproduced here: `np.array(img)` of the decoded Pillow image, then
  `torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255` and `F.interpolate(bilinear,
  align_corners=True)`, which makes two float32 copies of the whole photo (4 bytes a channel each).
* new: `app.imaging.load_image` (RGB copied out of Pillow a strip at a time) and
  `app.predictor.preprocess.resize_for_network` (gathers the 2 x 2 taps of each output sample from the uint8
  photo; O(size²) memory).
"""

from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.imaging import load_image
from app.predictor.preprocess import resize_for_network


def old_path(data: bytes, size: int) -> tuple[int, ...]:
    img = Image.open(io.BytesIO(data))
    img.load()
    rgb = np.array(img)
    del img
    pixels = torch.tensor(rgb).permute(2, 0, 1)[None].float() / 255.0
    return tuple(F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=True).shape)


def new_path(data: bytes, size: int) -> tuple[int, ...]:
    image = load_image(data)
    return tuple(resize_for_network(image.rgb, size).shape)


def rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 1e6


def reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident set size in MB: VmHWM (since the last reset), else the lifetime maximum."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def measure(path: str, bomb: Path, concurrency: int, size: int) -> None:
    """Child process: run `concurrency` threads of one path at once, print the peak RSS increase."""
    data = bomb.read_bytes()
    run = old_path if path == "old" else new_path
    run(make_png(64, (1, 2, 3)), size)  # warm up imports, allocator and torch's thread pool
    barrier = threading.Barrier(concurrency)

    def request() -> tuple[int, ...]:
        barrier.wait()
        return run(data, size)

    reset_peak_rss()
    before = rss_mb()
    if peak_rss_mb() > before + 1:
        print(f"warning: the peak RSS before the run is {peak_rss_mb() - before:.0f} MB above the current RSS; "
              "small results are overstated", file=sys.stderr)
    with ThreadPoolExecutor(concurrency) as pool:
        shapes = list(pool.map(lambda _: request(), range(concurrency)))
    assert all(shape == (1, 3, size, size) for shape in shapes), shapes
    print(f"{peak_rss_mb() - before:.0f}")


def make_png(side: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, "PNG")
    return buffer.getvalue()


def scene_files() -> dict[str, bytes]:
    """The hostile scene files of the battery at full size (each under 10 MB)."""
    from tests.http import hostile_inputs as h

    return {
        "spz-gzip-bomb-3MB.spz": h.spz_bomb(0xFFFF_FFFF, 3_000 << 20),
        "spz-8M-points-of-zeros.spz": h.spz_bomb(8_000_000, 160_000_000),
        "spz-1000-points-then-512MB.spz": h.spz_bomb(1000, 512 << 20),
        "ply-list-claims-60M.ply": h.ply_list_bomb(),
        "ply-list-claims-2e9.ply": h.ply_list_bomb(2_000_000_000),
        "ply-ascii-claims-2e9.ply": h.ply_ascii_bomb(),
        "ply-faces-claim-4e9.ply": h.ply_face_bomb(),
        "ply-vertex-count--5.ply": h.ply_header(-5) + h.ply_vertices(2),
        "ply-ascii-9MB.ply": h.ply_ascii_large(),
        "ply-binary-9MB-overlapping.ply": h.ply_binary_overlapping(),
    }


def render_scene(count: int = 2_000) -> bytes:
    """A binary PLY of `count` small Gaussians spread in front of the camera."""
    from tests.http import hostile_inputs as h

    rng = np.random.default_rng(0)
    rows = np.frombuffer(h.ply_vertices(count), dtype="<f4").reshape(count, -1).copy()
    rows[:, 0:2] = rng.uniform(-1, 1, (count, 2))
    rows[:, 2] = rng.uniform(2, 4, count)
    rows[:, 3:6] = rng.normal(0, 1, (count, 3))
    rows[:, 7:10] = np.log(rng.uniform(0.005, 0.02, (count, 3)))
    return h.ply_header(count) + rows.tobytes()


RENDER_CASES = [  # (name, output file, extra arguments)
    ("mp4 160x120, 60 frames", "orbit.mp4", ["--size", "160x120", "--frames", "60"]),
    ("mp4 160x120, 600 frames", "orbit.mp4", ["--size", "160x120", "--frames", "600"]),
    ("gif 160x120, 60 frames", "orbit.gif", ["--size", "160x120", "--frames", "60"]),
    ("gif 160x120, 600 frames", "orbit.gif", ["--size", "160x120", "--frames", "600"]),
    ("gif 4096x4096, 600 frames", "orbit.gif", ["--size", "4096x4096", "--frames", "600"]),
]


def run_capped(command: list[str], cwd: Path, cap_mb: float) -> tuple[float, int | None, str, float]:
    """Run `command`; kill it when its RSS passes `cap_mb`. Returns (peak RSS MB, exit status or None if killed,
    its last line of stderr, seconds)."""
    import os
    import time

    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        start, killed = time.monotonic(), False
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                with open(f"/proc/{child.pid}/statm") as statm:
                    rss = int(statm.read().split()[1]) * resource.getpagesize() / 1e6
            except OSError:
                rss = 0.0
            if rss > cap_mb and not killed:
                child.kill()
                killed = True
            time.sleep(0.02)
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        lines = errors.read().decode(errors="replace").replace("\r", "\n").strip().splitlines()
    last = lines[-1] if lines else ""
    return usage.ru_maxrss * 1024 / 1e6, None if killed else child.returncode, last, time.monotonic() - start


def run_render_cases(cases: list[str], trees: dict[str, Path], cap_mb: float) -> None:
    """Print the peak RSS of `python -m app render` for each case, in each source tree."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jobs: list[tuple[str, Path, Path, list[str]]] = []
        if "scenes" in cases:
            for name, data in scene_files().items():
                (folder / name).write_bytes(data)
                jobs.append((f"{name} ({len(data) / 1e6:.1f} MB)", folder / name, folder / "out.png", []))
        if "renders" in cases:
            (folder / "scene.ply").write_bytes(render_scene())
            jobs += [(name, folder / "scene.ply", folder / output, extra) for name, output, extra in RENDER_CASES]
        print(f"{'case':<44}" + "".join(f"  {tree + ' peak (MB)':>16}  {'s':>5}  {'exit':>4}" for tree in trees))
        for name, scene, output, extra in jobs:
            row, notes = f"{name:<44}", []
            for tree, root in trees.items():
                command = [sys.executable, "-m", "app", "render", str(scene), "-o", str(output), "--device", "cpu",
                           *extra]
                peak, status, last, seconds = run_capped(command, root, cap_mb)
                shown = f">{cap_mb:.0f}" if status is None else f"{peak:.0f}"
                row += f"  {shown:>16}  {seconds:>5.1f}  {'kill' if status is None else status:>4}"
                notes.append(f"    {tree}: {last[:150]}")
            print(row, *notes, sep="\n", flush=True)


SERVER_CEILING_MB = 1400.0
"""Peak server RSS allowed for six concurrent 7000 x 7000 PNG uploads to the tiny server (measured: 1,178 MB
on the loaded 2-core development machine, from 469 MB at rest; 1,670-2,440 MB before issue 28)."""
SERVER_KEPT_MB = 150.0
"""RSS the server may keep above its start once those uploads are answered (measured: 38 MB; 1,233 MB before)."""


def run_server_case(root: Path, side: int, concurrency: int) -> tuple[float, float, float, list[int]]:
    """Start the tiny server from source tree `root`, send `concurrency` uploads of a side x side flat PNG at
    once; (RSS before, peak, 2 s after) in MB, and the answers' statuses."""
    import os
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "SHARP_PRESET": "tiny", "SHARP_DEVICE": "cpu", "SHARP_CACHE_DIR": cache}
        server = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], cwd=root, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"

        def rss() -> tuple[float, float]:
            with open(f"/proc/{server.pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status)
            return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the server in {root} did not start")
                time.sleep(0.5)
            httpx.post(f"{url}/predict/ply", files={"file": ("warm.png", make_png(64, (1, 2, 3)))}, timeout=300)
            png = make_png(side, (200, 120, 40))
            with open(f"/proc/{server.pid}/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # VmHWM from here
            before, peak, statuses = rss()[0], [0.0], []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], rss()[0])
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            with ThreadPoolExecutor(concurrency) as pool:
                statuses = list(pool.map(lambda i: httpx.post(f"{url}/predict/ply", timeout=900, files={
                    "file": (f"big{i}.png", png)}).status_code, range(concurrency)))
            done.set()
            sampler.join()
            time.sleep(2.0)
            after, high_water = rss()
            return before, max(peak[0], high_water), after, statuses
        finally:
            server.terminate()
            server.wait(60)


def run_server_cases(trees: dict[str, Path], side: int, concurrency: int) -> bool:
    """Print the server case for each tree; whether this tree's run stayed within the ceilings."""
    print(f"{concurrency} concurrent {side}x{side} PNG uploads to the tiny server: server RSS (MB)")
    print(f"{'tree':<8}  {'before':>7}  {'peak':>7}  {'after':>7}  statuses")
    within = True
    for tree, root in trees.items():
        before, peak, after, statuses = run_server_case(root, side, concurrency)
        print(f"{tree:<8}  {before:>7.0f}  {peak:>7.0f}  {after:>7.0f}  {statuses}", flush=True)
        if tree == "now":
            within = peak <= SERVER_CEILING_MB and after - before <= SERVER_KEPT_MB
            print(f"ceiling: peak <= {SERVER_CEILING_MB:.0f} MB and kept <= {SERVER_KEPT_MB:.0f} MB: "
                  f"{'held' if within else 'EXCEEDED'}")
    return within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=["png", "scenes", "renders", "server"], default=["png"])
    parser.add_argument("--before", type=Path, default=None, help="another checkout to compare with (scenes, renders)")
    parser.add_argument("--cap-mb", type=float, default=4000, help="kill a render child whose RSS passes this")
    parser.add_argument("--side", type=int, default=7000, help="bomb width and height in pixels")
    parser.add_argument("--size", type=int, default=1536, help="network input size (1536: sharp, 512: tiny)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--child", nargs=3, metavar=("PATH", "BOMB", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, bomb, concurrency = args.child
        measure(path, Path(bomb), int(concurrency), args.size)
        return
    trees = {"before": args.before.resolve()} if args.before else {}
    trees["now"] = Path(__file__).resolve().parents[1]
    render_cases = [case for case in args.cases if case in ("scenes", "renders")]
    if render_cases:
        run_render_cases(render_cases, trees, args.cap_mb)
    if "server" in args.cases and not run_server_cases(trees, args.side, max(args.concurrency)):
        sys.exit(1)
    if "png" not in args.cases:
        return

    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(tmp) / "bomb.png"
        bomb.write_bytes(make_png(args.side, (200, 120, 40)))
        pixels_mb = args.side * args.side * 3 / 1e6
        print(f"bomb: {args.side}x{args.side} flat RGB PNG, {bomb.stat().st_size / 1e3:.0f} KB, "
              f"{pixels_mb:.0f} MB as uint8; network input {args.size}x{args.size}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"{'requests':>8}  {'old peak (MB)':>14}  {'new peak (MB)':>14}  {'per request old/new (MB)':>25}")
        for concurrency in args.concurrency:
            peaks = {}
            for path in ("old", "new"):
                child = subprocess.run(
                    [sys.executable, __file__, "--size", str(args.size), "--child", path, str(bomb), str(concurrency)],
                    capture_output=True, text=True, check=True,
                )
                peaks[path] = float(child.stdout.strip().splitlines()[-1])
            print(f"{concurrency:>8}  {peaks['old']:>14.0f}  {peaks['new']:>14.0f}  "
                  f"{peaks['old'] / concurrency:>12.0f} / {peaks['new'] / concurrency:<10.0f}")


if __name__ == "__main__":
    main()

"""Peak memory of decoding + preprocessing N concurrent "decompression bomb" PNGs, old path against new.

    python bench/memory.py [--side 7000] [--size 1536] [--concurrency 1 6]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=7000, help="bomb width and height in pixels")
    parser.add_argument("--size", type=int, default=1536, help="network input size (1536: sharp, 512: tiny)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--child", nargs=3, metavar=("PATH", "BOMB", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, bomb, concurrency = args.child
        measure(path, Path(bomb), int(concurrency), args.size)
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

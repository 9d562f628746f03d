"""Render time of a full-size SHARP scene on this machine's CPU, against the forward pass that made it.

    python -m bench.render [--image PATH] [--size 512] [--repeats 5] [--threads N] [--docs DIR]

Runs the full network once with synthetic weights on the photo (timing its forward), then renders the
1,179,648-Gaussian scene from the input view at SIZE x SIZE several times (after one warm-up) and prints
``render_ms_per_frame`` (median; projection, tile binning and compositing, scene upload excluded),
``forward_ms``, ``render_over_forward`` and the peak RSS. Synthetic weights give a scene with the real
shapes and counts (colours follow the photo; the geometry is not a trained prediction).

``--docs DIR`` also writes the README's pictures from that scene: ``render_preview.png`` (input view),
``render_depth.png`` (near = bright) and ``render_orbit.gif`` (a 256 px orbit).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.formats import encode_ply
from app.imaging import load_image
from app.predictor import SharpPredictor
from app.render import camera_path, depth_to_gray, encode_gif, encode_image, input_camera, prepare_scene, render
from app.render.camera import scaled_size
from app.render.renderer import render_frames, to_uint8
from bench.common import CONFORMANCE_DIR

# A fresh process's own peak RSS (VmHWM; ru_maxrss would include the forked parent's pages).
_CLI_PEAK = """
import sys
from app.cli import main
assert main(["render", sys.argv[1], "-o", sys.argv[2], "--size", sys.argv[3], "--device", "cpu"]) == 0
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0])
"""


def time_renders(gaussians, camera, repeats: int) -> list[float]:
    """Wall-clock milliseconds of `repeats` renders after one warm-up."""
    render(gaussians, camera)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render(gaussians, camera)
        times.append((time.perf_counter() - start) * 1000)
    return times


def write_docs(scene, gaussians, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = scaled_size(scene.image_width, scene.image_height, 600)
    frame = render(gaussians, input_camera(scene, size))
    (folder / "render_preview.png").write_bytes(encode_image(to_uint8(frame.color), "png"))
    depth = depth_to_gray(frame.depth.cpu().numpy(), frame.alpha.cpu().numpy())
    (folder / "render_depth.png").write_bytes(encode_image(depth, "png"))
    small = scaled_size(scene.image_width, scene.image_height, 256)
    frames = render_frames(gaussians, camera_path(scene, "orbit", 36, small))
    (folder / "render_orbit.gif").write_bytes(encode_gif(frames, fps=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=CONFORMANCE_DIR / "coffee.png")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--docs", type=Path, default=None, help="write the README pictures into this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}, load average {load_start:.1f}")

    predictor = SharpPredictor.load("sharp", synthetic=True, device="cpu")
    stage_ms: dict[str, float] = {}
    prediction = predictor.predict(load_image(args.image), timings_ms=stage_ms)
    scene = prediction.scene
    forward_ms = stage_ms["forward"]
    print(f"scene: {args.image.name} {scene.image_width}x{scene.image_height}, {scene.num_gaussians:,} Gaussians")

    start = time.perf_counter()
    gaussians = prepare_scene(scene, "cpu")
    prepare_ms = (time.perf_counter() - start) * 1000
    camera = input_camera(scene, (args.size, args.size))
    times = time_renders(gaussians, camera, args.repeats)
    per_frame = statistics.median(times)
    torch.set_num_threads(1)
    one_thread = statistics.median(time_renders(gaussians, camera, args.repeats))
    torch.set_num_threads(args.threads)

    print(f"prepare_scene_ms: {prepare_ms:.0f}  (once per scene)")
    print(f"render_ms_all: {' '.join(f'{t:.0f}' for t in times)}")
    print(f"render_ms_per_frame: {per_frame:.0f}  ({args.size}x{args.size}, {args.threads} threads, median)")
    print(f"render_ms_per_frame_1_thread: {one_thread:.0f}")
    print(f"forward_ms: {forward_ms:.0f}")
    print(f"render_over_forward: {per_frame / forward_ms:.4f}")
    print(f"peak_rss_gib: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f}  (network included)")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "scene.ply").write_bytes(encode_ply(scene))
        command = [sys.executable, "-c", _CLI_PEAK, str(Path(folder) / "scene.ply"), str(Path(folder) / "frame.png"),
                   f"{args.size}x{args.size}"]
        result = subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                                text=True)
    print(f"render_cli_peak_rss_gib: {int(result.stdout.split()[-1]) / 1024**2:.2f}  "
          "(a fresh `python -m app render` of the scene's PLY to one PNG: VmHWM)")
    print(f"load_average_1min: {os.getloadavg()[0]:.1f}  (at start: {load_start:.1f})")
    if args.docs is not None:
        write_docs(scene, gaussians, args.docs)
        print(f"docs: wrote render_preview.png, render_depth.png, render_orbit.gif to {args.docs}")


if __name__ == "__main__":
    main()

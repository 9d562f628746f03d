"""Video benchmark on the CPU with the tiny preset: frames per second of a clip's sequence run, its overhead
against the single-image pipeline on the same frames, and the peak RSS of a 1080p clip at two lengths.

    python -m bench.video [--frames 6] [--repeats 2] [--rss-frames 4 8 32]

- Throughput: a clip of `--frames` frames (320x192, H.264, made from the conformance photo) through
  `run_sequence` (align none, PLY, no preview), against `pipeline.run` on each decoded frame saved as a PNG
  file (what a loop over the frames with the photo command does; writing the PNGs is not timed). The runs
  alternate, `--repeats` times, and the fastest of each counts. Overhead = sequence / single - 1.
- The preview's cost per frame (render + side by side + H.264) is reported apart.
- Peak RSS: a fresh process runs a 1920x1080 clip file of each length in `--rss-frames` (PLY, align scale,
  preview) and reports its `ru_maxrss`; equal figures mean memory does not grow with the clip's length.

The last two lines are `sequence_overhead: X` (a fraction) and `peak_rss_mb_1080p: N` (the longest clip's).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app import pipeline  # noqa: E402
from app.predictor import SharpPredictor  # noqa: E402
from app.sequence import run_sequence  # noqa: E402
from app.video import Sampling, VideoLimits, read_frames  # noqa: E402
from bench.common import CONFORMANCE_DIR  # noqa: E402

LIMITS = VideoLimits(max_duration_s=600.0, max_frames=1000, max_pixels=3840 * 2160)


def make_clip(frames: int, width: int, height: int) -> bytes:
    """H.264 frames of the conformance photo resized to cover `width` x `height`, panning 1 % a frame."""
    photo = Image.open(CONFORMANCE_DIR / "coffee.png").convert("RGB")
    scale = max(width * 1.5 / photo.width, height / photo.height)
    big = np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale))))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            left = min(big.shape[1] - width, index * width // 100)
            crop = np.ascontiguousarray(big[:height, left:left + width])
            output.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
        output.mux(stream.encode(None))
    return buffer.getvalue()


def throughput(predictor: SharpPredictor, frames: int, repeats: int) -> float:
    clip = make_clip(frames, 320, 192)
    with tempfile.TemporaryDirectory() as folder:
        photos = []
        for frame in read_frames(clip, Sampling(), LIMITS):
            photos.append(Path(folder) / f"{frame.index:06d}.png")
            Image.fromarray(frame.rgb).save(photos[-1])
        sequence_s, single_s, preview_s = [], [], []
        for _ in range(repeats):
            start = time.perf_counter()
            run_sequence(predictor, clip, {"ply": {}}, sink=lambda path, body: None, limits=LIMITS, preview=False)
            sequence_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            for photo in photos:
                pipeline.run(predictor, photo, {"ply": {}})
            single_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_sequence(predictor, clip, {"ply": {}}, sink=lambda path, body: None, limits=LIMITS, preview=True)
        preview_s.append(time.perf_counter() - start - min(sequence_s))
    print(f"clip: {frames} frames, 320x192 H.264; tiny preset, CPU, {repeats} alternating runs, fastest counted")
    print(f"sequence: {min(sequence_s):.2f} s = {frames / min(sequence_s):.2f} frames/s")
    print(f"single-image pipeline on the same frames (PNG files): {min(single_s):.2f} s = "
          f"{frames / min(single_s):.2f} frames/s")
    print(f"preview (render beside the frame, H.264): {preview_s[0] / frames * 1000:.0f} ms a frame")
    return min(sequence_s) / min(single_s) - 1


def peak_rss_child(clip: Path) -> None:
    """In a fresh process: the clip file through the sequence; prints its peak RSS in MB. (The clip is made
    in the parent: x264's look-ahead while making it would count in this process's peak.)"""
    predictor = SharpPredictor.load("tiny", device="cpu")
    manifest = run_sequence(predictor, clip, {"ply": {}}, sink=lambda path, body: None, limits=LIMITS,
                            align="scale")
    print(json.dumps({"frames": manifest["num_frames"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-frames", type=int, nargs="+", default=[4, 8, 32])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        peak_rss_child(args.child)
        return
    predictor = SharpPredictor.load("tiny", device="cpu")
    run_sequence(predictor, make_clip(1, 320, 192), {"ply": {}}, sink=lambda path, body: None, limits=LIMITS,
                 preview=False)  # warm-up: the first forward pays one-time costs
    overhead = throughput(predictor, args.frames, args.repeats)
    peaks = []
    for frames in args.rss_frames:
        with tempfile.TemporaryDirectory() as folder:
            clip = Path(folder) / "clip.mp4"
            clip.write_bytes(make_clip(frames, 1920, 1080))
            out = subprocess.run([sys.executable, __file__, "--child", str(clip)], capture_output=True, text=True,
                                 check=True, cwd=REPO)
        peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        peaks.append(peak)
        print(f"1080p clip of {frames} frames (PLY, align scale, preview): peak RSS {peak:.0f} MB")
    print(f"sequence_overhead: {overhead:.3f}")
    print(f"peak_rss_mb_1080p: {peaks[-1]:.0f}")


if __name__ == "__main__":
    main()

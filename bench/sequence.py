"""The ``sequence`` output (SOG video, `app.formats.sequence`) against one SOG per frame, on the CPU: bytes,
render error and encode time, on a clip of a real photo with camera motion.

    python -m bench.sequence [--presets tiny tiny_full] [--frames 8 4] [--offsets -6 0 6 12]

For each preset, a clip of `--frames` frames (320x192 H.264 of the conformance photo panning 1 % of its width
a frame, `bench.video.make_clip`) is predicted frame by frame (align none), then each frame's scene is
- rendered at its input camera as it was predicted (float32, what its PLY holds): the reference;
- encoded as a SOG (timed), decoded, rendered: `sog_frames_psnr_db` is the mean over frames of the PSNR
  against the reference (our renderer, RGB in [0, 1]);
- added to one sequence (timed: `SequenceWriter.add`, the last frame's `finish` included), whose frames
  are decoded and rendered the same way: `sequence_psnr_db`.
`sequence_bytes_over_sog_frames` is the sequence file's bytes over the sum of the per-frame SOGs'. The curve
then repeats the sequence at each CRF offset of `--offsets` (the rate knob, `x264(offset=...)`: +6 about
halves the bytes). The page's playback rate is `bench.player`'s.
Figures per preset; the last lines are the first preset's (tiny by default).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app.formats.sequence import SequenceReader, SequenceWriter, x264  # noqa: E402
from app.formats.sog import encode_sog  # noqa: E402
from app.formats.sog_reader import decode_sog  # noqa: E402
from app.gaussians import GaussianScene  # noqa: E402
from app.predictor import SharpPredictor  # noqa: E402
from app.render.camera import input_camera  # noqa: E402
from app.render.renderer import prepare_scene, render  # noqa: E402
from app.video import Sampling, read_frames  # noqa: E402
from bench.video import LIMITS, make_clip  # noqa: E402

FPS = 30.0


def picture(scene: GaussianScene) -> np.ndarray:
    """(H, W, 3) float64 RGB in [0, 1]: `scene` rendered at its input camera."""
    return render(prepare_scene(scene), input_camera(scene)).color.clamp(0, 1).numpy().astype(np.float64)


def psnr(got: np.ndarray, want: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two [0, 1] images."""
    return float(10 * np.log10(1.0 / max(float(np.mean((got - want) ** 2)), 1e-20)))


def encode(scenes: list[GaussianScene], offset: int) -> tuple[bytes, float]:
    """The sequence of `scenes` at CRF offset `offset`, and its encode seconds per frame."""
    start = time.perf_counter()
    writer = SequenceWriter(FPS, x264(offset=offset))
    for scene in scenes:
        writer.add(scene)
    body = writer.finish()
    return body, (time.perf_counter() - start) / len(scenes)


def sequence_psnr(body: bytes, references: list[np.ndarray]) -> float:
    """Mean over frames of the PSNR of the sequence's decoded frames against `references`."""
    reader = SequenceReader(body)
    return float(np.mean([psnr(picture(reader.frame(k)), want) for k, want in enumerate(references)]))


def measure(preset: str, frames: int, offsets: list[int]) -> tuple[float, float, float, float, float]:
    """Print the figures of `preset` on a clip of `frames` frames; returns (ratio, sequence PSNR, SOG PSNR,
    sequence and SOG encode seconds a frame)."""
    predictor = SharpPredictor.load(preset, device="cpu")
    clip = make_clip(frames, 320, 192)
    scenes = [predictor.predict(frame.as_image(None)).scene for frame in read_frames(clip, Sampling(), LIMITS)]
    count = scenes[0].num_gaussians
    references = [picture(scene) for scene in scenes]
    print(f"{preset}: {len(scenes)} frames of {count:,} Gaussians (320x192 clip panning), CPU")
    sog_bytes, sog_seconds, sog_psnrs = 0, 0.0, []
    for scene, reference in zip(scenes, references, strict=True):
        start = time.perf_counter()
        body = encode_sog(scene)
        sog_seconds += time.perf_counter() - start
        sog_bytes += len(body)
        sog_psnrs.append(psnr(picture(decode_sog(body)), reference))
    body, seconds = encode(scenes, 0)
    ratio, quality = len(body) / sog_bytes, sequence_psnr(body, references)
    print(f"  per-frame SOGs: {sog_bytes:,} bytes, {sog_bytes / len(scenes) / count:.2f} B a Gaussian a frame")
    print(f"  sequence: {len(body):,} bytes, {len(body) / len(scenes) / count:.2f} B a Gaussian a frame")
    for offset in offsets:
        if offset == 0:
            curve = (len(body), quality)
        else:
            other, _ = encode(scenes, offset)
            curve = (len(other), sequence_psnr(other, references))
        print(f"  curve: crf offset {offset:+d}: {curve[0] / sog_bytes:.3f} of the SOGs at {curve[1]:.2f} dB")
    print(f"{preset} sequence_bytes_over_sog_frames: {ratio:.3f}")
    print(f"{preset} sequence_psnr_db: {quality:.2f}")
    print(f"{preset} sog_frames_psnr_db: {float(np.mean(sog_psnrs)):.2f}")
    print(f"{preset} sequence_encode_s_per_frame: {seconds:.3f}")
    print(f"{preset} sog_encode_s_per_frame: {sog_seconds / len(scenes):.3f}")
    return ratio, quality, float(np.mean(sog_psnrs)), seconds, sog_seconds / len(scenes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "tiny_full"])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 4],
                        help="frames of the clip for each preset, in order (the last repeats)")
    parser.add_argument("--offsets", type=int, nargs="*", default=[-6, 0, 6, 12],
                        help="CRF offsets of the curve (the rate knob)")
    args = parser.parse_args()
    results = [measure(preset, args.frames[min(i, len(args.frames) - 1)], args.offsets)
               for i, preset in enumerate(args.presets)]
    ratio, quality, sog_quality, seconds, sog_seconds = results[0]
    print(f"sequence_bytes_over_sog_frames: {ratio:.3f}")
    print(f"sequence_psnr_db: {quality:.2f}")
    print(f"sog_frames_psnr_db: {sog_quality:.2f}")
    print(f"sequence_encode_s_per_frame: {seconds:.3f}")
    print(f"sog_encode_s_per_frame: {sog_seconds:.3f}")


if __name__ == "__main__":
    main()

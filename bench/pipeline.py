"""Per-stage timing of one full-size request on this machine's CPU, and how close the forward is to the roof.

    python -m bench.pipeline [--preset sharp|tiny] [--image PATH] [--threads N]

Prints decode, preprocess (resize), forward, postprocess (unprojection + covariance decomposition) and
encode (PLY) times, peak memory, the forward's FLOPs and achieved GFLOP/s, and a float32 matrix product's
GFLOP/s measured in the same run. Weights are synthetic: timings do not depend on their values.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.formats import encode_ply
from app.imaging import load_image
from app.predictor import SharpPredictor
from bench.common import CONFORMANCE_DIR, forward_flops, matmul_gflops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sharp", choices=["sharp", "tiny"])
    parser.add_argument("--image", type=Path, default=CONFORMANCE_DIR / "coffee.png")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    load_start = time.perf_counter()
    predictor = SharpPredictor.load(args.preset, synthetic=True, device="cpu")
    print(f"model: preset={args.preset} (synthetic weights), built in {time.perf_counter() - load_start:.1f} s")

    decode_start = time.perf_counter()
    image = load_image(args.image)
    decode_ms = (time.perf_counter() - decode_start) * 1000
    stage_ms: dict[str, float] = {}
    prediction = predictor.predict(image, f_px=None, timings_ms=stage_ms)
    encode_start = time.perf_counter()
    ply = encode_ply(prediction.scene)
    encode_ms = (time.perf_counter() - encode_start) * 1000

    stages = {"decode": decode_ms, **stage_ms, "encode_ply": encode_ms}
    total = sum(stages.values())
    print(f"image: {args.image.name} {image.width}x{image.height}, {prediction.scene.num_gaussians:,} Gaussians, "
          f"PLY {len(ply):,} bytes")
    for name, ms in stages.items():
        print(f"  {name:<12} {ms / 1000:9.3f} s  {100 * ms / total:5.1f} %")
    print(f"  {'total':<12} {total / 1000:9.3f} s")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak_rss_gib: {peak_gb:.2f}")

    flops = forward_flops(args.preset)
    achieved = flops / (stages["forward"] / 1000) / 1e9
    roof = matmul_gflops(torch.device("cpu"))
    print(f"forward_tflop: {flops / 1e12:.2f}")
    print(f"forward_gflops_per_s: {achieved:.1f}")
    print(f"matmul_gflops_per_s: {roof:.1f}")
    print(f"forward_fraction_of_matmul_roof: {achieved / roof:.2f}")
    print(f"postprocess_over_forward: {stages['postprocess'] / stages['forward']:.4f}")


if __name__ == "__main__":
    main()

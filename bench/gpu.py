"""Forward speed and accuracy on CUDA for each precision mode, on the conformance case.

    python -m bench.gpu [--repeats 5] [--compile]

For float32 (PyTorch's defaults, as the reference runs: cuDNN TF32 on, matmul TF32 off), strict
float32 (all TF32 off), tf32, bfloat16 and float16 (autocast), prints the median forward time,
the speed-up over strict float32, and the relative L2 error of positions and covariances
against strict float32 and against the reference outputs (coffee_s0, made on CPU in float32).
Prints a note and exits 0 where no CUDA device is present.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.gaussians import GaussianScene
from app.imaging import load_image
from app.predictor import SharpPredictor
from bench.common import CONFORMANCE_DIR, conformance_network, forward_flops, matmul_gflops


def covariances(rotations: np.ndarray, scales: np.ndarray) -> np.ndarray:
    w, x, y, z = (rotations / np.linalg.norm(rotations, axis=1, keepdims=True)).astype(np.float64).T
    r = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1).reshape(-1, 3, 3)
    return np.einsum("nij,nj,nkj->nik", r, scales.astype(np.float64) ** 2, r)


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64)))


def errors(scene: GaussianScene, positions: np.ndarray, covs: np.ndarray, index: np.ndarray | None = None) -> str:
    got_pos = scene.positions if index is None else scene.positions[index]
    got_cov = covariances(scene.rotations, scene.scales) if index is None else covariances(
        scene.rotations[index], scene.scales[index])
    return f"{rel_l2(got_pos, positions):.1e} / {rel_l2(got_cov, covs):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile with bfloat16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (run this on a GPU machine)")
        return

    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    flops = forward_flops("sharp")
    print(f"forward: {flops / 1e12:.2f} TFLOP; matmul roof: fp32 {matmul_gflops(device) / 1e3:.1f} TFLOP/s, "
          f"bf16 {matmul_gflops(device, torch.bfloat16) / 1e3:.1f} TFLOP/s")
    network = conformance_network().to(device)
    image = load_image(CONFORMANCE_DIR / "coffee.png")
    golden = np.load(CONFORMANCE_DIR / "coffee_s0.npz")
    golden_covs = covariances(golden["quaternions"], golden["singular_values"])

    modes = ["float32-strict", "float32", "tf32", "bfloat16", "float16"]
    modes += ["bfloat16+compile"] if args.compile else []
    rows, baseline_ms, baseline = [], None, None
    for mode in modes:
        dtype = mode.split("+")[0].replace("-strict", "")
        predictor = SharpPredictor(network, weights="synthetic", device=device, dtype=dtype)  # type: ignore[arg-type]
        if mode == "float32-strict":
            torch.backends.cudnn.allow_tf32 = False
        if mode.endswith("+compile"):
            predictor.network = torch.compile(network)  # type: ignore[assignment]
        for _ in range(2):  # warm-up (and compilation)
            predictor.predict(image, f_px=500.0)
        timings: list[dict[str, float]] = [{} for _ in range(args.repeats)]
        predictions = [predictor.predict(image, f_px=500.0, timings_ms=stage_ms) for stage_ms in timings]
        forward_ms = statistics.median(stage_ms["forward"] for stage_ms in timings)
        total_ms = statistics.median(sum(stage_ms.values()) for stage_ms in timings)
        scene = predictions[-1].scene
        if baseline is None:
            baseline_ms, baseline = forward_ms, (scene.positions, covariances(scene.rotations, scene.scales))
        rows.append((mode, forward_ms, total_ms, baseline_ms / forward_ms, flops / forward_ms / 1e9,
                     errors(scene, *baseline), errors(scene, golden["mean_vectors"], golden_covs, golden["index"])))
        torch.backends.cudnn.allow_tf32 = True

    print("| mode | forward ms | request ms (no decode/encode) | speed-up vs strict fp32 | TFLOP/s "
          "| rel. L2 vs fp32 (pos / cov) | rel. L2 vs reference (pos / cov) |")
    print("|---|---|---|---|---|---|---|")
    for mode, forward_ms, total_ms, speedup, tflops, vs_fp32, vs_ref in rows:
        print(f"| {mode} | {forward_ms:.0f} | {total_ms:.0f} | {speedup:.2f}x | {tflops:.1f} | {vs_fp32} | {vs_ref} |")
    bf16 = next(row for row in rows if row[0] == "bfloat16")
    print(f"bfloat16_speedup_vs_float32: {bf16[3]:.2f}")


if __name__ == "__main__":
    main()

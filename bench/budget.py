"""The splat budget's CPU time at full size: `apply_budget` at 50 %, 25 % and 10 % and `coarse_level`.

    nice .venv/bin/python -m bench.budget [--preset tiny_full] [--repeat 3]

Predicts the preset's scene of the conformance photo (`bench.formats.predicted_scene`; ``tiny_full``: the
real count, 1,179,648 Gaussians, in seconds), then times each call (best of ``--repeat``, after one
warm-up call) and prints its seconds, its count and a SHA-256 of the Gaussians it returns (positions,
scales, rotations, colours, opacities: run it on two checkouts to check that a change keeps the output bit
for bit). The yardstick measured in the same run is `encode_ply` of the full scene. The last lines are::

    budget50_seconds: S   (and budget25_, budget10_, coarse_)
    budget50_over_ply_encode: R   (apply_budget seconds / encode_ply seconds; and budget25_, ...)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.budget import apply_budget, coarse_level  # noqa: E402
from app.formats.ply import encode_ply  # noqa: E402
from app.gaussians import GaussianScene  # noqa: E402
from bench.formats import best_time, predicted_scene  # noqa: E402

BUDGETS = (0.5, 0.25, 0.1)


def digest(scene: GaussianScene) -> str:
    """SHA-256 (first 16 hex digits) of the scene's Gaussians: dtypes, shapes and bytes of each array."""
    sha = hashlib.sha256()
    for values in (scene.positions, scene.scales, scene.rotations, scene.colors, scene.opacities):
        sha.update(f"{values.dtype}{values.shape}".encode())
        sha.update(values.tobytes())
    return sha.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny_full", help="the preset whose prediction is budgeted")
    parser.add_argument("--repeat", type=int, default=3, help="calls per measurement; the best counts")
    args = parser.parse_args(argv)

    scene = predicted_scene(args.preset)()
    print(f"scene: {args.preset} prediction, {scene.num_gaussians:,} Gaussians")
    ply_seconds, _ = best_time(lambda: encode_ply(scene), args.repeat)
    print(f"encode_ply: {ply_seconds:.2f} s")
    apply_budget(scene, BUDGETS[0])  # warm-up: first-call costs stay out of the timings
    calls: dict[str, Callable[[], GaussianScene]] = {
        f"budget{round(fraction * 100)}": (lambda fraction=fraction: apply_budget(scene, fraction))
        for fraction in BUDGETS}
    calls["coarse"] = lambda: coarse_level(scene)
    seconds = {}
    for name, call in calls.items():
        seconds[name], result = best_time(call, args.repeat)
        print(f"{name}: {seconds[name]:.2f} s, {result.num_gaussians:,} Gaussians, sha256 {digest(result)}")
    for name in calls:
        print(f"{name}_seconds: {seconds[name]:.2f}")
    for name in calls:
        print(f"{name}_over_ply_encode: {seconds[name] / ply_seconds:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Size against quality of the scene files, and the splat budget, against PlayCanvas's splat-transform.

One full-size scene (1,179,648 Gaussians: by default the `tiny_full` preset with its synthetic weights,
predicted in seconds; ``--preset sharp``: the full network with the conformance kit's seed-0 weights,
minutes; both on the conformance photo, f_px given) is written as PLY (float32, the reference), SPZ, our
SOG and splat-transform's SOG made from our PLY. For each: bytes, encode seconds, and the PSNR of our
renderer's image of the decoded file against the float32 PLY's, at the input view and four orbit views
(`camera_path(scene, "orbit", 5)`; PSNR over the five views is that of their mean squared error, colours
in [0, 1]). Then the budget curve at 50 %, 25 % and 10 %: our `apply_budget` (merging on the grid) and
`keep_most_important` (dropping) against splat-transform's ``--decimate`` and ``--decimate-adaptive`` to
the same counts, at the same five views.

The predicted scene is cached (``--cache``, a PLY) between runs (the `sharp` forward pass takes minutes on
a CPU), and so are splat-transform's decimated scenes (``--decimate`` takes minutes here: one PLY per rule
and count, named by the scene's digest, with the seconds it took, beside the scene's cache; ``--fresh``
runs it again).
splat-transform runs with ``-g cpu`` (no GPU here). Run: ``nice python -m bench.sizes``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python bench/sizes.py` works too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.budget import apply_budget, budget_count, keep_most_important
from app.formats.ply import encode_ply, read_ply
from app.formats.sog import encode_sog
from app.formats.sog_reader import decode_sog
from app.formats.spz import decode_spz, encode_spz
from app.gaussians import GaussianScene
from app.render import camera_path, prepare_scene, render
from app.render.camera import scaled_size
from bench.common import CONFORMANCE_DIR, REPO

SPLAT_TRANSFORM = REPO / "web" / "node_modules" / "@playcanvas" / "splat-transform" / "bin" / "cli.mjs"
PHOTO = CONFORMANCE_DIR / "coffee.png"
F_PX = 500.0
BUDGETS = (0.5, 0.25, 0.1)


def predict_scene(cache: Path, preset: str) -> GaussianScene:
    """The full-size prediction of `preset` (``tiny_full``: synthetic weights; ``sharp``: seed-0 conformance
    weights) on coffee.png at f_px 500, cached as our PLY."""
    if cache.is_file():
        return read_ply(cache)
    from app.files import write_atomically
    from app.formats.ply import iter_ply_chunks
    from app.imaging import load_image
    from app.predictor import SharpPredictor
    from bench.common import conformance_network

    if preset == "sharp":
        predictor = SharpPredictor(conformance_network(), weights="file", device="cpu")
    else:
        predictor = SharpPredictor.load(preset, device="cpu", progress=False, synthetic=True)
    scene = predictor.predict(load_image(PHOTO), f_px=F_PX).scene
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cache, iter_ply_chunks(scene))
    return read_ply(cache)


class Views:
    """The reference images (float32 PLY) at the input view and four orbit views, and PSNRs against them."""

    def __init__(self, reference: GaussianScene, longest: int) -> None:
        self.camera = reference
        size = scaled_size(reference.image_width, reference.image_height, longest)
        self.cameras = camera_path(reference, "orbit", 5, size)
        self.reference = self.images(reference)

    def images(self, scene: GaussianScene) -> list[np.ndarray]:
        scene = replace(scene, f_px=self.camera.f_px, image_width=self.camera.image_width,
                        image_height=self.camera.image_height)
        gaussians = prepare_scene(scene)
        return [render(gaussians, camera).color.clamp(0, 1).numpy().astype(np.float64) for camera in self.cameras]

    def psnr(self, scene: GaussianScene) -> tuple[float, list[float]]:
        """(PSNR over the five views, [PSNR of each view]) in dB."""
        errors = [float(np.mean((a - b) ** 2)) for a, b in zip(self.reference, self.images(scene), strict=True)]
        db = [10 * np.log10(1 / max(e, 1e-20)) for e in errors]
        return float(10 * np.log10(1 / max(np.mean(errors), 1e-20))), db


def splat_transform(*args: str) -> float:
    """Run splat-transform (node, CPU), returning its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run(["node", str(SPLAT_TRANSFORM), "-q", "-w", "-g", "cpu", *args], check=True)
    return time.perf_counter() - start


def decimated(scene_ply: Path, ply_bytes: bytes, flag: str, count: int, cache: Path, fresh: bool,
              ) -> tuple[GaussianScene, float, bool]:
    """splat-transform's `flag` (``--decimate`` or ``--decimate-adaptive``) of the scene to `count` Gaussians,
    from `cache` (a folder) unless `fresh`: (the scene, the seconds its run took, whether it came from the
    cache)."""
    digest = hashlib.sha256(ply_bytes).hexdigest()[:16]
    out = cache / f"{digest}{flag}-{count}.ply"
    seconds_file = out.with_suffix(".json")
    if not fresh and out.is_file() and seconds_file.is_file():
        return read_ply(out), float(json.loads(seconds_file.read_text())["seconds"]), True
    made = scene_ply.with_name(f"decimated{flag}.ply")
    seconds = splat_transform(str(scene_ply), str(made), flag, str(count))
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(made, out)
    seconds_file.write_text(json.dumps({"seconds": seconds}))
    return read_ply(made), seconds, False


def row(name: str, size: int | str, seconds: float, psnr: tuple[float, list[float]]) -> None:
    views = " ".join(f"{db:6.2f}" for db in psnr[1])
    size_text = f"{size:>12,}" if isinstance(size, int) else f"{size:>12}"
    print(f"| {name:<34} | {size_text} | {seconds:8.2f} | {psnr[0]:6.2f} | {views} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny_full", "sharp"], default="tiny_full",
                        help="the network that predicts the scene (default tiny_full; sharp: conformance weights)")
    parser.add_argument("--cache", type=Path, help="the predicted scene's PLY (default "
                        "~/.cache/sharp-serve/bench_sizes_<preset>.ply)")
    parser.add_argument("--size", type=int, default=600, help="longest side of the rendered views, pixels")
    parser.add_argument("--fresh", action="store_true", help="run splat-transform's decimation again even where "
                        "its output for this scene is cached")
    args = parser.parse_args()

    cache = args.cache or Path.home() / ".cache" / "sharp-serve" / f"bench_sizes_{args.preset}.ply"
    scene = predict_scene(cache, args.preset)
    n = scene.num_gaussians
    views = Views(scene, args.size)
    print(f"scene: {n:,} Gaussians, {scene.image_width}x{scene.image_height} px, f_px {scene.f_px}; "
          f"views {views.cameras[0].width}x{views.cameras[0].height}", flush=True)
    print("| file | bytes | encode s | PSNR dB (5 views) | input, orbit 1-4 |")
    print("|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        ply = encode_ply(scene)
        row("PLY (float32, reference)", len(ply), time.perf_counter() - start, (float("inf"), [float("inf")] * 5))
        (folder / "scene.ply").write_bytes(ply)

        start = time.perf_counter()
        spz = encode_spz(scene)
        row("SPZ (ours)", len(spz), time.perf_counter() - start, views.psnr(decode_spz(spz)))

        start = time.perf_counter()
        sog = encode_sog(scene)
        sog_seconds = time.perf_counter() - start
        sog_psnr = views.psnr(decode_sog(sog))
        row("SOG (ours)", len(sog), sog_seconds, sog_psnr)

        theirs_seconds = splat_transform(str(folder / "scene.ply"), str(folder / "theirs.sog"))
        theirs = (folder / "theirs.sog").read_bytes()
        theirs_psnr = views.psnr(decode_sog(theirs))
        row("SOG (splat-transform, from our PLY)", len(theirs), theirs_seconds, theirs_psnr)

        budget_psnr: dict[float, tuple[float, float]] = {}
        budget_seconds: dict[float, tuple[float, float]] = {}
        for fraction in BUDGETS:
            count = budget_count(fraction, n)
            start = time.perf_counter()
            merged = apply_budget(scene, fraction)
            seconds = time.perf_counter() - start
            ours = views.psnr(merged)
            row(f"budget {fraction:.0%}: ours (merge)", merged.num_gaussians, seconds, ours)
            start = time.perf_counter()
            kept = keep_most_important(scene, fraction)
            row(f"budget {fraction:.0%}: ours, dropping only", count, time.perf_counter() - start, views.psnr(kept))
            best, decimate_seconds = -np.inf, 0.0
            for flag in ("--decimate", "--decimate-adaptive"):
                theirs_scene, flag_seconds, cached = decimated(folder / "scene.ply", ply, flag, count,
                                                               cache.parent / "splat_transform", args.fresh)
                decimate_seconds = decimate_seconds or flag_seconds
                result = views.psnr(theirs_scene)
                row(f"budget {fraction:.0%}: splat-transform {flag}{' (cached)' if cached else ''}",
                    theirs_scene.num_gaussians, flag_seconds, result)
                best = max(best, result[0])
            budget_psnr[fraction] = (ours[0], best)
            budget_seconds[fraction] = (seconds, decimate_seconds)

    print(f"sog_encode_seconds: {sog_seconds:.2f} (splat-transform {theirs_seconds:.2f}, including node's start)")
    print(f"sog_bytes_vs_splat_transform: {len(sog) / len(theirs):.4f}")
    print(f"sog_psnr_db: {sog_psnr[0]:.2f}")
    print(f"splat_transform_sog_psnr_db: {theirs_psnr[0]:.2f}")
    for fraction in BUDGETS:
        percent = round(fraction * 100)
        print(f"budget{percent}_psnr_db: {budget_psnr[fraction][0]:.2f}")
        print(f"splat_transform_budget{percent}_psnr_db: {budget_psnr[fraction][1]:.2f}")
        print(f"budget{percent}_seconds: {budget_seconds[fraction][0]:.2f} (splat-transform --decimate "
              f"{budget_seconds[fraction][1]:.2f}, including node's start)")


if __name__ == "__main__":
    main()

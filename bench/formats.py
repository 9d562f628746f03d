"""Benchmark of the output formats on a full-size scene (1,179,648 Gaussians).

    .venv/bin/python -m bench.formats [--preset tiny_full | --ply REAL.ply] [--repeat 3] [--size 768]

Builds a realistic scene (2 layers x 768 x 768 per-pixel Gaussians, colours from the conformance photo,
a smooth synthetic depth, small scales, opacities ~0.45 +- 0.07, near-identity rotations with noise), or
predicts one with ``--preset`` (the network at that preset, synthetic weights, on the conformance photo,
f_px 500: ``tiny_full`` gives the real count in seconds), or reads a real PLY with ``--ply``, then times
every encoder (best of ``--repeat``) and prints its size. With ``--preset`` the postprocess (unprojection
and covariance decomposition of the network's output, `unproject_to_camera`) is timed the same way.

Baselines, both built on plyfile and writing the same bytes as our `write_ply`
(`app.formats.ply.iter_ply_chunks` written atomically):
``write_ply_plyfile`` fills the structured array from a list of row tuples, as apple/ml-sharp's
``save_ply`` does (the writer this project replaces), and ``write_ply_plyfile_columnwise`` fills it column
by column (a fairer plyfile writer, printed for reference).

The last lines are always (each ratio measured in this run)::

    ply_speedup_vs_plyfile: X     (write_ply_plyfile seconds / write_ply seconds)
    spz_bytes_over_ply: Y         (.spz bytes / .ply bytes)
    spz_over_ply_encode: Z        (encode_spz seconds / encode_ply seconds)
    sog_over_ply_encode: W        (encode_sog seconds / encode_ply seconds)
    postprocess_over_ply_encode: V  (with --preset only)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.budget import keep_most_important  # noqa: E402
from app.files import write_atomically  # noqa: E402
from app.formats.json import encode_json  # noqa: E402
from app.formats.ply import (  # noqa: E402
    PLY_VERSION,
    VERTEX_PROPERTIES,
    encode_ply,
    iter_ply_chunks,
    read_ply,
)
from app.formats.sog import encode_sog  # noqa: E402
from app.formats.splat import encode_splat  # noqa: E402
from app.formats.spz import GZIP_LEVEL, encode_spz  # noqa: E402
from app.gaussians import SH_C0, GaussianScene, linear_to_srgb, srgb_to_linear  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "conformance" / "coffee.png"


def make_realistic_scene(
    size: int = 768, layers: int = 2, seed: int = 0, photo: Path = PHOTO
) -> GaussianScene:
    """A SHARP-like scene of ``layers * size * size`` Gaussians, one per pixel of a size x size grid.

    The camera is the conformance photo's (600 x 400 px, f = 500 px). Depth z (metres) is a smooth field
    between about 1.5 and 8; the second layer lies 0.2-0.5 m behind the first. Scales are the pixel
    footprint z / f times lognormal noise, sorted descending; colours are the photo (linear RGB) when it
    can be read, else a smooth gradient.

    Returns:
        A `GaussianScene` with float32 arrays, N = layers * size**2.
    """
    rng = np.random.default_rng(seed)
    width, height, f_px = 600, 400, 500.0
    try:
        from PIL import Image

        with Image.open(photo) as img:
            rgb = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
        srgb = rgb / np.float32(255)
    except (OSError, ImportError):
        t = np.linspace(0, 1, size, dtype=np.float32)
        srgb = np.stack(np.broadcast_arrays(t[None, :], t[:, None], 0.5 * (t[None, :] + t[:, None])), axis=-1)
    grid = np.arange(size, dtype=np.float32)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    u = (cols + 0.5) * (width / size)
    v = (rows + 0.5) * (height / size)
    s, t = u / width, v / height
    z0 = 3.0 + 1.2 * np.sin(2.1 * np.pi * s) * np.cos(1.3 * np.pi * t) + 2.5 * (1 - t) ** 2
    positions, scales, colors = [], [], []
    for layer in range(layers):
        z = z0 + layer * (0.2 + 0.3 * (0.5 + 0.5 * np.sin(3 * np.pi * s * t)))
        xyz = np.stack([(u - width / 2) * z / f_px, (v - height / 2) * z / f_px, z], axis=-1).reshape(-1, 3)
        footprint = (z * (width / size) / f_px).reshape(-1, 1)
        sc = footprint * np.exp(rng.normal(0.0, 0.25, (size * size, 3))) * np.array([1.2, 0.8, 0.4])
        positions.append(xyz)
        scales.append(-np.sort(-sc, axis=1))
        noise = rng.normal(0.0, 0.01, (size * size, 3)) if layer else 0.0
        colors.append(srgb_to_linear(np.clip(srgb.reshape(-1, 3) + noise, 0, 1)))
    n = layers * size * size
    rotations = np.array([1.0, 0.0, 0.0, 0.0]) + rng.normal(0.0, 0.1, (n, 4))
    rotations /= np.linalg.norm(rotations, axis=1, keepdims=True)
    return GaussianScene(
        positions=np.concatenate(positions).astype(np.float32),
        scales=np.concatenate(scales).astype(np.float32),
        rotations=rotations.astype(np.float32),
        colors=np.concatenate(colors).astype(np.float32),
        opacities=np.clip(rng.normal(0.45, 0.07, n), 0.01, 0.99).astype(np.float32),
        f_px=f_px,
        image_width=width,
        image_height=height,
    )


def predicted_scene(preset: str) -> Callable[[], GaussianScene]:
    """The postprocess of `preset`'s prediction of the conformance photo (synthetic weights, f_px 500): a call
    that unprojects the network's output (kept) to the scene, as `SharpPredictor.predict` does."""
    import torch

    from app.imaging import load_image
    from app.predictor import SharpPredictor
    from app.predictor.unproject import network_disparity_factor, unproject_to_camera

    predictor = SharpPredictor.load(preset, device="cpu", progress=False)
    image = load_image(PHOTO)
    f_px = 500.0
    factor, depth_scale = network_disparity_factor(f_px, image.width)
    with torch.inference_mode():
        gaussians = predictor.network(predictor.preprocess(image), torch.tensor([factor]))

    def postprocess() -> GaussianScene:
        with torch.inference_mode():
            return unproject_to_camera(gaussians, f_px, image.width, image.height, depth_scale=depth_scale)

    return postprocess


def _vertex_columns(scene: GaussianScene) -> np.ndarray:
    """(N, 14) float32 vertex attributes, the same formulas as the reference save_ply."""
    with np.errstate(divide="ignore", invalid="ignore"):
        opacity = np.asarray(scene.opacities, dtype=np.float32)
        return np.concatenate([
            scene.positions,
            (linear_to_srgb(scene.colors) - np.float32(0.5)) / np.float32(SH_C0),
            np.log(opacity / (np.float32(1) - opacity))[:, None],
            np.log(scene.scales),
            scene.rotations,
        ], axis=1).astype(np.float32)


def _metadata_elements(scene: GaussianScene) -> list:
    """The seven metadata PlyElements of the reference layout (disparity via torch.quantile)."""
    import torch
    from plyfile import PlyElement

    w, h, f, n = scene.image_width, scene.image_height, scene.f_px, scene.num_gaussians
    disparity = 1.0 / torch.from_numpy(np.ascontiguousarray(scene.positions[:, 2], dtype=np.float32))
    quantiles = torch.quantile(disparity, q=torch.tensor([0.1, 0.9])).float().numpy()
    values = [
        ("extrinsic", "f4", np.eye(4).flatten()),
        ("intrinsic", "f4", np.array([f, 0, w * 0.5, 0, f, h * 0.5, 0, 0, 1])),
        ("image_size", "u4", np.array([w, h])),
        ("frame", "i4", np.array([1, n], dtype=np.int32)),
        ("disparity", "f4", quantiles),
        ("color_space", "u1", np.array([0])),
        ("version", "u1", np.array(PLY_VERSION, dtype=np.uint8)),
    ]
    elements = []
    for name, dtype, value in values:
        array = np.empty(len(value), dtype=[(name, dtype)])
        array[:] = value
        elements.append(PlyElement.describe(array, name))
    return elements


def _write_with_plyfile(scene: GaussianScene, path: Path, vertex_only: bool, columnwise: bool) -> Path:
    from plyfile import PlyData, PlyElement

    attributes = _vertex_columns(scene)
    vertices = np.empty(scene.num_gaussians, dtype=[(name, "f4") for name in VERTEX_PROPERTIES])
    if columnwise:
        for i, name in enumerate(VERTEX_PROPERTIES):
            vertices[name] = attributes[:, i]
    else:
        vertices[:] = list(map(tuple, attributes))
    elements = [PlyElement.describe(vertices, "vertex")]
    if not vertex_only:
        elements += _metadata_elements(scene)
    PlyData(elements).write(str(path))
    return Path(path)


def write_ply(scene: GaussianScene, path: Path) -> Path:
    """Our PLY writer: the file streamed block by block into a temporary file, then renamed into place."""
    return write_atomically(path, iter_ply_chunks(scene))


def write_ply_plyfile(scene: GaussianScene, path: Path, vertex_only: bool = False) -> Path:
    """Baseline: the reference save_ply's way (row tuples into a structured array, then plyfile)."""
    return _write_with_plyfile(scene, path, vertex_only, columnwise=False)


def write_ply_plyfile_columnwise(scene: GaussianScene, path: Path, vertex_only: bool = False) -> Path:
    """A fairer plyfile baseline: the structured array filled column by column."""
    return _write_with_plyfile(scene, path, vertex_only, columnwise=True)


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """(fastest wall-clock seconds over `repeat` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ply", type=Path, help="measure on this PLY instead of the synthetic scene")
    parser.add_argument("--preset", help="measure on this preset's prediction of the conformance photo (tiny_full)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    parser.add_argument("--size", type=int, default=768, help="grid side of the synthetic scene")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    postprocess: Callable[[], GaussianScene] | None = None
    if args.preset:
        postprocess = predicted_scene(args.preset)
        scene = postprocess()
        source = f"{args.preset} prediction of {PHOTO.name}"
    else:
        scene = read_ply(args.ply) if args.ply else make_realistic_scene(args.size)
        source = str(args.ply) if args.ply else f"synthetic {args.size}x{args.size}x2 from {PHOTO.name}"
    built = time.perf_counter() - start
    print(f"scene: {source}, {scene.num_gaussians:,} Gaussians (built in {built:.2f} s)")

    # Warm-up: imports (torch, plyfile) and first-call costs stay out of the timings.
    tiny = make_realistic_scene(8)
    with tempfile.TemporaryDirectory() as tmp:
        write_ply_plyfile(tiny, Path(tmp) / "warm.ply")
    encode_spz(tiny)
    encode_sog(tiny)

    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t_ours, _ = best_time(lambda: write_ply(scene, out / "ours.ply"), args.repeat)
        rows.append(("ply write_ply (file)", t_ours, (out / "ours.ply").stat().st_size))
        t_ply, data = best_time(lambda: encode_ply(scene), args.repeat)
        ply_bytes = len(data)
        rows.append(("ply encode_ply (bytes)", t_ply, ply_bytes))
        t_cols, _ = best_time(lambda: write_ply_plyfile_columnwise(scene, out / "cols.ply"), args.repeat)
        rows.append(("ply plyfile column-wise (file)", t_cols, (out / "cols.ply").stat().st_size))
        t_base, _ = best_time(lambda: write_ply_plyfile(scene, out / "base.ply"), args.repeat)
        rows.append(("ply plyfile reference-style (file)", t_base, (out / "base.ply").stat().st_size))
        same = (out / "base.ply").read_bytes() == (out / "ours.ply").read_bytes() == data
    del data
    t, data = best_time(lambda: encode_splat(scene), args.repeat)
    rows.append(("splat (sorted)", t, len(data)))
    spz_bytes, t_spz = 0, 0.0
    for version, level in ((3, GZIP_LEVEL), (3, 1), (3, 3), (2, GZIP_LEVEL)):
        t, data = best_time(lambda v=version, lv=level: encode_spz(scene, version=v, compresslevel=lv),
                            args.repeat)
        rows.append((f"spz v{version} ISA-L level {level}", t, len(data)))
        if (version, level) == (3, GZIP_LEVEL):
            spz_bytes, t_spz = len(data), t
    t_sog, data = best_time(lambda: encode_sog(scene), args.repeat)
    rows.append(("sog", t_sog, len(data)))
    t_post = best_time(postprocess, args.repeat)[0] if postprocess else 0.0
    for encoding in ("list", "base64"):
        t, data = best_time(lambda e=encoding: encode_json(scene, {"bench": True}, encoding=e), args.repeat)
        rows.append((f"json {encoding}", t, len(data)))
    small = keep_most_important(scene, 100_000)
    t, data = best_time(lambda: encode_json(small, {}, encoding="list"), args.repeat)
    rows.append(("json list, 100k most important", t, len(data)))
    del data

    for name, seconds, size in rows:
        print(f"{name:38s} {seconds * 1000:9.1f} ms {size:14,d} B  {size / max(ply_bytes, 1):6.3f} x ply")
    print(f"plyfile baselines write identical bytes: {same}")
    print(f"ply_speedup_vs_plyfile_columnwise: {t_cols / t_ours:.2f}")
    print(f"ply_speedup_vs_plyfile: {t_base / t_ours:.2f}")
    if postprocess:
        print(f"postprocess (unproject_to_camera)       {t_post * 1000:9.1f} ms")
    print(f"spz_bytes_over_ply: {spz_bytes / ply_bytes:.3f}")
    print(f"spz_over_ply_encode: {t_spz / t_ply:.2f}")
    print(f"sog_over_ply_encode: {t_sog / t_ply:.2f}")
    if postprocess:
        print(f"postprocess_over_ply_encode: {t_post / t_ply:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

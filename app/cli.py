"""Command-line interface: `python -m app predict ...` and `python -m app serve ...`.

`predict` is shaped like the reference's `sharp predict`: it writes OUT_DIR/<stem>.<format>
for each input image and prints a short summary per image.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from app import __version__
from app.render.cli import add_render_parser, run_render
from app.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="SHARP: one photo -> 3D Gaussians.")
    parser.add_argument("--version", action="version", version=f"sharp-serve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="predict Gaussians for images and write splat files")
    predict.add_argument("-i", "--input", type=Path, required=True, help="an image file or a directory of images")
    predict.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    predict.add_argument("-c", "--checkpoint", type=Path, help="checkpoint file (default: cached/downloaded official)")
    predict.add_argument("--f-px", type=float, help="focal length in pixels (default: from EXIF, else 30 mm)")
    predict.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    predict.add_argument("--dtype", default=None, choices=["float32", "tf32", "bfloat16", "float16"])
    predict.add_argument("--preset", default=None, choices=["sharp", "tiny"],
                         help="network size; 'tiny' is a test configuration with synthetic weights")
    predict.add_argument("--format", default="ply", help="output format: ply, splat or spz")
    predict.add_argument("--vertex-only", action="store_true", help="PLY: write only the vertex element")

    serve = commands.add_parser("serve", help="run the HTTP API with uvicorn")
    serve.add_argument("--host", default=None, help="bind address (default SHARP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default SHARP_PORT or 8000)")
    serve.add_argument("--preset", default=None, choices=["sharp", "tiny"])
    add_render_parser(commands)
    return parser


def _settings_with(**overrides: object) -> Settings:
    """Settings from the environment, with the command line's non-None options on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def run_predict(args: argparse.Namespace) -> int:
    from app.formats import FORMATS, write_file
    from app.imaging import ImageError, find_images, load_image
    from app.predictor import SharpPredictor
    from app.weights import CheckpointError

    if args.format not in FORMATS:
        print(f"error: unknown format {args.format!r}; choose one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.f_px is not None and not (0 < args.f_px < float("inf")):
        print(f"error: --f-px must be a finite number > 0, got {args.f_px}", file=sys.stderr)
        return 2
    output_format = FORMATS[args.format]
    try:
        images = find_images(args.input)
    except (ImageError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not images:
        print(f"error: no supported images found under {args.input}", file=sys.stderr)
        return 2

    settings = _settings_with(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, preset=args.preset)
    start = time.perf_counter()
    try:
        predictor = SharpPredictor.from_settings(settings, progress=True)
    except (CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    info = predictor.info
    weights = info.weights if info.checkpoint is None else f"{info.weights} ({info.checkpoint})"
    print(f"model: preset={info.preset} weights={weights} device={info.device} dtype={info.dtype} "
          f"loaded in {time.perf_counter() - start:.1f}s")
    if info.weights == "synthetic":
        print("warning: synthetic weights: the output is NOT a real SHARP prediction", file=sys.stderr)

    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    for number, path in enumerate(images, start=1):
        prefix = f"[{number}/{len(images)}] " if len(images) > 1 else ""
        try:
            decode_start = time.perf_counter()
            image = load_image(path, max_pixels=settings.max_pixels)
            decode_ms = (time.perf_counter() - decode_start) * 1000
            prediction = predictor.predict(image, args.f_px)
            encode_start = time.perf_counter()
            destination = args.output / f"{image.name}{output_format.extension}"
            options = {"vertex_only": True} if args.vertex_only and output_format.name == "ply" else {}
            write_file(output_format.name, prediction.scene, destination, **options)
            encode_ms = (time.perf_counter() - encode_start) * 1000
        except ImageError as error:
            failures += 1
            print(f"{prefix}{path}: skipped: {error}", file=sys.stderr)
            continue
        scene = prediction.scene
        stages = {"decode": decode_ms, **prediction.timings_ms, "write": encode_ms}
        timing = " ".join(f"{name}={ms / 1000:.2f}s" for name, ms in stages.items())
        print(f"{prefix}{path.name}: {scene.image_width}x{scene.image_height} px, "
              f"f_px={scene.f_px:.1f} ({prediction.f_px_source}), {scene.num_gaussians:,} Gaussians "
              f"-> {destination} [{timing}]")
    return 1 if failures else 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.api import create_app

    settings = _settings_with(host=args.host, port=args.port, preset=args.preset)
    # app.access logs each request once, with its request id; uvicorn's own access log would repeat it.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("SHARP_LOG_LEVEL", "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "predict":
        return run_predict(args)
    if args.command == "render":
        return run_render(args)
    return run_serve(args)

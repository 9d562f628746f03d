"""Command-line interface: `python -m app predict ...` and `python -m app serve ...`.

`predict` is shaped like the reference's `sharp predict`: it writes OUT_DIR/<stem>.<ext> for each input
image and prints a short summary per image. It runs `app.pipeline` (decode -> predict -> encode), the
same path as the HTTP service. Usage errors print one `error:` line and exit 2; an image that fails is
reported and skipped, and the run then exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from app import __version__
from app.errors import SharpError
from app.files import write_atomically
from app.formats import FORMATS
from app.model.presets import PRESETS
from app.render.cli import add_render_parser, run_render
from app.settings import Settings
from app.vocabulary import DeviceName, DTypeName, choices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="SHARP: one photo -> 3D Gaussians.")
    parser.add_argument("--version", action="version", version=f"sharp-serve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(f"'{p.name}': {p.description}" for p in PRESETS.values())

    predict = commands.add_parser("predict", help="predict Gaussians for images and write splat files")
    predict.add_argument("-i", "--input", type=Path, required=True, help="an image file or a directory of images")
    predict.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    predict.add_argument("-c", "--checkpoint", type=Path, help="checkpoint file (default: cached/downloaded official)")
    predict.add_argument("--f-px", type=float, help="focal length in pixels (default: from EXIF, else 30 mm)")
    predict.add_argument("--device", default=None, choices=choices(DeviceName))
    predict.add_argument("--dtype", default=None, choices=choices(DTypeName))
    predict.add_argument("--preset", default=None, choices=list(PRESETS), help=f"network: {presets}")
    predict.add_argument("--format", default="ply", choices=[n for n, f in FORMATS.items() if f.kind == "scene"],
                         help="output format (default: ply)")
    predict.add_argument("--vertex-only", action="store_true", help="PLY only: write just the vertex element "
                         "(the same as --format ply_vertex)")
    predict.add_argument("--preview", action="store_true", help="also render the scene from the photo's viewpoint "
                         "into OUT_DIR/<stem>.png (our PyTorch renderer; no CUDA needed)")

    serve = commands.add_parser("serve", help="run the HTTP API with uvicorn")
    serve.add_argument("--host", default=None, help="bind address (default SHARP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default SHARP_PORT or 8000)")
    serve.add_argument("--preset", default=None, choices=list(PRESETS), help=f"network: {presets}")

    from app.client import add_parser  # `remote`: the jobs API client (app/client.py)

    add_parser(commands)
    add_render_parser(commands)
    return parser


class UsageError(Exception):
    """A bad option, setting or path: one `error:` line and exit status 2."""


def _settings_with(**overrides: object) -> Settings:
    """Settings from the environment, with the command line's non-None options on top."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as error:
        problems = "; ".join(f"SHARP_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                             for e in error.errors())
        raise UsageError(f"invalid setting: {problems}") from None


def _output_format(args: argparse.Namespace) -> str:
    if not args.vertex_only:
        return args.format
    if args.format not in ("ply", "ply_vertex"):
        raise UsageError(f"--vertex-only does nothing for --format {args.format}; it applies to ply only")
    return "ply_vertex"


def _output_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UsageError(f"-o {path} is a file; give a directory to write the outputs into")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the output directory {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"the output directory {path} is not writable")
    return path


def run_predict(args: argparse.Namespace) -> int:
    from app import pipeline
    from app.imaging import find_images
    from app.predictor import SharpPredictor, check_f_px

    format_name = _output_format(args)
    try:
        check_f_px(args.f_px)
    except SharpError as error:
        raise UsageError(f"--f-px: {error.message}") from None
    try:
        images = find_images(args.input)
    except (SharpError, OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not images:
        raise UsageError(f"no supported images found under {args.input}")
    output_dir = _output_dir(args.output)

    settings = _settings_with(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, preset=args.preset)
    start = time.perf_counter()
    try:
        predictor = SharpPredictor.from_settings(settings, progress=True)
    except (SharpError, ValueError) as error:
        raise UsageError(str(error)) from None
    info = predictor.info
    weights = info.weights if info.checkpoint is None else f"{info.weights} ({info.checkpoint})"
    print(f"model: preset={info.preset} weights={weights} device={info.device} dtype={info.dtype} "
          f"loaded in {time.perf_counter() - start:.1f}s")
    if info.weights == "synthetic":
        print("warning: synthetic weights: the output is NOT a real SHARP prediction", file=sys.stderr)

    failures = 0
    for number, path in enumerate(images, start=1):
        prefix = f"[{number}/{len(images)}] " if len(images) > 1 else ""
        try:
            prediction, output = pipeline.run(predictor, path, format_name, max_pixels=settings.max_pixels,
                                              f_px=args.f_px)
            start = time.perf_counter()
            destination = write_atomically(output_dir / output.filename, [output.body])
            prediction.timings_ms["write"] = (time.perf_counter() - start) * 1000
            if args.preview:
                encode_ms = prediction.timings_ms["encode"]
                preview = pipeline.encode(prediction, "preview")
                prediction.timings_ms["preview"] = prediction.timings_ms["encode"]
                prediction.timings_ms["encode"] = encode_ms
                write_atomically(output_dir / preview.filename, [preview.body])
        except Exception as error:  # one bad image never stops the others
            failures += 1
            reason = error.message if isinstance(error, SharpError) else f"{type(error).__name__}: {error}"
            print(f"{prefix}{path}: skipped: {reason}", file=sys.stderr)
            if not isinstance(error, (SharpError, OSError)):
                logging.getLogger(__name__).debug("unexpected failure on %s", path, exc_info=True)
            continue
        scene = prediction.scene
        timing = " ".join(f"{name}={ms / 1000:.2f}s" for name, ms in prediction.timings_ms.items())
        print(f"{prefix}{path.name}: {scene.image_width}x{scene.image_height} px, "
              f"f_px={scene.f_px:.1f} ({prediction.f_px_source}), {scene.num_gaussians:,} Gaussians "
              f"-> {destination} [{timing}]")
    return 1 if failures else 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http import create_app
    from app.http.server import UVICORN_OPTIONS

    settings = _settings_with(host=args.host, port=args.port, preset=args.preset)
    # app.access logs each request once, with its request id; uvicorn's own access log would repeat it.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False, **UVICORN_OPTIONS)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = os.environ.get("SHARP_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level if isinstance(logging.getLevelName(level), int) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "predict":
            return run_predict(args)
        if args.command == "remote":
            from app.client import run_remote

            return run_remote(args)
        if args.command == "render":
            return run_render(args)
        return run_serve(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

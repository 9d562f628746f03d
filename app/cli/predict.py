"""`python -m app predict -i IMAGE_OR_DIR -o OUT_DIR [options]`: photos -> splat files on this machine.

Shaped like the reference's `sharp predict`: it writes OUT_DIR/<stem><suffix> for each input image (the
registry's file-name rule, `app.outputs`) and prints a short summary per image. It calls `app.pipeline.run`,
the same path as the HTTP service. Usage errors print one `error:` line and exit 2; an image that fails is
reported and skipped, and the run then exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from app.cli import video
from app.cli.common import (
    UsageError,
    f_px_option,
    gaussians_kept,
    max_gaussians_option,
    output_folder,
    settings_with,
)
from app.errors import SharpError
from app.files import write_atomically
from app.model.presets import PRESETS
from app.outputs import CLIP_FORMATS, SCENE_FORMATS
from app.vocabulary import DeviceName, DTypeName, choices


def add_parser(commands: Any) -> None:
    presets = ", ".join(f"'{p.name}': {p.description}" for p in PRESETS.values())
    predict = commands.add_parser("predict", help="predict Gaussians for images and write splat files")
    predict.add_argument("-i", "--input", type=Path, required=True,
                         help="an image file, a directory of images, or a video clip (a scene per frame)")
    predict.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    predict.add_argument("-c", "--checkpoint", type=Path, help="checkpoint file (default: cached/downloaded official)")
    predict.add_argument("--f-px", type=f_px_option, help="focal length in pixels (default: from EXIF, else 30 mm)")
    predict.add_argument("--device", default=None, choices=choices(DeviceName))
    predict.add_argument("--dtype", default=None, choices=choices(DTypeName))
    predict.add_argument("--preset", default=None, choices=list(PRESETS), help=f"network: {presets}")
    predict.add_argument("--format", default="ply", choices=SCENE_FORMATS + CLIP_FORMATS,
                         help="output format (default: ply; sequence: a clip in one .sogv file)")
    predict.add_argument("--vertex-only", action="store_true", help="PLY only: write just the vertex element "
                         "(the same as --format ply_vertex)")
    predict.add_argument("--max-gaussians", type=max_gaussians_option, metavar="N|F",
                         help="a splat budget for every output (the preview too): merge neighbouring Gaussians "
                              "down to N (or the fraction F in (0, 1]); default: all")
    predict.add_argument("--preview", action=argparse.BooleanOptionalAction, default=None,
                         help="a photo: also render the scene from its viewpoint into OUT_DIR/<stem>.png (our "
                              "PyTorch renderer; no CUDA needed); default off. A clip: write OUT_DIR/preview.mp4 "
                              "(each frame beside its scene); default on a GPU, off on a CPU, where that render "
                              "costs more than the frame's forward pass")
    video.add_arguments(predict)
    predict.set_defaults(run=run)


def _output_format(args: argparse.Namespace) -> str:
    if not args.vertex_only:
        return args.format
    if args.format not in ("ply", "ply_vertex"):
        raise UsageError(f"--vertex-only does nothing for --format {args.format}; it applies to ply only")
    return "ply_vertex"


def run(args: argparse.Namespace) -> int:
    """The `predict` command; a failed run leaves no output folder it made (`output_folder`)."""
    format_name = _output_format(args)
    clip, images = video.find_inputs(args)
    with output_folder(args.output) as output_dir:
        return _run(args, format_name, clip, images, output_dir)


def _run(args: argparse.Namespace, format_name: str, clip: bool, images: list[Path], output_dir: Path) -> int:
    from app import pipeline
    from app.budget import budget_count
    from app.predictor import SharpPredictor

    outputs: dict[str, dict[str, Any]] = {format_name: {}}
    if args.preview and not clip:
        outputs["preview"] = {}
    settings = settings_with(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, preset=args.preset)
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
    if args.max_gaussians is not None:
        try:
            budget_count(args.max_gaussians, info.num_gaussians)
        except SharpError as error:
            raise UsageError(f"--max-gaussians: {error.message}") from None

    if clip:
        return video.run_clip(args, predictor, settings, outputs, output_dir)
    failures = 0
    for number, path in enumerate(images, start=1):
        prefix = f"[{number}/{len(images)}] " if len(images) > 1 else ""
        try:
            result = pipeline.run(predictor, path, outputs, max_pixels=settings.max_pixels, f_px=args.f_px,
                                  max_gaussians=args.max_gaussians)
            start = time.perf_counter()
            written = [write_atomically(output_dir / output.filename, [output.body])
                       for output in result.outputs.values()]
            timings = {**result.timings_ms, "encode": result.outputs[format_name].encode_ms,
                       "write": (time.perf_counter() - start) * 1000}
            if args.preview:
                timings["preview"] = result.outputs["preview"].encode_ms
        except Exception as error:  # one bad image never stops the others
            failures += 1
            reason = error.message if isinstance(error, SharpError) else f"{type(error).__name__}: {error}"
            print(f"{prefix}{path}: skipped: {reason}", file=sys.stderr)
            if not isinstance(error, (SharpError, OSError)):
                logging.getLogger(__name__).debug("unexpected failure on %s", path, exc_info=True)
            continue
        prediction = result.prediction
        scene = prediction.scene
        gaussians = gaussians_kept(scene.num_gaussians, prediction.num_predicted)
        timing = " ".join(f"{name}={ms / 1000:.2f}s" for name, ms in timings.items())
        print(f"{prefix}{path.name}: {scene.image_width}x{scene.image_height} px, "
              f"f_px={scene.f_px:.1f} ({prediction.f_px_source}), {gaussians} -> {written[0]} [{timing}]")
    return 1 if failures else 0

"""``python -m app render SCENE -o OUT.png|OUT.jpg|OUT.mp4|OUT.gif [options]``.

A still image shows the input view (the photo's camera); a video follows a camera path (default ``orbit``,
60 frames at 30 fps) that starts there. Errors print one ``error: ...`` line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from app.render.errors import RenderError

DEFAULT_LONGEST_SIDE = 1024
"""Without --size, the output keeps the scene's image size, scaled down to at most this on its longer side."""
DEFAULT_FRAMES = 60


def parse_size(text: str) -> tuple[int, int] | int:
    """``WxH`` -> (W, H); ``N`` -> N (the longer side, keeping the scene's aspect ratio)."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*(?:[xX×]\s*(\d{1,6}))?\s*", text)
    if not match:
        raise RenderError("bad_size", f"size must be WxH or N (pixels), got {text!r}")
    if match.group(2) is None:
        return int(match.group(1))
    return int(match.group(1)), int(match.group(2))


def parse_color(text: str) -> tuple[float, float, float]:
    """``black``, ``white``, ``gray`` or ``#rrggbb`` -> RGB in [0, 1]."""
    names = {"black": "#000000", "white": "#ffffff", "gray": "#808080", "grey": "#808080"}
    value = names.get(text.strip().lower(), text.strip())
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
        raise RenderError("bad_option", f"background must be black, white, gray or #rrggbb, got {text!r}")
    return tuple(int(value[i:i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def add_render_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``render`` command to `subparsers` and return its parser."""
    parser = subparsers.add_parser("render", help="render a splat file to an image or a video (no CUDA needed)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="a .ply (ours or any 3DGS PLY), .splat or .spz file")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output file: .png or .jpg (input view), .mp4 or .gif (camera path)")
    parser.add_argument("--f-px", type=float, default=None,
                        help="focal length in pixels of the output image (default: the file's camera, scaled; "
                             "files without one: a 30 mm lens)")
    parser.add_argument("--size", default=None,
                        help=f"output WxH, or N for the longer side (default: the scene's size, at most "
                             f"{DEFAULT_LONGEST_SIDE} px)")
    parser.add_argument("--path", default="orbit", choices=["orbit", "swipe", "dolly", "zoom"],
                        help="camera path of a video (default orbit)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"video frames (default {DEFAULT_FRAMES})")
    parser.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    parser.add_argument("--depth", action="store_true", help="still image: write the depth map (near = bright)")
    parser.add_argument("--background", default="black", help="black, white, gray or #rrggbb (default black)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return parser


def _output_size(scene_size: tuple[int, int], requested: tuple[int, int] | int | None,
                 even: bool) -> tuple[int, int]:
    from app.render.camera import check_size, scaled_size

    width, height = scene_size
    if isinstance(requested, tuple):
        size = requested
    else:
        longest = requested if requested is not None else min(DEFAULT_LONGEST_SIDE, max(width, height))
        size = scaled_size(width, height, longest)
    check_size(*size)
    if even and (size[0] % 2 or size[1] % 2):
        raise RenderError("bad_size", f"videos need an even width and height, got {size[0]}x{size[1]}")
    return size


def run_render(args: argparse.Namespace) -> int:
    """Run the ``render`` command; returns the exit status (0, or 2 for bad input)."""
    try:
        return _run(args)
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
    except OSError as error:
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from app.formats.files import write_atomically
    from app.render.camera import camera_path, input_camera
    from app.render.renderer import prepare_scene, render, render_frames, to_uint8
    from app.render.scene_io import load_scene, with_camera
    from app.render.video import IMAGE_FORMATS, VIDEO_FORMATS, depth_to_gray, encode_gif, encode_image, encode_mp4

    fmt = args.output.suffix.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS + VIDEO_FORMATS:
        raise RenderError("unsupported_format", f"output must end in .png, .jpg, .mp4 or .gif, got {args.output}")
    if fmt in VIDEO_FORMATS and args.depth:
        raise RenderError("bad_option", "--depth is for still images (.png, .jpg)")
    if not 1 <= args.fps <= 120:
        raise RenderError("bad_option", f"--fps must be from 1 to 120, got {args.fps}")
    background = parse_color(args.background)
    requested = parse_size(args.size) if args.size is not None else None

    start = time.perf_counter()
    scene = load_scene(args.scene)
    size = _output_size((scene.image_width, scene.image_height), requested, even=fmt == "mp4")
    if args.f_px is not None:
        scene = with_camera(scene, f_px=args.f_px, size=size)
    gaussians = prepare_scene(scene, args.device)
    loaded = time.perf_counter()
    if fmt in IMAGE_FORMATS:
        frame = render(gaussians, input_camera(scene, size), background=background)
        if args.depth:
            pixels = depth_to_gray(frame.depth.cpu().numpy(), frame.alpha.cpu().numpy())
        else:
            pixels = to_uint8(frame.color)
        data = encode_image(pixels, fmt)
        count = 1
    else:
        cameras = camera_path(scene, args.path, args.frames, size)
        frames = render_frames(gaussians, cameras, background=background)
        data = encode_mp4(frames, fps=args.fps) if fmt == "mp4" else encode_gif(frames, fps=args.fps)
        count = len(cameras)
    write_atomically(args.output, [data])
    elapsed = time.perf_counter() - loaded
    print(f"{args.scene.name}: {scene.num_gaussians:,} Gaussians, {size[0]}x{size[1]} px, {count} frame(s) on "
          f"{gaussians.device} in {elapsed:.2f}s (load {loaded - start:.2f}s) -> {args.output} ({len(data):,} bytes)")
    return 0

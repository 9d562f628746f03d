"""``python -m app render SCENE -o OUT.png|OUT.jpg|OUT.mp4|OUT.gif [options]``.

A still image shows the input view (the photo's camera); a video follows a camera path (default ``orbit``,
60 frames at 30 fps) that starts there. Errors print one ``error: ...`` line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.common import Progress, gaussians_kept, max_gaussians_option
from app.errors import SharpError
from app.render.errors import RenderError

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


def add_parser(commands: Any) -> None:
    """Add the ``render`` command to `commands`."""
    parser = commands.add_parser("render", help="render a splat file to an image or a video (no CUDA needed)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("scene", type=Path, help="a .ply (ours or any 3DGS PLY), .splat, .spz, .sog or .sogv file")
    parser.add_argument("--frame", type=int, default=None, metavar="K",
                        help="a .sogv sequence: draw its frame K (0-based; default 0)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output file: .png or .jpg (input view), .mp4 or .gif (camera path)")
    parser.add_argument("--f-px", type=float, default=None,
                        help="focal length in pixels of the output image (default: the file's camera, scaled; "
                             "files without one: a 30 mm lens)")
    parser.add_argument("--size", default=None,
                        help="output WxH, or N for the longer side (default: the scene's size, at most "
                             "1024 px)")
    parser.add_argument("--path", default="orbit", choices=["orbit", "swipe", "dolly", "zoom"],
                        help="camera path of a video (default orbit)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"video frames (default {DEFAULT_FRAMES})")
    parser.add_argument("--fps", type=int, default=30, help="video frame rate (default 30)")
    parser.add_argument("--depth", action="store_true", help="still image: write the depth map (near = bright)")
    parser.add_argument("--background", default="black", help="black, white, gray or #rrggbb (default black)")
    parser.add_argument("--max-gaussians", type=max_gaussians_option, metavar="N|F",
                        help="draw N Gaussians (or the fraction F in (0, 1]): the budget of `predict --max-gaussians`, "
                             "merged on the grid of a predicted scene's PLY, else the N that matter most at the "
                             "file's camera; default: all")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the ``render`` command; returns the exit status (0, or 2 for bad input)."""
    try:
        return _run(args)
    except RenderError as error:
        print(f"error: {error}", file=sys.stderr)
    except SharpError as error:  # a budget above the scene's count
        print(f"error: --max-gaussians: {error.message}", file=sys.stderr)
    except OSError as error:
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from app.budget import apply_budget
    from app.files import write_atomically
    from app.render.pictures import output_size, render_still, video_chunks
    from app.render.scene_io import load_scene
    from app.render.video import IMAGE_FORMATS, VIDEO_FORMATS

    fmt = args.output.suffix.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS + VIDEO_FORMATS:
        raise RenderError("unsupported_format", f"output must end in .png, .jpg, .mp4 or .gif, got {args.output}")
    if fmt in VIDEO_FORMATS and args.depth:
        raise RenderError("bad_option", "--depth is for still images (.png, .jpg)")
    _check_output_folder(args.output)
    options = {"size": parse_size(args.size) if args.size is not None else None,
               "background": parse_color(args.background), "f_px": args.f_px, "device": args.device, "fmt": fmt}

    start = time.perf_counter()
    scene = load_scene(args.scene, frame=args.frame)
    num_predicted = scene.num_gaussians
    scene = apply_budget(scene, args.max_gaussians)
    loaded = time.perf_counter()
    if fmt in IMAGE_FORMATS:
        chunks = iter([render_still(scene, depth=args.depth, **options)])
        count, bar = 1, None
    else:
        bar = FrameProgress(f"{args.scene.name} -> {args.output.name}")
        chunks = video_chunks(scene, path=args.path, frames=args.frames, fps=args.fps, progress=bar.update,
                              **options)
        count = args.frames
    try:
        write_atomically(args.output, chunks)
    except OSError as error:
        raise RenderError("bad_option", f"cannot write {args.output}: {error.strerror or error}") from None
    finally:
        if bar is not None:
            bar.close()
    width, height = output_size(scene, options["size"])
    gaussians = gaussians_kept(scene.num_gaussians, num_predicted)
    print(f"{args.scene.name}: {gaussians}, {width}x{height} px, {count} frame(s) in "
          f"{time.perf_counter() - loaded:.2f}s (load {loaded - start:.2f}s) -> {args.output} "
          f"({args.output.stat().st_size:,} bytes)")
    return 0


def _check_output_folder(output: Path) -> None:
    """Refuse an output whose folder is missing or not writable before any work (`bad_option`)."""
    folder = output.parent
    if not folder.is_dir():
        raise RenderError("bad_option", f"the output folder {folder} does not exist (for {output})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RenderError("bad_option", f"the output folder {folder} is not writable (for {output})")
    if output.is_dir():
        raise RenderError("bad_option", f"the output {output} is a folder")


class FrameProgress:
    """A video's progress on stderr: on a terminal ``label: [#####     ] 12/60 frames, 0:42 left``, redrawn in
    place; elsewhere (a log, a pipe) a plain line at every tenth of the frames and at least once a minute:
    ``label: frame 12/60, 0:10 elapsed, 0:42 left``."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.progress = Progress(1)  # the clock starts here; the frame count comes with the first update
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        self.progress.total = max(1, total)
        if not self.tty:
            if self.progress.plain_line(done):
                print(f"{self.label}: frame {self.progress.status(done, total)}", file=sys.stderr, flush=True)
            return
        elapsed = time.monotonic() - self.progress.start
        left = int(elapsed / done * (total - done))
        bar = "#" * (30 * done // total)
        sys.stderr.write(f"\r{self.label}: [{bar:<30}] {done}/{total} frames, {left // 60}:{left % 60:02d} left\033[K")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False

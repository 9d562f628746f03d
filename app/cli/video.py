"""`python -m app predict -i CLIP -o OUT_DIR [--fps --start --end --max-frames --align --max-gaussians]`: a clip
-> a scene per frame on this machine, through `app.sequence.run_sequence` (docs/video.md).

`predict` hands a clip here when its input is a video file (by suffix or content, `app.video.is_video_path`).
It writes OUT_DIR/frames/000000<suffix>, ..., OUT_DIR/manifest.json and, with the preview, OUT_DIR/preview.mp4
(each file atomically, as it is made) and prints one line per frame: `[frame k/n]`, the time elapsed and the
time left. Without `--fps` it takes `default_fps` frames a second (1 with the default limits: a clip of up to
two minutes fits the 120-frame limit). A clip that is not usable prints one `error:` line and exits 2; a
failure after some frames were written leaves those frames (complete files) and no manifest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.common import Progress, UsageError, gaussians_kept
from app.errors import SharpError
from app.files import write_atomically
from app.jobs.job import SEQUENCE_FILE_PATTERN, SEQUENCE_ZIP
from app.settings import Settings
from app.video import Sampling, VideoLimits, is_video_path
from app.vocabulary import AlignMode, choices

__all__ = ["SEQUENCE_ZIP", "add_arguments", "find_inputs", "form_fields", "is_clip_file", "is_video_path",
           "photo_flags_used", "run_clip"]

SAMPLING_FLAGS = ("fps", "start", "end", "max_frames", "align")


def add_arguments(predict: argparse.ArgumentParser) -> None:
    """The clip options of `predict`."""
    clip = predict.add_argument_group("video input (-i a clip: MP4, MOV, WebM, ...; see docs/video.md)")
    clip.add_argument("--fps", type=_fps_option, help="frames taken per second, or 'all' for every frame (default: "
                      "1, with the default limits: SHARP_VIDEO_MAX_FRAMES / SHARP_VIDEO_MAX_DURATION_S, so that "
                      "any clip short enough is taken whole; a minute of phone video is 60 frames)")
    clip.add_argument("--start", type=float, help="first second taken (default: 0)")
    clip.add_argument("--end", type=float, help="seconds: take frames before this time (default: the clip's end)")
    clip.add_argument("--max-frames", type=int, help="take at most this many frames")
    clip.add_argument("--align", choices=choices(AlignMode), help="scale: scale each frame's scene so that its depths "
                      "agree with the previous frame's; none (default): each frame as its own photo")


EVERY_FRAME = "all"
"""`--fps all`: take every frame of the clip."""


def _fps_option(text: str) -> float | str:
    if text.strip().lower() == EVERY_FRAME:
        return EVERY_FRAME
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second or 'all', got {text!r}") from None


def default_fps(settings: Settings) -> float:
    """The frame rate taken when `--fps` is not given: the longest clip allowed fills the frame limit."""
    return settings.video_max_frames / settings.video_max_duration_s


def sampling_fps(args: argparse.Namespace, settings: Settings) -> float | None:
    """The frames per second to take (None: every frame), from `--fps` or `default_fps`."""
    if args.fps == EVERY_FRAME:
        return None
    return default_fps(settings) if args.fps is None else args.fps


def form_fields(args: argparse.Namespace, settings: Settings) -> dict[str, str]:
    """The clip options, as `POST /jobs` form fields (`remote`); `fps` is the CLI's default when not given."""
    fields = {name: str(getattr(args, name)) for name in SAMPLING_FLAGS if getattr(args, name, None) is not None}
    fields.pop("fps", None)
    fps = sampling_fps(args, settings)
    return fields if fps is None else {"fps": f"{fps:g}", **fields}


def is_clip_file(path: str) -> bool:
    """Whether `path` is one of a clip job's files (a server's answer is checked before it names a file here)."""
    return SEQUENCE_FILE_PATTERN.fullmatch(path) is not None


def photo_flags_used(args: argparse.Namespace) -> list[str]:
    """The clip options given on the command line (an error for a photo input)."""
    return [f"--{name.replace('_', '-')}" for name in SAMPLING_FLAGS if getattr(args, name, None) is not None]


def find_inputs(args: argparse.Namespace) -> tuple[bool, list[Path]]:
    """Whether `args.input` is a clip, and the files to run: `[args.input]` for a clip, else the images found
    at that path (`app.imaging.find_images`).

    Raises:
        UsageError: clip options for a photo input, a path that does not exist or is not a supported image,
            or a folder without any image.
    """
    clip = args.input.is_file() and is_video_path(args.input)
    if not clip and (flags := photo_flags_used(args)):
        raise UsageError(f"{', '.join(flags)} only {'applies' if len(flags) == 1 else 'apply'} to a video input")
    try:
        from app.imaging import find_images

        images = [args.input] if clip else find_images(args.input)
    except (SharpError, OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    if not images:
        raise UsageError(f"no supported images found under {args.input}")
    return clip, images


def run_clip(args: argparse.Namespace, predictor: Any, settings: Settings, outputs: dict[str, dict[str, Any]],
             output_dir: Path) -> int:
    """Predict every sampled frame of the clip `args.input` into `output_dir`; 0, or 2 for an unusable clip.

    The preview (`preview.mp4`) is made with `--preview`, left out with `--no-preview`, and by default made on
    a GPU and left out on a CPU, where its render per frame costs more than the tiny networks' forward pass."""
    from app.sequence import run_sequence

    sampling = Sampling(fps=sampling_fps(args, settings), start=args.start or 0.0, end=args.end,
                        max_frames=args.max_frames)
    preview = args.preview if args.preview is not None else not str(predictor.info.device).startswith("cpu")
    started = time.perf_counter()
    progress = Progress(1)
    frames_seen: list[int] = [1]  # the expected count, from run_sequence's progress calls

    def on_progress(frame: int, frames: int, stage: str, fraction: float) -> None:
        frames_seen[0] = frames

    def write(path: str, body: bytes) -> None:
        target = output_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, [body])

    def frame_line(record: dict[str, Any]) -> None:
        timing = " ".join(f"{name}={ms / 1000:.2f}s" for name, ms in record["timings_ms"].items())
        gaussians = gaussians_kept(record["num_gaussians"], record["num_predicted"])
        status = progress.status(record["index"] + 1, frames_seen[0])
        print(f"[frame {status}] t={record['time_s']:.3f}s f_px={record['f_px']:.1f} "
              f"({record['f_px_source']}) scale={record['scale']:.4f} {gaussians} "
              f"-> {', '.join(record['files'].values())} [{timing}]", flush=True)

    try:
        manifest = run_sequence(predictor, args.input, outputs, sink=write, limits=VideoLimits.from_settings(settings),
                                sampling=sampling, f_px=args.f_px, align=args.align or "none",
                                max_gaussians=args.max_gaussians, on_frame=frame_line, preview=preview,
                                progress=on_progress)
    except SharpError as error:
        raise UsageError(f"{args.input}: {error.message}") from None
    except OSError as error:
        raise UsageError(f"{args.input}: {error.strerror or error}") from None
    made = [output_dir / "manifest.json"] + ([output_dir / "preview.mp4"] if preview else [])
    made += [output_dir / manifest["sequence"]] if manifest.get("sequence") else []
    print(f"{manifest['num_frames']} frames in {time.perf_counter() - started:.1f}s -> "
          f"{', '.join(str(path) for path in made)}", file=sys.stdout)
    return 0

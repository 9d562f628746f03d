"""`python -m app predict -i CLIP -o OUT_DIR [--fps --start --end --max-frames --align --max-gaussians]`: a clip
-> a scene per frame on this machine, through `app.sequence.run_sequence` (docs/video.md).

`predict` hands a clip here when its input is a video file (by suffix or content, `app.video.is_video_path`).
It writes OUT_DIR/frames/000000<suffix>, ..., OUT_DIR/preview.mp4 and OUT_DIR/manifest.json (each file
atomically, as it is made) and prints one line per frame. A clip that is not usable prints one `error:` line
and exits 2; a failure after some frames were written leaves those frames (complete files) and no manifest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from app.cli.common import UsageError, gaussians_kept
from app.errors import SharpError
from app.files import write_atomically
from app.jobs.base import SEQUENCE_FILE_PATTERN, SEQUENCE_ZIP
from app.settings import Settings
from app.video import Sampling, VideoLimits, is_video_path
from app.vocabulary import AlignMode, choices

__all__ = ["SEQUENCE_ZIP", "add_arguments", "form_fields", "is_clip_file", "is_video_path", "photo_flags_used",
           "run_clip"]

SAMPLING_FLAGS = ("fps", "start", "end", "max_frames", "align")


def add_arguments(predict: argparse.ArgumentParser) -> None:
    """The clip options of `predict`."""
    clip = predict.add_argument_group("video input (-i a clip: MP4, MOV, WebM, ...; see docs/video.md)")
    clip.add_argument("--fps", type=float, help="frames taken per second (default: every frame)")
    clip.add_argument("--start", type=float, help="first second taken (default: 0)")
    clip.add_argument("--end", type=float, help="seconds: take frames before this time (default: the clip's end)")
    clip.add_argument("--max-frames", type=int, help="take at most this many frames")
    clip.add_argument("--align", choices=choices(AlignMode), help="scale: scale each frame's scene so that its depths "
                      "agree with the previous frame's; none (default): each frame as its own photo")


def form_fields(args: argparse.Namespace) -> dict[str, str]:
    """The clip options given, as `POST /jobs` form fields (`remote`)."""
    return {name: str(getattr(args, name)) for name in SAMPLING_FLAGS if getattr(args, name, None) is not None}


def is_clip_file(path: str) -> bool:
    """Whether `path` is one of a clip job's files (a server's answer is checked before it names a file here)."""
    return SEQUENCE_FILE_PATTERN.fullmatch(path) is not None


def photo_flags_used(args: argparse.Namespace) -> list[str]:
    """The clip options given on the command line (an error for a photo input)."""
    return [f"--{name.replace('_', '-')}" for name in SAMPLING_FLAGS if getattr(args, name, None) is not None]


def run_clip(args: argparse.Namespace, predictor: Any, settings: Settings, outputs: dict[str, dict[str, Any]],
             output_dir: Path) -> int:
    """Predict every sampled frame of the clip `args.input` into `output_dir`; 0, or 2 for an unusable clip."""
    from app.sequence import run_sequence

    sampling = Sampling(fps=args.fps, start=args.start or 0.0, end=args.end, max_frames=args.max_frames)
    started = time.perf_counter()

    def write(path: str, body: bytes) -> None:
        target = output_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, [body])

    def frame_line(record: dict[str, Any]) -> None:
        timing = " ".join(f"{name}={ms / 1000:.2f}s" for name, ms in record["timings_ms"].items())
        gaussians = gaussians_kept(record["num_gaussians"], record["num_predicted"])
        print(f"[frame {record['index'] + 1}] t={record['time_s']:.3f}s f_px={record['f_px']:.1f} "
              f"({record['f_px_source']}) scale={record['scale']:.4f} {gaussians} "
              f"-> {', '.join(record['files'].values())} [{timing}]", flush=True)

    try:
        manifest = run_sequence(predictor, args.input, outputs, sink=write, limits=VideoLimits.from_settings(settings),
                                sampling=sampling, f_px=args.f_px, align=args.align or "none",
                                max_gaussians=args.max_gaussians, on_frame=frame_line)
    except SharpError as error:
        raise UsageError(f"{args.input}: {error.message}") from None
    except OSError as error:
        raise UsageError(f"{args.input}: {error.strerror or error}") from None
    print(f"{manifest['num_frames']} frames in {time.perf_counter() - started:.1f}s -> {output_dir / 'manifest.json'}, "
          f"{output_dir / 'preview.mp4'}", file=sys.stdout)
    return 0

"""A job's projected size: what its files will take in the store, known at submission from the counts alone
(formats asked for, Gaussians kept, frames of a clip's selection), before anything is decoded.

`POST /jobs` refuses a job whose projection does not fit the store's cap (`check_fits`: 413 `job_too_large`,
naming the numbers and how to fit), and a queued or running job reserves its projection in the store
(`app.jobs.job.Job.held_bytes`), so that a job once accepted finds its room when it finishes.

The figures are upper bounds of each format's size, per Gaussian plus a fixed part (each `OutputFormat`'s
`bytes_per_gaussian` and `fixed_bytes` in `app.outputs`), measured on full-size
predictions of the `tiny_full` preset (1,179,648 Gaussians; tests/jobs/test_store_full_size.py checks every
output against them):

    format         bound                       measured (coffee.png, tiny_full)
    ply            56 B a Gaussian + 4 kB      66,061,086 B (fourteen float32 a Gaussian + the camera elements)
    ply_vertex     56 B a Gaussian + 4 kB      66,060,651 B
    splat          32 B a Gaussian             37,748,736 B
    spz            20 B a Gaussian + 64 kB     19,021,183 B (16.1 B: 20 B before gzip, which cannot grow it much)
    sog            24 B a Gaussian + 64 kB     13,337,100 B (11.3 B: lossless WebP of 20 B of pixels)
    sequence       8 B a Gaussian + 64 kB      a frame of a clip: about 2 B (10-bit H.264 planes; a key frame more)
    glb            60 B a Gaussian + 16 kB     70,780,792 B (fifteen float32 and four bytes, + the JSON chunk)
    json, list     200 B a Gaussian + 64 kB    192,619,061 B (163 B of decimal text)
    json, base64   80 B a Gaussian + 64 kB     88,081,188 B (74.7 B: fourteen float32, times 4/3)
    renders        a bound per file (512 px stills, the 60-frame orbit)
    coarse         1 B a Gaussian + 64 kB      582,670 B (36,864 Gaussians, n / 32; tests/formats/test_full_size.py)
    kept           56 B a Gaussian + 64 kB     66,062,195 B (56.002 B), a photo's prediction while its outputs are
                                               encoded one by one (`app.jobs.lazy`: fourteen float32 a Gaussian, .npz)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.budget import budget_count
from app.jobs.errors import JobTooLargeError
from app.jobs.options import keeps_prediction
from app.outputs import FORMATS

JSON_BASE64_BYTES_PER_GAUSSIAN = 80
"""The json output with `encoding=base64`: 14 float32 in base64 is 74.7 B."""
CLIP_BYTES_PER_FRAME = 200_000
"""A clip's own files per frame: its line in manifest.json and its frame of preview.mp4 (H.264, both halves)."""
CLIP_FIXED_BYTES = 65_536
"""A clip's own files regardless of its length (the manifest's head, the MP4's headers)."""
ZIP_COPIES = 2
"""A clip's files are stored twice: as files, and in `sequence.zip` (made once every frame is done; serving
it from the files would need every file open through a download, which a Modal Volume does not allow)."""
KEPT_BYTES_PER_GAUSSIAN = 56
KEPT_FIXED_BYTES = 65_536
"""The kept prediction of a photo's job with several outputs (`app.jobs.store.PREDICTION_FILE`): fourteen
float32 a Gaussian and the .npz's headers and metadata; it is stored until its last output is made."""
COMPACT_FORMAT = "spz"
"""The format `check_fits` suggests to a job too large (a quarter of the PLY)."""


def file_bytes(format_name: str, num_gaussians: int, options: Mapping[str, Any] | None = None) -> int:
    """Upper bound in bytes of one file of `format_name` holding `num_gaussians` Gaussians."""
    per_gaussian = FORMATS[format_name].bytes_per_gaussian
    if format_name == "json" and (options or {}).get("encoding") == "base64":
        per_gaussian = JSON_BASE64_BYTES_PER_GAUSSIAN
    return math.ceil(per_gaussian * num_gaussians) + FORMATS[format_name].fixed_bytes


def frame_bytes(outputs: list[str], options: Mapping[str, Any], num_gaussians: int) -> int:
    """Upper bound of one photo's (or one frame's) files: every output of `outputs`, with the job's options
    (`max_gaussians`, the json `encoding`) applied to the model's `num_gaussians`."""
    kept = _kept_count(options, num_gaussians)
    return sum(file_bytes(name, kept, options) for name in outputs)


def _kept_count(options: Mapping[str, Any], num_gaussians: int) -> int:
    """The Gaussians each output holds: the budget's count (`max_gaussians`), else all `num_gaussians`."""
    if options.get("max_gaussians") is None:
        return num_gaussians
    return budget_count(options["max_gaussians"], num_gaussians)


def projected_bytes(outputs: list[str], options: Mapping[str, Any], num_gaussians: int,
                    frames: int | None = None) -> int:
    """Upper bound of a job's files: a photo's outputs, or (`frames` given) a clip's: each frame's outputs,
    its manifest and preview, and all of them again in `sequence.zip` (stored, with its entries' headers)."""
    if frames is None:
        kept = 0
        if keeps_prediction(outputs, None):
            kept = KEPT_BYTES_PER_GAUSSIAN * _kept_count(options, num_gaussians) + KEPT_FIXED_BYTES
        return frame_bytes(outputs, options, num_gaussians) + kept
    return ZIP_COPIES * (frames * clip_frame_bytes(outputs, options, num_gaussians) + CLIP_FIXED_BYTES)


def clip_frame_bytes(outputs: list[str], options: Mapping[str, Any], num_gaussians: int) -> int:
    """Upper bound of what one frame of a clip adds to its job: its files, its share of the manifest and
    the preview (`sequence.zip` aside)."""
    return frame_bytes(outputs, options, num_gaussians) + CLIP_BYTES_PER_FRAME


def check_fits(outputs: list[str], options: Mapping[str, Any], num_gaussians: int, frames: int | None,
               input_bytes: int, max_bytes: int) -> int:
    """The job's projected bytes (`projected_bytes`), if they and its upload fit the store's cap `max_bytes`.

    Raises:
        JobTooLargeError: 413, naming the projection, the cap, and how to fit (fewer frames, the compact
            format, a splat budget).
    """
    projected = projected_bytes(outputs, options, num_gaussians, frames)
    if projected + input_bytes <= max_bytes:
        return projected
    copies = ZIP_COPIES if frames is not None else 1
    per_frame = copies * clip_frame_bytes(outputs, options, num_gaussians) if frames is not None else projected
    what = (f"{frames} frames x {_mb(per_frame)} ({', '.join(outputs)}, the manifest and the preview, and "
            "again in sequence.zip)" if frames is not None else ", ".join(outputs))
    hints = []
    room = max_bytes - input_bytes - copies * (CLIP_FIXED_BYTES if frames is not None else 0)
    if frames is not None:
        fitting = room // per_frame
        hints.append(f"at most {fitting} frames (max_frames, or a lower fps or a shorter start-end)" if fitting >= 1
                     else "fewer frames (even one does not fit)")
    if outputs != [COMPACT_FORMAT]:
        compact = copies * (clip_frame_bytes([COMPACT_FORMAT], options, num_gaussians) if frames is not None else
                            frame_bytes([COMPACT_FORMAT], options, num_gaussians))
        hints.append(f"outputs={COMPACT_FORMAT} ({_mb(compact)} a {'frame' if frames is not None else 'scene'})")
    kept = _kept_count(options, num_gaussians)
    fixed = copies * (sum(FORMATS[name].fixed_bytes for name in outputs) + (CLIP_BYTES_PER_FRAME if frames else 0))
    if frames is None and keeps_prediction(outputs, None):
        fixed += KEPT_FIXED_BYTES
    room_per_frame = room / (frames or 1) - fixed
    budget = int(room_per_frame / max(1e-9, (per_frame - fixed) / kept))
    if 1 <= budget < kept:
        hints.append(f"max_gaussians={budget:,}".replace(",", "") + f" (of {num_gaussians:,})")
    raise JobTooLargeError(
        f"This job would store about {_mb(projected + input_bytes)} ({what}, plus the {_mb(input_bytes)} upload), "
        f"more than the job store's cap of {_mb(max_bytes)} (SHARP_JOBS_MAX_BYTES). To fit, ask for "
        f"{'; or '.join(hints) if hints else 'a larger SHARP_JOBS_MAX_BYTES'}.")


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:,.1f} MB"

"""The words the service, the CLI, the schemas and the settings share, each defined once.

Type literals live here so that a JSON schema, a CLI `choices=` and a dataclass field cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Literal, get_args

FocalSource = Literal["request", "exif", "default"]
"""Where a prediction's focal length came from: the caller, the photo's EXIF, or the 30 mm fallback."""

WeightsSource = Literal["official", "file", "synthetic"]
"""`official`: Apple's checkpoint; `file`: another checkpoint file; `synthetic`: made-up test weights."""

ProgressCallback = Callable[[str, float], None]
"""`progress(stage, fraction)`: a request's stage (decode, preprocess, forward, postprocess, encode) is `fraction`
done, in [0, 1]. It is called on the thread doing the work; an exception it raises stops the request there."""

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
"""A job's status (`app.jobs`): waiting, running, then one of the final three."""
FINAL_JOB_STATUSES: tuple[JobStatus, ...] = ("succeeded", "failed", "cancelled")
"""The statuses a job never leaves (its event stream ends there; clients stop polling)."""

AlignMode = Literal["none", "scale"]
"""How a clip's scenes are aligned (`app.sequence.align`): each frame as its own photo, or scaled to agree."""

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DTypeName = Literal["float32", "tf32", "bfloat16", "float16"]


class ModelState(str, Enum):
    """The model's lifecycle in a server process, reported as `status` by `/health` and `/`."""

    LOADING = "loading"
    READY = "ready"
    ERROR = "error"


def choices(literal: object) -> list[str]:
    """The values of a `Literal[...]` type, for CLI `choices=` and help texts."""
    return list(get_args(literal))

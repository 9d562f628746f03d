"""A clip's job: the form fields that sample it, its check at submission, and its files' routes.

`POST /jobs` (`app.http.routes.jobs`) takes a clip in the same `file` field as a photo: an upload that looks
like a video (`app.video.looks_like_video`) is checked from its header here (`app.video.probe_video`: the
same limits and errors as the decoder, 4xx before anything is queued) and queued as a clip's job. Its files:

    GET /jobs/{id}/frames/000000.ply   each output of each frame
    GET /jobs/{id}/manifest.json       the manifest (docs/video.md)
    GET /jobs/{id}/preview.mp4         each frame's scene beside the frame
    GET /jobs/{id}/sequence.zip        all of them in one archive
    GET /jobs/{id}/sequence.sogv       outputs=sequence: every frame's scene in one SOG video
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from app.budget import MaxGaussians
from app.errors import InvalidRequestError
from app.http.responses import RangeFileResponse, content_disposition, error_responses, sharp_headers
from app.jobs.base import JobQueue
from app.jobs.errors import JobExpiredError
from app.jobs.job import SEQUENCE_ZIP
from app.jobs.options import DEFAULT_SEQUENCE_OUTPUTS
from app.outputs import FORMATS
from app.sequence.run import SEQUENCE_FILE, check_clip_outputs
from app.settings import Settings
from app.video import (
    HEAD_BYTES,
    MAX_SAMPLING_FPS,
    MAX_SAMPLING_FRAMES,
    MAX_TIME_S,
    Sampling,
    VideoLimits,
    looks_like_video,
    probe_video,
)
from app.vocabulary import AlignMode

MEDIA_TYPES = {".json": "application/json", ".mp4": "video/mp4", ".zip": "application/zip"}
"""Media types of a clip's own files; a frame's file has its output's (`app.outputs`)."""

# Each field's range is checked with the form (a 422 `validation_error` naming it), as `Sampling.checked`
# would: a value past 64 bits never reaches the job store.
Fps = Annotated[float | None, Form(description="A clip: frames taken per second (default: every frame).",
                                   gt=0, le=MAX_SAMPLING_FPS, allow_inf_nan=False)]
Start = Annotated[float | None, Form(description="A clip: the first second taken (default: 0).", ge=0, le=MAX_TIME_S,
                                     allow_inf_nan=False)]
End = Annotated[float | None, Form(description="A clip: frames before this second are taken (default: its end).",
                                   gt=0, le=MAX_TIME_S, allow_inf_nan=False)]
MaxFrames = Annotated[int | None, Form(description="A clip: take at most this many frames.", ge=1,
                                       le=MAX_SAMPLING_FRAMES)]
Align = Annotated[AlignMode | None, Form(description="A clip: `none` (default): each frame as its own photo; "
                                                     "`scale`: scale each frame's scene to agree with the "
                                                     "previous frame's depths (docs/video.md).")]


def is_clip(data: bytes) -> bool:
    """Whether an upload is a clip rather than a photo (by its first bytes)."""
    return looks_like_video(data[:HEAD_BYTES])


def clip_options(fps: float | None, start: float | None, end: float | None, max_frames: int | None,
                 align: AlignMode | None) -> dict[str, Any]:
    """The clip fields that were sent (refused for a photo by `check_clip`'s caller)."""
    fields = {"fps": fps, "start": start, "end": end, "max_frames": max_frames, "align": align}
    return {name: value for name, value in fields.items() if value is not None}


def refuse_for_photo(options: dict[str, Any]) -> None:
    if options:
        raise InvalidRequestError(f"{', '.join(sorted(options))} only applies to a video upload.")


async def check_clip(data: bytes, options: dict[str, Any], outputs: list[str] | None, settings: Settings,
                     max_gaussians: MaxGaussians | None = None) -> tuple[dict[str, Any], list[str], int]:
    """The clip job's `sequence` options, its outputs (`DEFAULT_SEQUENCE_OUTPUTS` when none were named; checked
    by `check_clip_outputs`, with the job's `max_gaussians`) and the most frames it takes (the header's
    estimate, else the limits), after checking the clip's header against them (`VideoError`: 4xx)."""
    outputs = outputs or list(DEFAULT_SEQUENCE_OUTPUTS)
    check_clip_outputs(outputs, max_gaussians)
    sampling = Sampling(fps=options.get("fps"), start=options.get("start", 0.0), end=options.get("end"),
                        max_frames=options.get("max_frames"))
    limits = VideoLimits.from_settings(settings)
    info = await anyio.to_thread.run_sync(lambda: probe_video(data, sampling, limits))
    sequence = {"fps": sampling.fps, "start": sampling.start, "end": sampling.end, "max_frames": sampling.max_frames,
                "align": options.get("align", "none")}
    frames = min(sampling.max_frames or limits.max_frames, limits.max_frames)
    if info.frames is not None:
        frames = min(frames, info.frames)
    return sequence, outputs, frames


router = APIRouter(tags=["jobs"])


def get_jobs(request: Request) -> JobQueue:
    return request.app.state.jobs


Jobs = Annotated[JobQueue, Depends(get_jobs)]


async def _file(job_id: str, path: str, jobs: JobQueue) -> Response:
    result = await jobs.file(job_id, path)
    if result.body is None and not result.path.is_file():
        raise JobExpiredError(f"Job {job_id}'s files are gone.")
    job = result.job
    model, meta = job.model or {}, job.metadata or {}
    suffix = "." + path.split(".", 1)[1] if "." in path else ""
    media_type = MEDIA_TYPES.get(suffix) or next(
        (fmt.media_type for fmt in FORMATS.values() if fmt.suffix == suffix), "application/octet-stream")
    name = path.rsplit("/", 1)[-1] if path.startswith("frames/") else f"{job.name or 'clip'}.{path}"
    headers = {**sharp_headers(model.get("preset", ""), model.get("weights", ""), meta.get("f_px", 0.0),
                               meta.get("f_px_source", ""), meta.get("image_width", 0), meta.get("image_height", 0),
                               meta.get("num_gaussians", 0), meta.get("total_gaussians", meta.get("num_gaussians", 0))),
               "Content-Disposition": content_disposition(name)}
    if result.body is not None:
        return Response(result.body, media_type=media_type, headers=headers)
    return RangeFileResponse(result.path, media_type=media_type, headers=headers)


_FILE = {200: {"description": "The file", "content": {"application/octet-stream": {}}},
         **error_responses(401, 404, 409, 410)}


async def clip_frame(job_id: str, name: str, jobs: Jobs) -> Response:
    """One output of one frame (`000000.ply`, ...), as its photo's file would be."""
    return await _file(job_id, f"frames/{name}", jobs)


router.add_api_route("/jobs/{job_id}/frames/{name}", clip_frame, methods=["GET"], response_class=Response,
                     summary="A clip job's frame file", responses=_FILE)
# HEAD: the same headers without the body (download managers probe with it), as a photo job's results.
router.add_api_route("/jobs/{job_id}/frames/{name}", clip_frame, methods=["HEAD"], response_class=Response,
                     include_in_schema=False)


def _named_route(path: str, summary: str) -> None:
    async def clip_file(job_id: str, jobs: Jobs) -> Response:
        return await _file(job_id, path, jobs)

    clip_file.__name__ = f"clip_{path.replace('.', '_')}"
    clip_file.__doc__ = summary
    router.add_api_route(f"/jobs/{{job_id}}/{path}", clip_file, methods=["GET"], response_class=Response,
                         summary=summary, responses=_FILE)
    router.add_api_route(f"/jobs/{{job_id}}/{path}", clip_file, methods=["HEAD"], response_class=Response,
                         include_in_schema=False)


_named_route("manifest.json", "A clip job's manifest (frames, times, f_px, scale factors, timings)")
_named_route("preview.mp4", "A clip job's preview: each frame's scene beside the frame (H.264)")
_named_route(SEQUENCE_ZIP, "A clip job's files in one zip")
_named_route(SEQUENCE_FILE, "A clip job's scenes in one SOG video (outputs=sequence; docs/formats.md)")

"""`/jobs`: submit a photo, follow the job (JSON or server-sent events), download its results, cancel it.

The routes only check the request and call the app's `JobQueue` (`app.jobs`): the local worker or
Modal's queue, the same routes either way. A submission's image header is checked at once
(`app.imaging.probe_image`: format, size, pixel limit), so a bad upload gets the same 4xx as the
synchronous endpoints before anything is queued; the job's worker decodes it, once, when it runs (a
file damaged past its header fails the job with the image's error).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.formats.json import Encoding
from app.http.deps import FocalPx, ImageUpload, MaxGaussians, Service, read_upload
from app.http.idempotency import IdempotencyKey
from app.http.responses import (
    RangeFileResponse,
    content_disposition,
    error_responses,
    server_timing,
    sharp_headers,
)
from app.http.routes import sequences
from app.http.schemas import JobResponse, JobWebhook
from app.imaging import probe_image
from app.jobs.base import JobQueue
from app.jobs.errors import JobExpiredError, JobNotFoundError
from app.jobs.job import RESULT_FORMATS, Job, check_job_id, iso_time
from app.jobs.options import DEFAULT_OUTPUTS, check_job_options, first_output, parse_outputs
from app.jobs.size import check_fits
from app.jobs.webhooks import EVENTS, webhook_of
from app.model.presets import get_config
from app.outputs import FORMATS
from app.vocabulary import ModelState

KEEPALIVE_S = 15.0
"""Seconds between SSE comments while a job does not change (proxies drop silent connections)."""
RETRY_MS = 1000
"""How long a browser waits before it reconnects a dropped event stream (the stream's `retry:` field)."""


def get_jobs(request: Request) -> JobQueue:
    return request.app.state.jobs


Jobs = Annotated[JobQueue, Depends(get_jobs)]
Outputs = Annotated[str | None, Form(
    description=f"Comma-separated formats to make: a subset of {', '.join(FORMATS)}; default: "
                f"{', '.join(DEFAULT_OUTPUTS)} (the renders preview, preview_jpeg and orbit only when asked for).",
    examples=["ply,spz"],
)]
WebhookUrl = Annotated[str | None, Form(
    description="Where to POST the job's events, signed as Standard Webhooks say (see docs/api.md, Webhooks); "
                "http(s) to a public host (private, loopback and link-local targets are refused unless the server "
                "allows them in SHARP_WEBHOOK_ALLOWED_HOSTS). Needs SHARP_WEBHOOK_SECRET on the server.",
    examples=["https://example.com/hooks/sharp"])]
WebhookEvents = Annotated[str | None, Form(
    description=f"Comma-separated events to send: a subset of {', '.join(EVENTS)} (progress at most every "
                "0.5 s); default: every status change (all but progress).", examples=["succeeded,failed"])]
First = Annotated[str | None, Form(
    description="The output the client needs first (one of `outputs`; default: the first listed): a photo's job "
                "with several outputs succeeds once its prediction is kept and this one is made, and makes the "
                "others after it (`files` says which are ready).", examples=["spz"])]
JobJsonEncoding = Annotated[Encoding | None, Form(
    description="For the json output: `list` (default) or `base64`, as `POST /predict`.")]

router = APIRouter(tags=["jobs"])

_JOB = {"model": JobResponse, "description": "The job"}


def job_view(job: Job) -> dict[str, Any]:
    """The job as clients see it: a `JobResponse` (its one definition), as JSON-ready values."""
    return JobResponse(
        id=job.id, status=job.status, stage=job.stage, progress=round(job.progress, 4),
        queue_position=job.queue_position if job.status == "queued" else None,
        created_at=iso_time(job.created_at), started_at=iso_time(job.started_at),
        finished_at=iso_time(job.finished_at), expires_at=iso_time(job.expires_at), outputs=job.outputs,
        model=job.model, metadata=job.metadata,
        timings_ms={stage: round(ms, 1) for stage, ms in job.timings_ms.items()}, error=job.error,
        results=job.result_urls(), frame=job.frame, frames=job.frames, first=job.first, files=job.file_states(),
        webhook=JobWebhook.model_validate(job.webhook) if job.webhook is not None else None,
    ).model_dump(mode="json")


def job_response(job: Job, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(job_view(job), status_code=status_code, headers=headers)


@router.post("/jobs", summary="Submit a prediction job", status_code=202, response_class=JSONResponse,
             responses={202: _JOB, **error_responses(400, 401, 409, 413, 415, 422, 503)})
async def submit_job(request: Request, service: Service, jobs: Jobs, file: ImageUpload, held: IdempotencyKey,
                     f_px: FocalPx = None,
                     outputs: Outputs = None, max_gaussians: MaxGaussians = None,
                     encoding: JobJsonEncoding = None, fps: sequences.Fps = None, start: sequences.Start = None,
                     end: sequences.End = None, max_frames: sequences.MaxFrames = None,
                     align: sequences.Align = None, first: First = None, webhook_url: WebhookUrl = None,
                     webhook_events: WebhookEvents = None) -> JSONResponse:
    """Queue a photo, or a clip (a scene per frame, `app.http.routes.sequences`); answers 202 with the job
    and `Location: /jobs/{id}`. The upload is checked first (same limits and errors as `POST /predict`),
    then the job's projected size against the store's cap (413 `job_too_large`, `app.jobs.size`)."""
    names = parse_outputs(outputs)
    if first is not None:
        first_output(names, first)  # 422 before the upload is read
    num_gaussians = get_config(service.settings.preset).num_gaussians
    options = check_job_options(names, {"max_gaussians": max_gaussians, "encoding": encoding}, num_gaussians)
    if service.state is ModelState.ERROR:
        service.require_predictor()  # 503 model_unavailable, as the synchronous endpoints
    webhook = await webhook_of(webhook_url, webhook_events, service.settings)
    data = await read_upload(file, service)
    if (earlier := await held.check(request, data)) is not None:  # the same request again: the same job
        with contextlib.suppress(JobNotFoundError):  # unless it was deleted meanwhile
            return job_response(await jobs.get(earlier), 202, {"Location": f"/jobs/{earlier}",
                                                               "Idempotent-Replayed": "true"})
    clip = sequences.clip_options(fps, start, end, max_frames, align)
    if sequences.is_clip(data):
        sequence, names, frames = await sequences.check_clip(data, clip, names if outputs else None,
                                                             service.settings, options.get("max_gaussians"))
        options = check_job_options(names, options, num_gaussians)
        projected = check_fits(names, options, num_gaussians, frames, len(data), service.settings.jobs_max_bytes)
        job = await jobs.submit(data, filename=file.filename, f_px=f_px, outputs=names, options=options,
                                sequence=sequence, projected_bytes=projected, webhook=webhook)
        await held.remember(job.id)
        return job_response(job, 202, {"Location": f"/jobs/{job.id}"})
    sequences.refuse_for_photo(clip)
    # The header only (format, size, pixel limit: the same 4xx as /predict); the worker decodes it, once.
    await anyio.to_thread.run_sync(lambda: probe_image(data, max_pixels=service.settings.max_pixels))
    projected = check_fits(names, options, num_gaussians, None, len(data), service.settings.jobs_max_bytes)
    job = await jobs.submit(data, filename=file.filename, f_px=f_px, outputs=names, options=options,
                            projected_bytes=projected, first=first_output(names, first or _first_listed(outputs)),
                            webhook=webhook)
    await held.remember(job.id)
    return job_response(job, 202, {"Location": f"/jobs/{job.id}"})


@router.get("/jobs/{job_id}", summary="A job's state", response_class=JSONResponse,
            responses={200: _JOB, **error_responses(401, 404, 410)})
async def get_job(job_id: str, jobs: Jobs) -> JSONResponse:
    """Status, stage, progress, queue position, metadata and result URLs."""
    return job_response(await jobs.get(job_id))


@router.get("/jobs/{job_id}/events", summary="A job's changes as server-sent events",
            response_class=EventSourceResponse, responses={
                200: {"description": "`event: job` + `data: <job JSON>` on every change, and before it `event: file` "
                                     "+ `data: {format, state, url, bytes, error}` when an output is ready or failed, "
                                     "until the job is final with every output settled",
                      "content": {"text/event-stream": {}}},
                **error_responses(401, 404, 410)})
async def job_events(job_id: str, jobs: Jobs) -> EventSourceResponse:
    """One `job` event now and on every change (progress at most 10 times a second), before it one `file` event
    for each output that became ready or failed since the last (all those ready already, at the start; so the
    stream's last event is always the job's last state), a
    `: keep-alive` comment every 15 s, and the end of the stream once the job is final and none of its outputs
    is still to make (or when the server stops: sse-starlette ends open streams when uvicorn is told to exit,
    so Ctrl+C does not wait for them)."""
    changes = jobs.watch(job_id)
    now = await anext(changes)  # 404 / 410 as JSON, before the stream starts

    async def stream() -> AsyncIterator[ServerSentEvent]:
        told: dict[str, str] = {}
        try:
            for event in _file_events(now, told):
                yield event
            yield ServerSentEvent(_job_json(now), event="job", retry=RETRY_MS)
            async for job in changes:
                for event in _file_events(job, told):
                    yield event
                yield ServerSentEvent(_job_json(job), event="job")
        finally:
            await changes.aclose()

    return EventSourceResponse(stream(), ping=KEEPALIVE_S, ping_message_factory=_keep_alive,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _job_json(job: Job) -> str:
    return orjson.dumps(job_view(job)).decode()


def _file_events(job: Job, told: dict[str, str]) -> list[ServerSentEvent]:
    """A `file` event for each output of `job` ready or failed and not yet `told` (output -> state, updated)."""
    events = []
    if job.status != "succeeded":
        return events
    urls = job.result_urls()
    for name, state in job.file_states().items():
        if state in ("ready", "failed") and told.get(name) != state:
            told[name] = state
            data = {"format": name, "state": state, "url": urls.get(name), "bytes": job.results.get(name),
                    "error": job.file_errors.get(name)}
            events.append(ServerSentEvent(orjson.dumps(data).decode(), event="file"))
    return events


def _first_listed(outputs: str | None) -> str | None:
    """The first output named in the form's `outputs` (the client's order; `parse_outputs` keeps the registry's)."""
    listed = [part.strip() for part in (outputs or "").split(",") if part.strip()]
    return listed[0] if listed else None


def _keep_alive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive")


@router.delete("/jobs/{job_id}", summary="Cancel or delete a job", response_class=JSONResponse,
               responses={200: _JOB, **error_responses(401, 404, 410)})
async def delete_job(job_id: str, jobs: Jobs) -> JSONResponse:
    """Unfinished: cancelled (a running one stops at the next network block) and its files deleted; the
    answer is the job, `cancelled`. Finished: deleted with its files (its URLs then answer 404); the
    answer is its last state."""
    return job_response(await jobs.cancel(job_id))


def _result_route(format_name: str) -> Any:
    fmt = FORMATS[format_name]

    async def job_result(job_id: str, jobs: Jobs) -> Response:
        result = await jobs.result(job_id, format_name)
        job = result.job
        if result.body is None and not result.path.is_file():
            raise JobExpiredError(f"Job {job_id}'s results are gone.")
        model, meta = job.model or {}, job.metadata or {}
        headers = {
            **sharp_headers(model.get("preset", ""), model.get("weights", ""), meta.get("f_px", 0.0),
                            meta.get("f_px_source", ""), meta.get("image_width", 0), meta.get("image_height", 0),
                            meta.get("num_gaussians", 0), meta.get("total_gaussians", meta.get("num_gaussians", 0))),
            "Server-Timing": server_timing(job.timings_ms),
            "Content-Disposition": content_disposition(fmt.filename(job.name or "scene")),
        }
        if result.body is not None:
            return Response(result.body, media_type=fmt.media_type, headers=headers)
        return RangeFileResponse(result.path, media_type=fmt.media_type, headers=headers)

    job_result.__name__ = f"job_result_{format_name}"
    job_result.__doc__ = f"The job's {format_name} file: the bytes the synchronous endpoint gives for the photo."
    return job_result


for _name, _format in RESULT_FORMATS.items():
    router.add_api_route(
        f"/jobs/{{job_id}}/{_name}", _result_route(_format), methods=["GET"], response_class=Response,
        summary=f"A job's {_format} result",
        responses={200: {"description": FORMATS[_format].description,
                         "content": {FORMATS[_format].media_type: {"schema": {"type": "string", "format": "binary"}}}},
                   **error_responses(401, 404, 409, 410)},
    )
    # HEAD: the same headers without the body (download managers probe with it); not in the schema.
    router.add_api_route(f"/jobs/{{job_id}}/{_name}", _result_route(_format), methods=["HEAD"],
                         response_class=Response, include_in_schema=False)


@router.get("/jobs/{job_id}/{name}", include_in_schema=False)
async def unknown_result(job_id: str, name: str) -> Response:
    check_job_id(job_id)
    raise JobNotFoundError(f"No such job resource {name!r}; results are {', '.join(RESULT_FORMATS)}.",
                           code="not_found")

"""Request dependencies and form fields shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, File, Form, Request, UploadFile
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from pydantic import AfterValidator

from app.budget import ACCEPTED, parse_max_gaussians
from app.budget import MaxGaussians as Budget
from app.errors import SharpError, UnsupportedInputError
from app.focal import F_PX_MAX, F_PX_MIN, check_f_px
from app.formats.json import Encoding
from app.http.middleware import too_large_message
from app.service import InferenceService
from app.video import HEAD_BYTES, looks_like_video


def get_service(request: Request) -> InferenceService:
    return request.app.state.service


Service = Annotated[InferenceService, Depends(get_service)]

ImageUpload = Annotated[UploadFile, File(description="The photo (JPEG, PNG, HEIC, WebP, TIFF, ...).")]
FocalPx = Annotated[float | None, Form(
    description=f"Focal length in pixels of the uploaded image, in [{F_PX_MIN:g}, {F_PX_MAX:g}]; default: from "
                "EXIF, else a 30 mm equivalent.",
), AfterValidator(check_f_px)]  # out of range: a 422 `validation_error` naming the field
VertexOnly = Annotated[bool, Form(description="Write only the vertex element (the `ply_vertex` format).")]


def _budget(text: str | None) -> Budget | None:
    return None if text is None else parse_max_gaussians(text)


MaxGaussians = Annotated[str | None, Form(
    description=f"A splat budget: neighbouring Gaussians merged (moments kept, never across a depth edge) "
                f"until this many are left; {ACCEPTED} (e.g. `100000` or `0.25`). Every output is made from "
                "them. Default: all.",
    examples=["0.25"],
), AfterValidator(_budget)]  # bad: a 422 `validation_error` naming the field; above the count: a 422 before decoding
JsonEncoding = Annotated[Encoding, Form(
    description="`list`: nested number arrays. `base64`: each array as base64 of little-endian float32.",
)]

bearer_scheme = HTTPBearer(auto_error=False, description="Required when the server has SHARP_API_KEY set.")
"""Documents the scheme in OpenAPI; the key itself is checked by `UploadGuard` before the upload is read."""


async def reject_repeated_fields(request: Request) -> None:
    """422 `validation_error` (type `duplicate_field`) when a form field the route takes is sent more than once:
    which value was meant would be a guess. The one rule for every route with a form (`create_app` adds it to
    the predict, render and jobs routers).

    The fields are the route's own (its body parameters, those of its dependencies included); the form is the
    one FastAPI already parsed for the route (Starlette caches it on the request).
    """
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    names = _form_fields(dependant) if dependant is not None else []
    if not names:
        return
    form = await request.form()
    repeated = [(name, count) for name in names if (count := len(form.getlist(name))) > 1]
    if repeated:
        raise RequestValidationError([
            {"loc": ("body", name), "msg": f"Sent {count} times; send this field once.", "type": "duplicate_field"}
            for name, count in repeated
        ])


def _form_fields(dependant: Dependant) -> list[str]:
    return [field.alias for field in dependant.body_params] + [
        name for sub in dependant.dependencies for name in _form_fields(sub)]


SingleValued = Depends(reject_repeated_fields)


async def read_upload(file: UploadFile, service: InferenceService) -> bytes:
    """The uploaded bytes, refusing empty and oversized files."""
    limit = service.settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise SharpError(too_large_message(limit), code="upload_too_large", status=413)
    if not data:
        raise SharpError("The uploaded file is empty (0 bytes); expected an image.", code="empty_file", status=400)
    return data


async def read_photo(file: UploadFile, service: InferenceService) -> bytes:
    """The uploaded photo's bytes (`read_upload`); a video clip is refused with a 415 that names `POST /jobs`,
    the one route that takes a clip (a scene per frame)."""
    data = await read_upload(file, service)
    if looks_like_video(data[:HEAD_BYTES]):
        raise UnsupportedInputError(
            "This upload is a video clip; this route takes one photo. Send a clip to POST /jobs (the same `file` "
            "field): it becomes a sequence job with a scene per frame (docs/video.md).", code="video_not_accepted")
    return data

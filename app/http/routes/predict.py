"""`POST /predict` (JSON) and `POST /predict/<format>` (a file): one photo in, its Gaussians out, synchronously.

Each route reads the upload and has the service run the pipeline for the one output it serves (the
routes follow the registry, `app.outputs`); the response carries the model and camera in `X-Sharp-*` headers
and every stage (decode, preprocess, forward, postprocess, encode) in `Server-Timing`. A client that hangs
up stops its prediction (`app.http.disconnect`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.errors import UnknownFormatError
from app.http.deps import (
    FocalPx,
    ImageUpload,
    JsonEncoding,
    MaxGaussians,
    Service,
    VertexOnly,
    read_photo,
)
from app.http.disconnect import until_disconnect
from app.http.idempotency import IdempotencyKey
from app.http.responses import error_responses, file_responses, prediction_response
from app.http.schemas import PredictResponse
from app.outputs import FORMATS, SCENE_FORMATS, OutputFormat

router = APIRouter()


@router.post(
    "/predict", summary="Predict Gaussians as JSON", response_class=Response,
    responses={200: {"model": PredictResponse, "description": "The Gaussians and their metadata"},
               **error_responses(400, 401, 409, 413, 415, 422, 503)},
)
async def predict_json(request: Request, service: Service, file: ImageUpload, held: IdempotencyKey,
                       f_px: FocalPx = None, max_gaussians: MaxGaussians = None,
                       encoding: JsonEncoding = "list") -> Response:
    """The Gaussians as JSON arrays (see the response schema for units and axes).

    No cap by default: the full SHARP scene is ~1.18M Gaussians (hundreds of MB as lists); use
    `max_gaussians` and/or `encoding=base64` for large scenes.
    """
    data = await read_photo(file, service)
    await held.check(request, data)
    result = await until_disconnect(request, service.run(
        data, filename=file.filename, f_px=f_px, max_gaussians=max_gaussians, outputs={"json": {"encoding": encoding}}))
    await held.remember()
    return prediction_response(result, "json", attachment=False)


@router.post(
    "/predict/ply", summary="Predict Gaussians as a PLY file", response_class=Response,
    responses=file_responses(FORMATS["ply"].media_type, FORMATS["ply"].description),
)
async def predict_ply(request: Request, service: Service, file: ImageUpload, held: IdempotencyKey,
                      f_px: FocalPx = None, vertex_only: VertexOnly = False,
                      max_gaussians: MaxGaussians = None) -> Response:
    """The 3DGS PLY file (binary little-endian); `vertex_only=true` gives the `ply_vertex` format."""
    name = "ply_vertex" if vertex_only else "ply"
    data = await read_photo(file, service)
    await held.check(request, data)
    result = await until_disconnect(request, service.run(data, filename=file.filename, f_px=f_px,
                                                         max_gaussians=max_gaussians, outputs={name: {}}))
    await held.remember()
    return prediction_response(result, name)


def _format_route(fmt: OutputFormat) -> Callable[..., Any]:
    async def predict_format(request: Request, service: Service, file: ImageUpload, held: IdempotencyKey,
                             f_px: FocalPx = None, max_gaussians: MaxGaussians = None) -> Response:
        data = await read_photo(file, service)
        await held.check(request, data)
        result = await until_disconnect(request, service.run(data, filename=file.filename, f_px=f_px,
                                                             max_gaussians=max_gaussians, outputs={fmt.name: {}}))
        await held.remember()
        return prediction_response(result, fmt.name)

    predict_format.__doc__ = f"{fmt.description[:1].upper()}{fmt.description[1:]}."
    predict_format.__name__ = f"predict_{fmt.name}"
    return predict_format


for _fmt in (FORMATS[name] for name in SCENE_FORMATS):  # renders go through `POST /render`
    if _fmt.name not in ("ply", "json"):  # ply: its own route (vertex_only); json: POST /predict
        router.add_api_route(
            f"/predict/{_fmt.name}", _format_route(_fmt), methods=["POST"], response_class=Response,
            summary=f"Predict Gaussians as a {_fmt.name} file", responses=file_responses(_fmt.media_type,
                                                                                         _fmt.description),
        )


@router.post("/predict/{format_name}", include_in_schema=False)
async def unknown_format(format_name: str) -> Response:
    raise UnknownFormatError(f"Unknown output format {format_name!r}; use one of: "
                             f"{', '.join(name for name in SCENE_FORMATS if name != 'json')} (POST /predict/<format>), "
                             "POST /predict for JSON, or POST /render for images and videos.")

"""`GET /` (what this server is) and `GET /health` (is the model ready)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app import __version__
from app.http.deps import Service
from app.http.docs import DOCS_URL
from app.http.schemas import ApiInfo, EndpointInfo, HealthResponse, ModelInfoResponse
from app.outputs import FORMATS
from app.prediction import ModelInfo
from app.service import LOADING_RETRY_AFTER_S, InferenceService
from app.vocabulary import ModelState
from app.web import page_response, wants_html

router = APIRouter()


def model_info_response(info: ModelInfo) -> ModelInfoResponse:
    return ModelInfoResponse(
        preset=info.preset, weights=info.weights, device=info.device, dtype=info.dtype,
        checkpoint=Path(info.checkpoint).name if info.checkpoint else None,
        num_gaussians=info.num_gaussians, internal_resolution=info.internal_resolution,
    )


def _load_detail(service: InferenceService) -> str | None:
    """Why loading failed, for anyone: the error code and whether the server retries (no paths, no exception text)."""
    error = service.error
    if service.state is not ModelState.ERROR or error is None:
        return None
    retrying = "; the server retries" if error.retryable else "; see the server log"
    return f"{error.code}{retrying}"


@router.get("/", response_model=ApiInfo, summary="API information")
async def api_info(request: Request, response: Response, service: Service) -> ApiInfo:
    """Name, version, model, formats and endpoints of this server (browsers that prefer HTML get the web page)."""
    if wants_html(request):  # a Response is sent as is (the annotation stays ApiInfo: it is the HEAD route's model)
        return page_response()  # type: ignore[return-value]
    response.headers["Vary"] = "Accept"
    predictor = service.predictor
    endpoints = [
        EndpointInfo(method=method.upper(), path=path, summary=operation.get("summary", ""))
        for path, operations in request.app.openapi()["paths"].items()
        for method, operation in operations.items()
    ]
    return ApiInfo(
        version=__version__, description="One photo in, a 3D Gaussian splat out, with Apple's SHARP model.",
        status=service.state, model=model_info_response(predictor.info) if predictor else None,
        formats=list(FORMATS), endpoints=endpoints,
        docs_url=DOCS_URL, openapi_url=request.app.openapi_url or "",
    )


@router.get("/health", response_model=HealthResponse, summary="Readiness",
                  responses={503: {"model": HealthResponse, "description": "Model loading, or failed to load"}})
async def health(service: Service) -> JSONResponse:
    """200 once the model is loaded (`ready`), 503 while it loads (`loading`) or if it failed (`error`)."""
    predictor = service.predictor
    body = HealthResponse(
        status=service.state, detail=_load_detail(service), message=service.unavailable_message(),
        version=__version__,
        uptime_s=round(time.monotonic() - service.started_at, 3),
        queue_depth=service.queue_depth, in_progress=service.in_progress, max_queue=service.settings.max_queue,
        backend=service.backend,
        **(model_info_response(predictor.info).model_dump(exclude={"checkpoint"}) if predictor else {}),
    )
    ready = body.status is ModelState.READY
    headers = {"Retry-After": str(LOADING_RETRY_AFTER_S)} if body.status is ModelState.LOADING else None
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=200 if ready else 503,
                        headers=headers)


# Load balancers and uptime checkers probe with HEAD: the same answers, without a body (not in the schema).
router.add_api_route("/", api_info, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)

"""`POST /render`: a photo in, a picture of its predicted scene out (PNG/JPEG of the input view, or an MP4).

The photo goes through the same service and pipeline as `POST /predict`; the scene is then encoded as one
of the registry's render formats (`preview`, `preview_jpeg`, `orbit`), drawn by `app.render` on the
model's device. Sizes and frame counts are bounded so that no request can ask for unbounded work; a render
is admitted like a prediction (503 `queue_full` past the queue limit) and stops at the next frame when its
client hangs up.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from app.http.deps import FocalPx, ImageUpload, MaxGaussians, Service, read_photo
from app.http.disconnect import until_disconnect
from app.http.responses import error_responses, prediction_response

MAX_RENDER_SIDE = 2048
MAX_FRAMES = 240

router = APIRouter()

RenderOutput = Annotated[Literal["png", "jpeg", "mp4"], Form(
    description="`png` or `jpeg`: the input view (or its depth map with `depth=true`); `mp4`: a video along `path`.")]
RenderSize = Annotated[int, Form(ge=16, le=MAX_RENDER_SIDE, description="Longer side of the output in pixels "
                                 "(the photo's aspect ratio is kept; even sides for mp4).")]
CameraPath = Annotated[Literal["orbit", "swipe", "dolly", "zoom"], Form(
    description="mp4: how the camera moves around the photo's viewpoint (the first frame is the input view).")]
Frames = Annotated[int, Form(ge=2, le=MAX_FRAMES, description="mp4: number of frames (30 per second).")]
Depth = Annotated[bool, Form(description="png/jpeg: the depth map (near = bright) instead of the colours.")]

_FORMAT = {"png": "preview", "jpeg": "preview_jpeg", "mp4": "orbit"}


@router.post(
    "/render", summary="Render the predicted scene as an image or a video", response_class=Response,
    responses={200: {"description": "The picture", "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in ("image/png", "image/jpeg",
                                                                                "video/mp4")}},
               **error_responses(400, 401, 413, 415, 422, 503)},
)
async def render(request: Request, service: Service, file: ImageUpload, f_px: FocalPx = None,
                 output: RenderOutput = "png", size: RenderSize = 512, path: CameraPath = "orbit", frames: Frames = 60,
                 depth: Depth = False, max_gaussians: MaxGaussians = None) -> Response:
    """Predict the photo's Gaussians, then draw them with our PyTorch splat renderer (no CUDA needed);
    with `max_gaussians`, only the Gaussians that budget keeps are drawn."""
    options: dict[str, object] = {"size": size}
    if output == "mp4":
        options.update(path=path, frames=frames)
    else:
        options["depth"] = depth
    data = await read_photo(file, service)
    result = await until_disconnect(request, service.run(data, filename=file.filename, f_px=f_px,
                                                         max_gaussians=max_gaussians,
                                                         outputs={_FORMAT[output]: options}))
    return prediction_response(result, _FORMAT[output])

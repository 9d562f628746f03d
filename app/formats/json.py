"""JSON output: the Gaussians as plain arrays (for scripts and small web clients), serialised by orjson.

Body::

    {"positions": [N, 3], "scales": [N, 3], "rotations": [N, 4], "opacities": [N, 1], "colors": [N, 3],
     "metadata": {...caller's metadata..., "color_space": "srgb", "num_gaussians": N, "encoding": "list"}}

Units and conventions: positions in metres, OpenCV camera axes (x right, y down, z forward, camera at the
origin); scales are standard deviations in metres (linear, not log); rotations are unit quaternions
(w, x, y, z); opacities in [0, 1] (not logits); colours are **sRGB** in [0, 1] (not the linear RGB of the
scene), which ``"color_space": "srgb"`` records.

``encoding="list"`` writes nested number lists (float32 values printed in their shortest form).
``encoding="base64"`` writes each array as ``{"dtype": "float32", "shape": [...], "byteorder": "little",
"data": "<base64 of the little-endian float32 C-order bytes>"}``, about 5.3 bytes per value instead
of 10-12, and decodes without parsing numbers.

Non-finite values: with "list" orjson writes NaN and ±inf as ``null`` (still valid JSON); "base64" keeps
them bit for bit.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import orjson

from app.gaussians import GaussianScene
from app.prediction import Prediction

Encoding = Literal["list", "base64"]
ENCODINGS: tuple[str, ...] = ("list", "base64")
MEDIA_TYPE = "application/json"


def _base64_array(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"dtype": "float32", "shape": list(data.shape), "byteorder": "little",
            "data": base64.b64encode(memoryview(data).cast("B")).decode("ascii")}


def encode_json(
    scene: GaussianScene, metadata: Mapping[str, Any] | None = None, *, encoding: Encoding = "list",
    timings_ms: dict[str, float] | None = None,
) -> bytes:
    """The scene as a JSON document (UTF-8 bytes); see the module docstring for the shape.

    Args:
        scene: the Gaussians (`app.budget.apply_budget` caps their number).
        metadata: extra JSON-serialisable fields (numpy scalars allowed) for the "metadata" object;
            "color_space", "num_gaussians" and "encoding" are set by this function.
        encoding: "list" (nested arrays) or "base64" (packed float32).
        timings_ms: when given, the time spent serialising the arrays is stored in it as `encode` before
            it is written into `metadata["timings_ms"]` (the metadata object is serialised last).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    start = time.perf_counter()
    arrays = {
        "positions": scene.positions,
        "scales": scene.scales,
        "rotations": scene.rotations,
        "opacities": np.asarray(scene.opacities).reshape(-1, 1),
        "colors": scene.colors_srgb(),
    }
    body: dict[str, Any] = {}
    for name, array in arrays.items():
        if encoding == "base64":
            body[name] = _base64_array(array)
        else:
            body[name] = np.ascontiguousarray(array, dtype=np.float32)
    arrays_json = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    meta = {**(metadata or {}), "color_space": "srgb", "num_gaussians": scene.num_gaussians, "encoding": encoding}
    if timings_ms is not None:
        timings_ms["encode"] = (time.perf_counter() - start) * 1000.0
        meta["timings_ms"] = {stage: round(ms, 3) for stage, ms in timings_ms.items()}
    metadata_json = orjson.dumps({"metadata": meta}, option=orjson.OPT_SERIALIZE_NUMPY)
    return arrays_json[:-1] + b"," + metadata_json[1:]


def encode_prediction_json(prediction: Prediction, *, timings_ms: Mapping[str, float] | None = None,
                           encoding: Encoding = "list") -> bytes:
    """The body of `POST /predict` (and of the Modal `predict` method): arrays plus the prediction's metadata.

    `metadata.num_gaussians` is the number in the scene (kept by a budget, `app.budget`, if one was given),
    `total_gaussians` the number predicted (`prediction.num_predicted`).
    `metadata.timings_ms` holds `timings_ms` (the stages so far, milliseconds) and `encode`, the time spent
    serialising the arrays.
    """
    scene = prediction.scene
    metadata = {
        "image_width": scene.image_width, "image_height": scene.image_height, "f_px": scene.f_px,
        "f_px_source": prediction.f_px_source, "intrinsics": scene.intrinsics.tolist(),
        "total_gaussians": prediction.num_predicted, "coordinate_convention": "opencv",
        "model": prediction.model.summary(),
    }
    return encode_json(scene, metadata, encoding=encoding, timings_ms=dict(timings_ms or {}))

"""`/openapi.json` made for client generators (`openapi-python-client` and the like), so that a generated client
needs no hand edits: every operation, form body, enum and error body has a name.

FastAPI's document is tidied once, when first asked for (`install_openapi`):

* operation ids are the routes' function names (`submit_job`, `predict_spz`, `job_result_spz`), not
  `submit_job_jobs_post` (`operation_id`, passed to FastAPI as `generate_unique_id_function`);
* a route's form is the component `<Operation>Form` (`SubmitJobForm`), not `Body_submit_job_jobs_post`;
* an enum written inline (a `Literal` field) is a named component (`JobStatus`, `JsonEncoding`, ...:
  `NAMED_ENUMS`), the same one wherever its values appear;
* an uploaded file is `format: binary` (what generators read as a file; FastAPI writes only OpenAPI 3.1's
  `contentMediaType`);
* every error is `ErrorResponse` (`{"error": {...}}`): FastAPI's own `HTTPValidationError`, which this server
  never sends (its 422s are `ErrorResponse` too, `app.http.errors`), is gone.
"""

from __future__ import annotations

from typing import Any, get_args

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.formats.json import Encoding
from app.http.routes.render import CameraPath, RenderOutput
from app.http.schemas import BackendState, FileState, WebhookEvent
from app.vocabulary import AlignMode, FocalSource, JobStatus, WeightsSource

NAMED_ENUMS: dict[str, tuple[str, ...]] = {
    "JobStatus": get_args(JobStatus), "JsonEncoding": get_args(Encoding), "AlignMode": get_args(AlignMode),
    "FocalSource": get_args(FocalSource), "WeightsSource": get_args(WeightsSource),
    "WebhookEvent": get_args(WebhookEvent), "BackendState": get_args(BackendState), "FileState": get_args(FileState),
    "RenderOutput": get_args(get_args(RenderOutput)[0]), "CameraPath": get_args(get_args(CameraPath)[0]),
}
"""The name of each enum the API has, by its values (in their order)."""
_REF = "#/components/schemas/"


def operation_id(route: APIRoute) -> str:
    """An operation's id: its route's function name (unique in this app)."""
    return route.name


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` return the tidied document (module docstring)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            tidy(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def tidy(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (FastAPI's OpenAPI dict) tidied in place (module docstring); returns it."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    renames = {name: _camel(name.removeprefix("Body_")) + "Form" for name in schemas if name.startswith("Body_")}
    renames |= {"HTTPValidationError": "ErrorResponse"}
    for old, new in renames.items():
        if old != "HTTPValidationError":
            schemas[new] = {**schemas.pop(old), "title": new}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    by_values = {values: name for name, values in NAMED_ENUMS.items()}
    used: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith(_REF):
            name = node["$ref"].removeprefix(_REF)
            return {**node, "$ref": _REF + renames.get(name, name)}
        name = by_values.get(tuple(node.get("enum", ())))
        if name is not None and node.get("type") == "string":
            used.add(name)
            return {"$ref": _REF + name, **{key: value for key, value in node.items()
                                             if key in ("description", "default", "examples")}}
        node = {key: walk(value) for key, value in node.items()}
        if node.get("type") == "string" and node.get("contentMediaType") == "application/octet-stream":
            node["format"] = "binary"
        return node

    document.update(walk({key: value for key, value in document.items() if key != "components"}))
    document["components"] = walk(document["components"])
    schemas = document["components"]["schemas"]
    for name in sorted(used):
        schemas[name] = {"type": "string", "enum": list(NAMED_ENUMS[name]), "title": name}
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document


def _camel(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))

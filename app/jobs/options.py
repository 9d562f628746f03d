"""What a job is asked to make: its outputs (`parse_outputs`, the one made first), and its options, checked
before anything is stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.budget import budget_count
from app.errors import InvalidRequestError
from app.outputs import FORMATS, check_options

DEFAULT_OUTPUTS = [name for name, fmt in FORMATS.items() if fmt.kind == "scene"]
"""What a job makes when it names no outputs: every scene format (renders cost more: ask for them)."""
DEFAULT_SEQUENCE_OUTPUTS = ["spz"]
"""What a clip's job makes for each frame when it names no outputs: the compact format (about 16 B a Gaussian,
a quarter of the PLY), so that a clip of the real model's size fits the store's default cap; the manifest and
the preview come with every clip."""


def parse_outputs(value: str | None) -> list[str]:
    """`ply,spz` -> `["ply", "spz"]` (registry order, no duplicates); empty or None: `DEFAULT_OUTPUTS`."""
    names = [part.strip().lower() for part in (value or "").split(",") if part.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise InvalidRequestError(f"outputs: unknown format {', '.join(map(repr, unknown))}; use a "
                                  f"comma-separated subset of: {', '.join(FORMATS)}.")
    return [name for name in FORMATS if name in names] if names else list(DEFAULT_OUTPUTS)


def first_output(outputs: list[str], first: str | None) -> str:
    """The output a job makes before it succeeds: `first` (the one its client needs first: it must be one of
    `outputs`), else the first of `outputs`.

    Raises:
        InvalidRequestError: `first` is not one of `outputs`.
    """
    if first is None:
        return outputs[0]
    name = first.strip().lower()
    if name not in outputs:
        raise InvalidRequestError(f"first: {first[:40]!r} is not one of this job's outputs ({', '.join(outputs)}).")
    return name


def keeps_prediction(outputs: list[str], sequence: Mapping[str, Any] | None) -> bool:
    """Whether a job keeps its prediction to encode its outputs one by one after it succeeds (a photo's job
    with more than one output, `app.jobs.lazy`); a clip's job, or one output, is made whole before."""
    return sequence is None and len(outputs) > 1


def check_job_options(outputs: list[str], options: Mapping[str, Any], num_gaussians: int) -> dict[str, Any]:
    """A job's options, without the unset ones: `max_gaussians`, the budget of every output (checked against
    `num_gaussians`, the model's count), and the json output's (`encoding`), refused when it writes no JSON.

    Raises:
        BudgetError, InvalidRequestError: naming what is accepted.
    """
    options = {key: value for key, value in options.items() if value is not None}
    if "max_gaussians" in options:
        budget_count(options["max_gaussians"], num_gaussians)
    json_options = json_options_of(options)
    if json_options and "json" not in outputs:
        raise InvalidRequestError(f"{', '.join(sorted(json_options))} only applies to the json output, which "
                                  "this job does not make.")
    check_options("json", json_options)
    return options


def json_options_of(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a job that are the json output's (all but the budget, which applies to every output)."""
    return {key: value for key, value in options.items() if key != "max_gaussians"}


"""A splat budget as a number: a count of Gaussians or a fraction of them; how each edge parses and checks
it, and the count it keeps of a scene (`budget_count`)."""

from __future__ import annotations

import math
from numbers import Integral, Real

from app.errors import InvalidRequestError

MaxGaussians = int | float
"""A budget: an int count >= 1, or a float fraction in (0, 1]."""

ACCEPTED = "a count from 1 to the number predicted, or a fraction in (0, 1]"
"""What a budget may be, in the words every refusal uses."""


class BudgetError(InvalidRequestError, ValueError):
    """A budget out of range: a 422 `validation_error`; also a ValueError, so that a form field's validator
    reports it with the field's location like any other bad field."""


def check_max_gaussians(max_gaussians: MaxGaussians | None) -> MaxGaussians | None:
    """`max_gaussians` if it may be a budget of some scene: None (keep all), an int >= 1 or a float in (0, 1].

    Each edge calls this (or `parse_max_gaussians`) where it parses its input; the count it cannot know yet
    is checked by `budget_count` (the pipeline does so before decoding the photo).

    Raises:
        BudgetError: naming the accepted range.
    """
    if max_gaussians is None:
        return None
    if isinstance(max_gaussians, Integral) and not isinstance(max_gaussians, bool) and max_gaussians >= 1:
        return int(max_gaussians)
    if isinstance(max_gaussians, Real) and not isinstance(max_gaussians, (bool, Integral)) \
            and math.isfinite(max_gaussians) and 0 < max_gaussians <= 1:
        return float(max_gaussians)
    raise BudgetError(f"max_gaussians must be {ACCEPTED}, got {max_gaussians!r}")


def parse_max_gaussians(text: str) -> MaxGaussians:
    """A budget as a user types it: digits are a count (``100000``), anything else a fraction (``0.25``).

    Raises:
        BudgetError: not a number, or out of range (see `check_max_gaussians`), naming the accepted range.
    """
    cleaned = text.strip()
    try:
        value: MaxGaussians = int(cleaned) if cleaned.lstrip("+-").isdigit() else float(cleaned)
    except ValueError:
        raise BudgetError(f"max_gaussians must be {ACCEPTED}, got {text!r}") from None
    checked = check_max_gaussians(value)
    assert checked is not None
    return checked


def budget_count(max_gaussians: MaxGaussians, num_gaussians: int) -> int:
    """The number of Gaussians a budget keeps out of `num_gaussians`.

    An int is a count (1 to `num_gaussians`); a float is a fraction in (0, 1] of `num_gaussians`, rounded
    to the nearest count and at least 1.

    Raises:
        BudgetError: anything else (0, negative, NaN, above the count, a fraction over 1, a bool), naming
            the accepted range.
    """
    accepted = BudgetError(f"max_gaussians must be a count from 1 to {num_gaussians:,} or a fraction in (0, 1], "
                           f"got {max_gaussians!r}")
    if isinstance(max_gaussians, bool):
        raise accepted
    if isinstance(max_gaussians, Integral):
        if not 1 <= int(max_gaussians) <= num_gaussians:
            raise accepted
        return int(max_gaussians)
    if isinstance(max_gaussians, Real) and math.isfinite(max_gaussians) and 0 < max_gaussians <= 1 \
            and num_gaussians >= 1:
        return max(1, min(num_gaussians, round(float(max_gaussians) * num_gaussians)))
    raise accepted

"""Small validators shared by the domain models, each raising an error with a stable code."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from paceline_server.domain.errors import PacelineError

# Names end up in URLs and metric labels: keep them short and printable.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
#: Free-text identifiers (run ids, idempotency keys) may hold any character but these:
#: PostgreSQL text cannot store NUL, and control characters have no business in logs.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The largest step (or list offset) accepted: every JSON parser reads it exactly (it is
#: below 2**53, an IEEE double's integer range) and it fits the 64-bit database columns.
MAX_INT = 2**53 - 1


def check_name(value: object, what: str, error: type[PacelineError]) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise error(
            f"{what} must be 1-128 characters of letters, digits, '.', '_', ':' or '-', "
            f"starting with a letter or digit; got {value!r}",
            {"field": what, "value": repr(value)[:200]},
        )
    return value


def has_control_characters(value: str) -> bool:
    """Whether `value` breaks `TEXT_PATTERN`."""
    return _CONTROL.search(value) is not None


#: Free-form documents (run metadata) may nest this deep: every serialiser that touches
#: them later recurses per level, and a stored document too deep to render would break
#: every answer that includes it.
MAX_NESTING = 32


def check_nesting(value: object, what: str, error: type[PacelineError],
                  limit: int = MAX_NESTING) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else \
            item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > limit:
            raise error(f"{what} is nested deeper than {limit} levels", {"field": what})
        stack.extend((child, depth + 1) for child in children)


def check_unique(names: Sequence[str], what: str, error: type[PacelineError]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise error(f"duplicate {what} name {name!r}", {"field": what, "value": name})
        seen.add(name)


def check_int(value: object, what: str, error: type[PacelineError], *, minimum: int = 0,
              maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise error(f"{what} must be an integer; got {value!r}", {"field": what})
    result = int(value)
    if result < minimum or (maximum is not None and result > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{what} must be {bound}; got {result}", {"field": what, "value": result})
    return result


def check_finite_float(value: object, what: str, error: type[PacelineError]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise error(f"{what} must be a number; got {value!r}", {"field": what})
    result = float(value)
    if not math.isfinite(result):
        raise error(f"{what} must be finite; got {result}", {"field": what})
    return result


def check_simplex(values: Sequence[float] | np.ndarray, what: str, error: type[PacelineError],
                  *, tolerance: float = 1e-6) -> np.ndarray:
    """Probabilities / weights: finite, non-negative, summing to 1 within `tolerance`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be a list of numbers", {"field": what}) from exc
    if array.ndim != 1 or array.size == 0:
        raise error(f"{what} must be a non-empty vector", {"field": what})
    if not np.all(np.isfinite(array)):
        raise error(f"{what} must be finite", {"field": what})
    if np.any(array < 0):
        raise error(f"{what} must be non-negative; got {array.tolist()}", {"field": what})
    total = float(array.sum())
    if abs(total - 1.0) > tolerance:
        raise error(
            f"{what} must lie on the simplex (sum to 1); got sum {total:.6g}",
            {"field": what, "sum": total},
        )
    return array / total

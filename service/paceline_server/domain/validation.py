"""Small validators shared by the domain models, each raising an error with a stable code."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np

from paceline_server.domain.errors import PacelineError

#: Longest name (curricula, distributions, objectives): names end up in URLs and metric
#: labels, so they are short and printable.
MAX_NAME = 128
NAME_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{MAX_NAME - 1}}}$")
#: Free-text identifiers (run ids, idempotency keys) may hold any character but these:
#: PostgreSQL text cannot store NUL, and control characters have no business in logs.
#: (The OpenAPI form; `check_identifier` also refuses lone surrogates, which are not
#: valid UTF-8 and which no database driver can encode.)
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
#: Longest run id (the database column is VARCHAR(128)) and idempotency key.
MAX_RUN_ID = 128
MAX_KEY = 200
#: The largest step (or list offset) accepted: every JSON parser reads it exactly (it is
#: below 2**53, an IEEE double's integer range) and it fits the 64-bit database columns.
MAX_INT = 2**53 - 1


def check_name(value: object, what: str, error: type[PacelineError]) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise error(
            f"{what} must be 1-{MAX_NAME} characters of letters, digits, '.', '_', ':' or '-', "
            f"starting with a letter or digit; got {value!r}",
            {"field": what, "value": repr(value)[:200]},
        )
    return value


def has_control_characters(value: str) -> bool:
    """Whether `value` breaks `TEXT_PATTERN` or holds a lone surrogate (a string decoded
    from JSON `"\\ud800"`, not valid UTF-8): text no backend can store as it is."""
    return _CONTROL.search(value) is not None


def check_identifier(value: object, what: str, error: type[PacelineError], *,
                     max_length: int = MAX_RUN_ID) -> str:
    """The one rule for free-text identifiers (run ids, idempotency keys, names looked
    up), on every transport: a string of 1 to `max_length` characters, valid UTF-8,
    without control characters. Checked before anything is queued or stored, so a row
    that no backend can store or render never reaches the database."""
    if not isinstance(value, str):
        raise error(f"{what} must be a string; got {type(value).__name__}", {"field": what})
    if not 0 < len(value) <= max_length:
        raise error(f"{what} must be 1 to {max_length} characters; got {len(value)}",
                    {"field": what})
    if has_control_characters(value):
        raise error(f"{what} must be valid UTF-8 without control characters; got "
                    f"{value[:200]!r}", {"field": what})
    return value


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


#: Largest run metadata document (compact JSON, UTF-8): it is stored with the run and
#: sent back with every listing of the curriculum's runs.
MAX_DOCUMENT_BYTES = 64 * 1024
_INT64 = 2**63


def check_document(value: object, what: str, error: type[PacelineError], *,
                   max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
    """A free-form JSON document (run metadata) that every backend stores and every
    transport renders back: objects with string keys, arrays, strings without NUL or
    lone surrogates (PostgreSQL's jsonb refuses NUL, no encoder takes a lone surrogate),
    finite numbers, integers within 64 bits, at most `MAX_NESTING` levels and
    `max_bytes` of JSON."""
    check_nesting(value, what, error)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise error(f"{what}: object keys must be strings", {"field": what})
                _check_document_text(key, what, error)
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str):
            _check_document_text(item, what, error)
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not -_INT64 <= item < _INT64:
                raise error(f"{what}: integers must fit in 64 bits", {"field": what})
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise error(f"{what}: numbers must be finite; got {item}", {"field": what})
        else:
            raise error(f"{what}: {type(item).__name__} is not a JSON value", {"field": what})
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise error(f"{what} is {size} bytes of JSON; at most {max_bytes} are accepted",
                    {"field": what, "bytes": size, "limit": max_bytes})


def _check_document_text(value: str, what: str, error: type[PacelineError]) -> None:
    if "\x00" in value or _SURROGATE.search(value) is not None:
        raise error(f"{what}: strings must be valid UTF-8 without NUL; got "
                    f"{value[:200]!r}", {"field": what})


_SURROGATE = re.compile("[\ud800-\udfff]")


#: A report's arrays have at most 3 dimensions ([n, g, k]); a few more are left to the
#: report's own shape checks, far more (numpy stops at 64) never reach numpy.
MAX_DIMS = 8


def check_shape(shape: object, what: str, error: type[PacelineError]) -> list[int]:
    """An array shape sent by a client: at most `MAX_DIMS` non-negative integers whose
    product (zeros aside, which would hide an overflow) is at most `MAX_INT`, so numpy
    can build it without overflowing."""
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS or not all(
            isinstance(s, int | np.integer) and not isinstance(s, bool) and 0 <= s <= MAX_INT
            for s in shape):
        raise error(f"{what}: shape must be a list of at most {MAX_DIMS} integers in "
                    f"[0, {MAX_INT}]", {"field": what})
    dims = [int(s) for s in shape]
    if math.prod(s for s in dims if s) > MAX_INT:
        raise error(f"{what}: shape {dims} holds too many elements", {"field": what})
    return dims


#: Element types a list of numbers may hold: JSON's (and msgpack's) numbers as Python
#: reads them, and numpy's numeric scalars (an in-process caller's lists).
_NUMBER = (int, float, np.integer, np.floating)
_BOOLEAN = (bool, np.bool_)
#: What a refused element is called in JSON (the form most clients send).
_JSON_NAMES: dict[type, str] = {bool: "boolean", np.bool_: "boolean", str: "string",
                                type(None): "null", dict: "object", list: "array",
                                tuple: "array"}


def number_array(value: object, what: str, error: type[PacelineError], *,
                 of: str = "numbers", booleans: bool = False) -> np.ndarray:
    """`value` (a client's array: nested lists, or a numpy array) as a numpy array of
    numbers, the one way every transport's arrays become numpy arrays.

    Nested lists (JSON, msgpack, the embedded client's lists) must hold numbers and
    nothing else: `np.asarray(["1"], float)` reads the string "1" as 1.0 (and `null` as
    NaN), so `"0.5"` and `null` are refused here, as everywhere else the API wants a
    number (`check_finite_float`, `check_int`). Booleans are refused too unless
    `booleans`: a report's values take `true`/`false` as 1/0 (pass/fail rewards, as the
    README's loop sends them and a typed array of dtype `"|b1"` carries them), while an
    integer array (indices, labels) takes integers only, as `check_int` does. Lists come
    back as int64 when every element is an integer int64 holds, float64 otherwise. A
    numpy array (a typed array, gRPC's packed values, an in-process caller's array)
    carries a declared dtype and is returned as it is when that dtype is numeric, bool
    included (integer callers refuse it by its dtype). `of` names what the elements
    must be in the message ("integers" for indices)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    try:
        cells = np.asarray(value, dtype=object)
    except (TypeError, ValueError) as exc:
        raise error(f"{what} must be an array of {of}", {"field": what}) from exc
    kinds = set(map(type, cells.ravel().tolist()))
    allowed = _NUMBER + _BOOLEAN if booleans else _NUMBER
    wrong = sorted({_JSON_NAMES.get(t, t.__name__) for t in kinds
                    if not issubclass(t, allowed) or (not booleans and issubclass(t, _BOOLEAN))})
    if wrong:
        shape = f"a rectangular array of {of}" if "array" in wrong else f"an array of {of}"
        raise error(f"{what} must be {shape}; found {', '.join(wrong)}",
                    {"field": what, "found": wrong})
    if all(issubclass(t, int | np.integer) for t in kinds):
        try:
            return cells.astype(np.int64)
        except OverflowError:  # an integer beyond int64: read as a float, judged by range
            pass
    try:
        return cells.astype(np.float64)
    except OverflowError as exc:  # a JSON integer beyond float64's range (10**400)
        raise error(f"{what} must be finite; found an integer beyond float64's range",
                    {"field": what}) from exc


def check_unique(names: Sequence[str], what: str, error: type[PacelineError]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise error(f"duplicate {what} name {name!r}", {"field": what, "value": name})
        seen.add(name)


def check_int(value: object, what: str, error: type[PacelineError], *, minimum: int = 0,
              maximum: int | None = None) -> int:
    if type(value) is int:  # the common case, first: checked on every report
        result = value
    elif isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise error(f"{what} must be an integer; got {value!r}", {"field": what})
    else:
        result = int(value)
    if result < minimum or (maximum is not None and result > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{what} must be {bound}; got {result}", {"field": what, "value": result})
    return result


#: The largest magnitude of a number a client sends into the arithmetic: a reward, an
#: advantage, an evaluation mean, an objective bound or reference, a strategy parameter.
#: Far beyond any real reward scale, and small enough that every strategy's sums,
#: squares and products of such numbers stay finite in float64 (see docs/reliability.md).
MAX_VALUE = 1e6
#: Per-objective gradient inner products are products of two such magnitudes.
MAX_GRAD_PRODUCT = MAX_VALUE**2
#: A strategy parameter (a temperature, an exploration constant, an initial utility):
#: wider, so that "practically infinite" settings such as a temperature of 1e9 stay
#: expressible, and still far from float64's overflow in the strategies' formulas.
MAX_PARAM = 1e9


def check_finite_float(value: object, what: str, error: type[PacelineError], *,
                       limit: float = MAX_VALUE) -> float:
    """A finite number of magnitude at most `limit`."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise error(f"{what} must be a number; got {value!r}", {"field": what})
    try:
        result = float(value)
    except OverflowError:  # an int beyond float64
        result = math.inf
    if not math.isfinite(result):
        raise error(f"{what} must be finite; got {result}", {"field": what})
    if abs(result) > limit:
        raise error(f"{what} must be within [-{limit:g}, {limit:g}]; got {result:g}",
                    {"field": what, "limit": limit})
    return result


def check_bounded(array: np.ndarray, what: str, error: type[PacelineError], *,
                  limit: float = MAX_VALUE) -> None:
    """Every value of `array` finite and of magnitude at most `limit` (one pass: NaN
    fails the comparison)."""
    if array.size == 0:
        return
    with np.errstate(invalid="ignore"):
        peak = float(np.max(np.abs(array)))
    if peak <= limit:
        return
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise error(f"{what} must be finite; found {bad} NaN/inf value(s)",
                    {"field": what, "non_finite": bad})
    raise error(f"{what} must be within [-{limit:g}, {limit:g}]; largest magnitude is "
                f"{peak:g}", {"field": what, "limit": limit})


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

"""numpy's floating-point error handling, fixed for Paceline's own arithmetic.

numpy's error state is per thread (a context variable), and a host process may change
it: Syllabus, for one, runs `np.seterr(all="raise")` when it is imported. A trainer
that imports it and runs Paceline embedded would then fail a report on an underflow in
a forgetful decay (0.5^k of a float32 count goes subnormal after ~150 visits), which
numpy's defaults ignore. The engine and the embedded service run under numpy's own
defaults whatever the host chose, so a result never depends on who imported what.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np

P = ParamSpec("P")
R = TypeVar("R")


def numpy_defaults() -> np.errstate:
    """A context in which numpy handles floating-point errors its default way (what
    `np.geterr()` says in a fresh interpreter)."""
    return np.errstate(divide="warn", over="warn", under="ignore", invalid="warn")


def with_numpy_defaults(function: Callable[P, R]) -> Callable[P, R]:
    """`function` run inside `numpy_defaults()`."""
    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with numpy_defaults():
            return function(*args, **kwargs)
    return wrapper

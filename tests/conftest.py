"""Marks the tests the fast lane leaves out (see `fast_lane.py`); under exactly
`-m "not slow"` the files that hold only slow tests are not even collected. Caps the
workers of `-n auto` (the README's test command)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fast_lane import FAST_LANE, is_slow, path_is_slow

#: Most workers `-n auto` starts: every worker holds torch, its own service processes and
#: database connections (about 1 GB and a handful of PostgreSQL sessions each), and past
#: a few workers the suite's servers and subprocesses compete for the same cores.
MAX_WORKERS = 4


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if config.getoption("markexpr", "") == FAST_LANE and path_is_slow(collection_path):
        return True
    return None


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (the test extra)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return auto_workers()


def auto_workers() -> int:
    """The cores this process may run on (a container's CPU set, not the host's), at most
    MAX_WORKERS."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))

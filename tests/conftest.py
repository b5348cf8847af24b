"""Marks the tests the fast lane leaves out (see `fast_lane.py`); under exactly
`-m "not slow"` the files that hold only slow tests are not even collected. Caps the
workers of `-n auto` (the README's test command)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fast_lane import FAST_LANE, is_slow, path_is_slow
from workers import auto_workers


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


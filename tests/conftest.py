"""Marks the tests the fast lane leaves out (see `fast_lane.py`)."""

from __future__ import annotations

import pytest

from fast_lane import is_slow


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_slow(item):
            item.add_marker(pytest.mark.slow)

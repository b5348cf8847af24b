"""Client test fixtures: an embedded client on a fresh SQLite file, and a real uvicorn
service process shared by a module's tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if importlib.util.find_spec("paceline") is None:  # the client is not installed: use the tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))


import paceline
from support import ServiceProcess, start_service


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[paceline.Client]:
    with paceline.Client.embedded(tmp_path / "paceline.db") as client:
        yield client


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A real `python -m paceline_server serve` on a free port and a SQLite file."""
    with start_service(tmp_path_factory.mktemp("service") / "paceline.db") as process:
        yield process

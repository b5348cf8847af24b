"""Dashboard fixtures: a real service process with curricula a toy trainer reported to,
and Debian's Chromium driven by Playwright (never a browser Playwright downloads)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ui_support import CHROMIUM_ARGS, Page, Trainer, find_chromium, spec

from support import ServiceProcess, running_service

playwright_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the dashboard tests need the Python package playwright (test extra)")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium not found (/usr/bin/chromium): apt-get install -y chromium")
    return path


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    with playwright_api.sync_playwright() as play:
        launched = play.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service on SQLite with two curricula and three runs (one left to go stale)."""
    root = tmp_path_factory.mktemp("ui")
    with running_service(f"sqlite:///{root / 'ui.db'}", log=root / "service.log",
                         env={"PACELINE_RUN_STALE_AFTER_S": "3"}) as process:
        with httpx.Client(base_url=process.url) as http:
            # `math` keeps DUMP's own rule (the scalarised reward's advantages): its
            # length term keeps `hard`, which never passes, in the batch long enough
            # (200 samples) for the page to show it flagged hopeless.
            paper = {"kind": "dump_ucb", "advantage_source": "scalarized"}
            for body in (spec("math", sampler=paper, batch_size=64),
                         spec("code", sampler="spard", weighting="gradient")):
                assert http.post("/v1/curricula", json=body).status_code == 201
            Trainer(http, "math", "quiet").train(2)  # stops reporting: goes stale
            Trainer(http, "math", "run-a").train(12)
            Trainer(http, "code", "run-b").train(6)
        yield process


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield Page(context.new_page())
    finally:
        context.close()

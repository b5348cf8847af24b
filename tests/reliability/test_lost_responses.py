"""Idempotency under retries: a proxy between the clients and a real service forwards
each report, lets the service commit and answer, then throws the answer away and closes
the connection (every third report). The SDK retries with the same idempotency key; no
report is applied twice and the state equals a sequential replay of the log."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest
from reliability_support import LostResponseProxy, check_exactly_once

from support import service_process

pytestmark = pytest.mark.slow


def test_lost_answers_after_commit_are_applied_once(sqlite_url: str,
                                                    load: ModuleType) -> None:
    with service_process(sqlite_url) as service:
        proxy = LostResponseProxy(service.port, path_contains="/reports", every=3)
        try:
            result = asyncio.run(load.run_load(f"http://127.0.0.1:{proxy.port}", "lost",
                                               runs=3, steps=12, duration_s=60))
        finally:
            proxy.close()
        assert result.errors == []
        assert len(result.acks) == 3 * 12
        assert proxy.dropped >= 12
        # A report whose answer was lost is acknowledged by a retry that finds its key
        # in the log: marked replayed, with the seq of the one application.
        replayed = sum(a.replayed for a in result.acks)
        assert 1 <= replayed <= proxy.dropped
        check_exactly_once(sqlite_url, "lost", result.acks, live_url=service.url)


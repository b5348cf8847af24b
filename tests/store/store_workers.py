"""Code run in child processes by the multi-process store tests (importable by `spawn`)."""

from __future__ import annotations

from typing import Any

from paceline_server.store.sql import SqlStore


def append_events(url: str, options: dict[str, Any], curriculum: str, worker: int,
                  count: int, start: Any) -> None:
    """Open the store, wait for the common start signal, append `count` events one
    writer block each (keys `p<worker>/<i>`)."""
    store = SqlStore(url, **options)
    try:
        if not start.wait(60):
            raise TimeoutError("start signal never came")
        for i in range(count):
            with store.writer(curriculum) as writer:
                writer.append("report", f"p{worker}", i, f"p{worker}/{i}",
                              f"{worker}:{i}".encode())
    finally:
        store.close()

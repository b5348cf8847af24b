"""Snapshots without doubling memory (issue 18, F6), on SQLite and PostgreSQL.

The service's own snapshot (due at a report) and a cold load of it must stay far below a
second copy of the state: before snapshots were streamed, writing one allocated 2.2x the
state on top of it and loading one 3.6x (docs/reliability.md, memory model). Ratios of
traced allocations, not times, so the test holds on a loaded machine.
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store

SAMPLES = 1_500_000  # prioritized: ~32 MB of state
CHUNK = 1 << 20


def traced_peak(action: Callable[[], Any]) -> tuple[Any, int]:
    """What `action` returns and the most bytes it had allocated at once (traced)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = action()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def report(service: PacelineService, step: int) -> int:
    batch = service.next_batch("big", "r", step)
    return service.report("big", {"run_id": "r", "step": step,
                                  "indices": batch.indices.tolist(),
                                  "rewards": np.ones((batch.indices.size, 2)).tolist()}).seq


def test_snapshot_write_and_load_hold_no_second_copy(database_url: str) -> None:
    settings = Settings(database_url=database_url, snapshot_every=2, auto_migrate=True,
                        snapshot_chunk_bytes=CHUNK)
    store = open_store(database_url, **settings.store_options())
    service = PacelineService(store, settings)
    try:
        service.create_curriculum({
            "name": "big", "objectives": ["acc"], "sampler": {"kind": "prioritized"},
            "layout": {"distributions": [{"name": "a", "size": SAMPLES // 2},
                                         {"name": "b", "size": SAMPLES // 2}]},
            "batch_size": 32})
        service.attach_run("big", run_id="r")
        engine = service.engine("big").engine
        state = engine.state_bytes_per_sample() * SAMPLES
        assert state > 30e6
        assert report(service, 0) == 1
        seq, peak = traced_peak(lambda: report(service, 1))  # seq 2: the snapshot is due
        assert seq == 2
        snapshot = store.latest_snapshot("big")
        assert snapshot is not None and snapshot.seq == 2
        expected = b"".join(bytes(piece) for piece in engine.snapshot_pieces())
        assert snapshot.state == expected
        del snapshot, expected
        assert peak < 0.5 * state, (peak, state)  # the blob path: 2.2x
    finally:
        service.close()
        store.close()

    # A cold start loads it: the decoded state (1x) and a few chunks, no blob beside it.
    store = open_store(database_url, **settings.store_options())
    service = PacelineService(store, settings)
    try:
        cached, peak = traced_peak(lambda: service.engine("big"))
        assert cached.seq == 2
        assert peak < 1.5 * state, (peak, state)  # the blob path: 3.6x
        assert report(service, 2) == 3  # and it serves and folds on
    finally:
        service.close()
        store.close()


@pytest.mark.slow
def test_the_benchmark_runs_and_shows_the_bound() -> None:
    """`benchmarks/snapshot_memory.py` at a small size: four phases, the streamed write
    below the blob write (its figures in docs/benchmarks.md come from this script)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "snapshot_memory.py"
    out = subprocess.run([sys.executable, str(script), "--samples", "200000",
                          "--chunk-bytes", "65536"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"blob-write", "stream-write", "blob-read", "stream-read"}
    traced = {phase: float(row[4].rstrip("x")) for phase, row in rows.items()}
    assert traced["stream-write"] < 0.5 < 2.0 < traced["blob-write"], out
    assert traced["stream-read"] < 1.5 < 3.0 < traced["blob-read"], out

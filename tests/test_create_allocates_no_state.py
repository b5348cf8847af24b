"""Creating a curriculum (and re-creating it with `exist_ok`, what every trainer rank
does at start) builds its strategies to check and spell out the spec, not its state:
an engine built only to read its canonical spec cost a state-sized allocation per call
(+0.5 GB for a 10⁷-sample `prioritized` curriculum, several ranks at once a multiple)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from paceline_server.app.service import PacelineService
from paceline_server.settings import Settings
from paceline_server.store import open_store

SPEC = {"name": "big", "layout": {"distributions": [{"name": "a", "size": 1_500_000},
                                                    {"name": "b", "size": 500_000}]},
        "objectives": ["acc"], "sampler": "prioritized", "batch_size": 64}


def test_create_and_exist_ok_allocate_no_state(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    service = PacelineService(open_store(url, auto_migrate=True), Settings(database_url=url))
    try:
        tracemalloc.start()
        try:
            assert service.create_curriculum(SPEC).created
            assert not service.create_curriculum(SPEC, exist_ok=True).created
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, peak  # the state is ~2M x 16 bytes and more
        service.attach_run("big", run_id="r")
        assert service.next_batch("big", "r", 0).indices.size == 64  # built on first use
    finally:
        service.close()
        service.store.close()

"""Concurrent writers: 8 threads reporting to one curriculum end in the same state as
the same reports applied one by one in sequence-number order; nothing is lost."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from paceline_server.app.codec import decode_report
from paceline_server.app.service import PacelineService
from paceline_server.engine import CurriculumEngine
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC


def test_eight_threads_equal_sequential_replay(database_url: str) -> None:
    settings = Settings(database_url=database_url, snapshot_every=7)
    store = open_store(database_url, auto_migrate=True)
    service = PacelineService(store, settings)
    service.create_curriculum(SPEC)
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        try:
            run = f"run-{thread}"
            service.attach_run("math", run_id=run)
            rng = np.random.default_rng(thread)
            for step in range(10):
                batch = service.next_batch("math", run, step)
                rewards = np.stack([rng.integers(0, 2, (batch.indices.size, 4)),
                                    rng.integers(0, 100, (batch.indices.size, 4))], axis=-1)
                body: dict[str, Any] = {"run_id": run, "step": step,
                                        "indices": batch.indices.tolist(),
                                        "rewards": rewards.astype(float).tolist()}
                service.report("math", body, idempotency_key=f"{run}/{step}")
                if step % 3 == 0:  # a retried request is applied once
                    service.report("math", body, idempotency_key=f"{run}/{step}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    events = list(store.events("math"))
    assert [e.seq for e in events] == list(range(1, 81))
    sequential = CurriculumEngine(service.engine("math").spec)
    for event in events:
        sequential.apply(decode_report(event.payload))
    live = service.engine("math")
    assert live.seq == 80
    assert live.engine.to_bytes() == sequential.to_bytes()
    # A new process (fresh service, snapshot + tail) agrees too.
    rebuilt = PacelineService(open_store(database_url), settings).engine("math")
    assert rebuilt.engine.to_bytes() == sequential.to_bytes()
    store.close()

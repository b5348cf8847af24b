"""With PACELINE_PRUNE_EVENTS on, a report whose event was pruned is still answered
once: the retry of a lost answer comes back `replayed` with its first seq, a resumed
trainer's re-report of a pruned step too, and other content under the same key or step
is still a conflict. (The duplicate checks read the events table, and pruning deleted
the rows they needed: the retry was folded a second time.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import paceline
import paceline_server.domain.errors as paceline_server_errors
from support import threaded_service

SNAPSHOT_EVERY = 5


@pytest.fixture(params=["embedded", "http"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[paceline.Client]:
    settings = {"prune_events": True, "snapshot_every": SNAPSHOT_EVERY}
    if request.param == "embedded":
        with paceline.Client.embedded(tmp_path / "e.db", **settings) as embedded:
            yield embedded
        return
    with threaded_service(f"sqlite:///{tmp_path / 'h.db'}", **settings) as url, \
            paceline.Client(url, retries=0) as http:
        yield http


def rewards(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, 2), value)


def test_a_retry_after_its_event_was_pruned_is_answered_once(client: paceline.Client) -> None:
    cur = client.create_curriculum("p", distributions={"a": 50, "b": 50},
                                   objectives=["acc"], batch_size=4)
    first = cur.start_run("first", heartbeat_interval=None)
    other = cur.start_run("other", heartbeat_interval=None)
    lost = first.next_batch(0)
    assert first.report(0, lost.indices, rewards(4), idempotency_key="lost").seq == 1
    for step in range(SNAPSHOT_EVERY - 1):  # another run's reports: snapshot at 5, pruned
        other.report(step, other.next_batch(step).indices, rewards(4, step % 2))
    assert cur.state().seq == SNAPSHOT_EVERY
    again = first.report(0, lost.indices, rewards(4), idempotency_key="lost")
    assert (again.seq, again.replayed) == (1, True)
    resumed = first.report(0, lost.indices, rewards(4))  # a resumed trainer, another key
    assert (resumed.seq, resumed.replayed) == (1, True)
    with pytest.raises(paceline.Conflict) as reused:
        first.report(0, lost.indices, rewards(4, 0.0), idempotency_key="lost")
    assert reused.value.code == "IDEMPOTENCY_CONFLICT"
    with pytest.raises(paceline.Conflict) as changed:
        first.report(0, lost.indices, rewards(4, 0.0))
    assert changed.value.code == "REPORT_CONFLICT"
    with pytest.raises(paceline.Conflict) as refill:
        first.refill(0, 1)
    assert refill.value.code == "STEP_ALREADY_REPORTED"
    assert cur.state().seq == SNAPSHOT_EVERY  # nothing folded twice
    nxt = first.next_batch(1)
    assert first.report(1, nxt.indices, rewards(4)).seq == SNAPSHOT_EVERY + 1


def test_a_retry_of_an_older_releases_event_pruned_after_the_upgrade(tmp_path: Path) -> None:
    """An event stored in another encoding (the first release's wide floats and group
    column) and pruned by this release: its retry is still recognised. The pruned digest
    was of the stored bytes, which a retry encoded today never matches."""
    import sqlite3

    from paceline_server.app.codec import _pack, _pack_array

    db = tmp_path / "old.db"
    with paceline.Client.embedded(db, prune_events=True,
                                  snapshot_every=SNAPSHOT_EVERY) as client:
        cur = client.create_curriculum("p", distributions={"a": 50, "b": 50},
                                       objectives=["acc"], batch_size=4)
        first = cur.start_run("first", heartbeat_interval=None)
        lost = first.next_batch(0)
        assert first.report(0, lost.indices, rewards(4), idempotency_key="k").seq == 1
        old = _pack({"run_id": "first", "step": 0,  # the same report, encoded otherwise
                     "indices": _pack_array(np.asarray(lost.indices, dtype=np.int64)),
                     "group_of": _pack_array(np.repeat(np.arange(4), 2)),
                     "rewards": _pack_array(np.ones((8, 1)))})
        with sqlite3.connect(db) as conn:
            assert conn.execute("UPDATE events SET payload = ? WHERE seq = 1",
                                (old,)).rowcount == 1
        other = cur.start_run("other", heartbeat_interval=None)
        for step in range(SNAPSHOT_EVERY - 1):
            other.report(step, other.next_batch(step).indices, rewards(4))
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        again = first.report(0, lost.indices, rewards(4), idempotency_key="k")
        resumed = first.report(0, lost.indices, rewards(4))
        assert (again.seq, again.replayed, resumed.seq, resumed.replayed) == (1, True, 1, True)
        with pytest.raises(paceline.Conflict) as changed:
            first.report(0, lost.indices, rewards(4, 0.0))
        assert changed.value.code == "REPORT_CONFLICT"
        assert cur.state().seq == SNAPSHOT_EVERY


def test_the_content_digest_is_that_of_same_report() -> None:
    """Equal content, however encoded, gives one digest; any difference another."""
    from paceline_server.app.codec import content_digest, decode_report, encode_report
    from paceline_server.domain.report import Report

    base = Report(run_id="r", step=3, indices=np.array([4, 7]),
                  group_of=np.array([0, 0, 1, 1]), rewards=np.array([[1.0], [0.0], [-0.0],
                                                                     [0.5]]))
    same = Report(run_id="r", step=3, indices=np.array([4, 7], dtype=np.int32),
                  group_of=np.array([0, 0, 1, 1]),
                  rewards=np.array([[1.0], [0.0], [0.0], [0.5]], dtype=np.float32))
    assert content_digest(base) == content_digest(same)
    assert content_digest(decode_report(encode_report(base))) == content_digest(base)
    others = [Report(run_id="s", step=3, indices=base.indices, group_of=base.group_of,
                     rewards=base.rewards),
              Report(run_id="r", step=4, indices=base.indices, group_of=base.group_of,
                     rewards=base.rewards),
              Report(run_id="r", step=3, indices=np.array([4, 8]), group_of=base.group_of,
                     rewards=base.rewards),
              Report(run_id="r", step=3, indices=base.indices, group_of=base.group_of,
                     rewards=base.rewards.reshape(4, 1) * 0.5),
              Report(run_id="r", step=3, indices=base.indices, group_of=base.group_of,
                     rewards=base.rewards, advantages=np.zeros(4))]
    digests = {content_digest(r) for r in others}
    assert len(digests) == len(others) and content_digest(base) not in digests


def test_a_failed_pruning_never_fails_the_committed_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Pruning runs after the commit: when it fails (the curriculum deleted meanwhile, a
    lock timeout), the report is acknowledged all the same, and the next snapshot's
    pruning takes the events this one left."""
    with paceline.Client.embedded(tmp_path / "f.db", prune_events=True,
                                  snapshot_every=SNAPSHOT_EVERY) as client:
        store = client._transport.service.service.store  # type: ignore[attr-defined]
        prune = store.prune_events
        failing = [True]

        def flaky(name: str, up_to_seq: int, *args: object) -> int:
            if failing[0]:
                raise paceline_server_errors.Unavailable("timed out waiting for the lock")
            return int(prune(name, up_to_seq, *args))

        monkeypatch.setattr(store, "prune_events", flaky)
        cur = client.create_curriculum("p", distributions={"a": 50}, objectives=["acc"],
                                       batch_size=4)
        run = cur.start_run("r", heartbeat_interval=None)
        for step in range(SNAPSHOT_EVERY):
            ack = run.report(step, run.next_batch(step).indices, rewards(4))
            assert (ack.seq, ack.replayed) == (step + 1, False)
        assert "pruning the event log at seq 5 failed" in caplog.text
        assert [e.seq for e in store.events("p")] == list(range(1, 6))  # none pruned
        failing[0] = False
        for step in range(SNAPSHOT_EVERY, 2 * SNAPSHOT_EVERY):
            run.report(step, run.next_batch(step).indices, rewards(4))
        assert [e.seq for e in store.events("p")] == []  # both snapshots' events went
        assert cur.state().seq == 2 * SNAPSHOT_EVERY

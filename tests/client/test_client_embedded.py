"""The client against the embedded service (the real ASGI app on SQLite, in-process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paceline
from support import CLIENT_SPEC as SPEC


def rewards_for(indices: list[int], group: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 2, (len(indices), group)),
                     rng.integers(0, 100, (len(indices), group))], axis=-1).astype(float)


def test_full_cycle(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum("math", **SPEC)
    assert cur.objectives == ["acc", "len"]
    assert cur.distributions == ["easy", "hard"]
    assert cur.spec["sampler"]["kind"] == "uniform"
    with cur.start_run(run_id="run-1", metadata={"gpu": "none"}) as run:
        assert run.info.metadata == {"gpu": "none"}
        batch = run.next_batch(0)
        assert len(batch.indices) == 8
        assert batch.reward_weights == {"acc": 0.75, "len": 0.25}
        assert batch.probabilities == {"easy": 0.6, "hard": 0.4}
        assert batch.loss_weights is None
        assert (batch.run_id, batch.step, batch.seq) == ("run-1", 0, 0)
        rewards = rewards_for(batch.indices)
        ack = run.report(0, indices=batch.indices, rewards=rewards,
                         advantages=rewards[..., 0] - rewards[..., 0].mean(axis=1, keepdims=True))
        assert (ack.seq, ack.replayed) == (1, False)
        assert run.next_batch(0) == batch  # the same step gives the same batch
        assert run.next_batch(1).seq == 1
        assert len(run.next_batch(2, size=3).indices) == 3
    state = cur.state()
    assert state.seq == 1
    assert state.objectives == ["acc", "len"]
    assert sum(d.sampled for d in state.distributions) == 8
    assert state.distribution("easy").size == 60
    assert state.weight_history[0].weights == {"acc": 0.75, "len": 0.25}
    assert set(state.probabilities) == {"easy", "hard"}
    assert cur.refresh().seq == 1
    assert [r.run_id for r in cur.runs()] == ["run-1"]


def test_exist_ok_and_conflicts(embedded: paceline.Client) -> None:
    first = embedded.create_curriculum("math", **SPEC)
    again = embedded.create_curriculum("math", **SPEC, exist_ok=True)
    assert again.info == first.info
    with pytest.raises(paceline.Conflict) as info:
        embedded.create_curriculum("math", **SPEC)
    assert (info.value.code, info.value.status) == ("CURRICULUM_EXISTS", 409)
    with pytest.raises(paceline.Conflict, match="different spec"):
        embedded.create_curriculum("math", **{**SPEC, "seed": 2}, exist_ok=True)


@pytest.mark.parametrize(("change", "code"), [
    ({"sampler": "nope"}, "UNKNOWN_STRATEGY"),
    ({"sampler": {"kind": "uniform", "x": 1}}, "INVALID_PARAMS"),
    ({"objectives": []}, "INVALID_SPEC"),
    ({"batch_size": 1000}, "INVALID_SPEC"),
])
def test_bad_specs(embedded: paceline.Client, change: dict[str, Any], code: str) -> None:
    with pytest.raises(paceline.InvalidInput) as info:
        embedded.create_curriculum("math", **{**SPEC, **change})
    assert (info.value.code, info.value.status) == (code, 422)
    assert embedded.list_curricula() == []


def test_errors_are_mapped(embedded: paceline.Client) -> None:
    with pytest.raises(paceline.NotFound) as missing:
        embedded.curriculum("nope")
    assert (missing.value.code, missing.value.status) == ("CURRICULUM_NOT_FOUND", 404)
    cur = embedded.create_curriculum("math", **SPEC)
    run = cur.start_run(heartbeat_interval=None)
    batch = run.next_batch(0)
    with pytest.raises(paceline.InvalidInput) as out_of_range:
        run.report(0, indices=[500], rewards=[[[1.0, 1.0]]])
    assert out_of_range.value.code == "INDEX_OUT_OF_RANGE"
    with pytest.raises(paceline.InvalidInput, match="finite") as nan:
        run.report(0, indices=[1], rewards=[[[float("nan"), 1.0]]])
    assert nan.value.code == "INVALID_REPORT"
    with pytest.raises(paceline.InvalidInput, match="groups"):
        run.report(0, indices=[1, 2], rewards=[[[1.0, 1.0]]])
    with pytest.raises(paceline.Conflict) as resized:
        run.next_batch(0, size=len(batch.indices) - 1)
    assert resized.value.code == "IDEMPOTENCY_CONFLICT"
    with pytest.raises(paceline.InvalidInput):
        run.next_batch(1, size=101)
    ghost = paceline.Run(cur, run.info.model_copy(update={"run_id": "ghost"}), None)
    with pytest.raises(paceline.NotFound) as no_run:
        ghost.next_batch(0)
    assert no_run.value.code == "RUN_NOT_FOUND"
    assert cur.state().seq == 0  # nothing bad was applied


def test_rewards_by_objective_equal_the_array(embedded: paceline.Client) -> None:
    states = []
    for name, by_objective in (("arrays", False), ("dicts", True)):
        cur = embedded.create_curriculum(name, **SPEC)
        run = cur.start_run(run_id="r", heartbeat_interval=None)
        for step in range(3):
            indices = run.next_batch(step).indices
            rewards: Any = rewards_for(indices, seed=step)
            if by_objective:
                rewards = {"len": rewards[..., 1].tolist(), "acc": rewards[..., 0]}
            run.report(step, indices, rewards)
        states.append(cur.state().model_dump(exclude={"name"}))
    assert states[0] == states[1]
    with pytest.raises(paceline.InvalidInput, match="missing"):
        run.report(9, [1], {"acc": [[1.0]]})


def test_ragged_groups_in_the_flat_form(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum("math", **SPEC)
    run = cur.start_run(heartbeat_interval=None)
    # Sample 3 got three rollouts, sample 70 (a "hard" one) a single one.
    ack = run.report(0, indices=[3, 70, 3, 3], group_ids=[0, 1, 0, 0],
                     rewards={"acc": [1, 0, 0, 1], "len": [10, 50, 20, 30]},
                     advantages=[0.5, 0.0, -0.5, 0.5], unserved="accept")
    assert ack.seq == 1
    state = cur.state()
    assert state.distribution("easy").rollouts == 3
    assert state.distribution("hard").rollouts == 1
    run.report(1, indices=[5, 5], group_ids=[0, 0], rewards=[[1, 1], [0, 2]],
               unserved="accept")
    assert cur.state().distribution("easy").rollouts == 5


def test_one_objective_and_eval_objectives(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum("single", distributions={"a": 10, "b": 5},
                                     objectives=["acc"], batch_size=4)
    run = cur.start_run(heartbeat_interval=None)
    batch = run.next_batch(0)
    assert batch.reward_weights == {"acc": 1.0}
    ack = run.report(0, batch.indices, np.ones((4, 2)), eval_objectives={"acc": 0.5})
    assert ack.seq == 1


def test_labels_layout(embedded: paceline.Client) -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 0])
    cur = embedded.create_curriculum("mixed", labels=labels, names=["x", "y"],
                                     objectives=["acc"], batch_size=4)
    assert cur.info.num_samples == 8
    assert [d.size for d in cur.state().distributions] == [5, 3]


def test_list_and_delete(embedded: paceline.Client) -> None:
    for name in ("b", "a"):
        embedded.create_curriculum(name, **SPEC)
    assert [c.name for c in embedded.list_curricula()] == ["a", "b"]
    cur = embedded.curriculum("a")
    cur.delete()
    assert [c.name for c in embedded.list_curricula()] == ["b"]
    with pytest.raises(paceline.NotFound):
        cur.delete()
    with pytest.raises(paceline.NotFound):
        cur.state()


def test_msgpack_and_gzip_reports(tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "m.db", report_encoding="msgpack") as client:
        client.compress_over = 256
        cur = client.create_curriculum("math", **SPEC)
        run = cur.start_run(heartbeat_interval=None)
        indices = run.next_batch(0).indices
        assert run.report(0, indices, rewards_for(indices, group=16)).seq == 1
        assert cur.state().distribution("easy").rollouts \
            + cur.state().distribution("hard").rollouts == 8 * 16


def test_background_heartbeat(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum("math", **SPEC)
    with cur.start_run(heartbeat_interval=0.05) as run:
        first = run.info.last_heartbeat
        assert run.heartbeating
        deadline = time.monotonic() + 10
        while run.refresh().last_heartbeat <= first:
            assert time.monotonic() < deadline, "no heartbeat arrived"
            time.sleep(0.02)
        assert cur.runs()[0].last_heartbeat > first
    assert not run.heartbeating
    other = cur.start_run(heartbeat_interval=0.05)
    embedded.close()  # closing the client stops its runs' heartbeats
    assert not other.heartbeating


def test_embedded_persists_on_its_path(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    with paceline.Client.embedded(path) as client:
        cur = client.create_curriculum("math", **SPEC)
        run = cur.start_run(run_id="r", heartbeat_interval=None)
        run.report(0, [1, 2], rewards_for([1, 2]), unserved="accept")
        state = cur.state()
    with paceline.Client.embedded(path) as client:
        assert client.curriculum("math").state() == state


def test_embedded_temporary_file_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    real = tempfile.mkdtemp

    def mkdtemp(**options: Any) -> str:
        made.append(real(**options))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    client = paceline.Client.embedded()
    client.create_curriculum("math", **SPEC)
    assert (Path(made[0]) / "paceline.db").exists()
    client.close()
    assert not Path(made[0]).exists()


def test_embedded_needs_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "paceline_server" else real(name, *a))
    with pytest.raises(ImportError, match="server package"):
        paceline.Client.embedded()
    with pytest.raises(ImportError, match="server package"):
        paceline.AsyncClient.embedded()


def test_batches_know_which_objectives_to_minimize(embedded: paceline.Client) -> None:
    cur = embedded.create_curriculum(
        "lengths", distributions=[{"name": "d", "size": 20}],
        objectives=["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
        sampler="uniform", weighting={"kind": "fixed", "weights": [0.5, 0.5]},
        batch_size=4)
    with cur.start_run(heartbeat_interval=None) as run:
        batch = run.next_batch(0)
    assert batch.minimize == ["len"]
    assert batch.bounds == {"acc": (0.0, 1.0), "len": (0.0, 100.0)}
    # len 30 of [0, 100], minimised: u = 0.7
    assert batch.scalarize([1.0, 30.0]) == pytest.approx(0.5 * 1.0 + 0.5 * 0.7)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_arrays_and_lists_give_the_same_state(tmp_path: Path, encoding: str) -> None:
    """numpy arrays and torch tensors go out as typed arrays, lists as lists, gzipped or
    not: the service folds the same numbers either way."""
    torch = pytest.importorskip("torch")
    states = []
    for form in ("lists", "numpy", "torch"):
        with paceline.Client.embedded(tmp_path / f"{form}-{encoding}.db",
                                      report_encoding=encoding) as client:
            client.compress_over = 512 if form == "numpy" else None
            cur = client.create_curriculum("math", **{**SPEC, "sampler": "dump_ucb"})
            run = cur.start_run(run_id="r", heartbeat_interval=None)
            for step in range(3):
                indices = run.next_batch(step).indices
                rewards = np.asarray(rewards_for(indices), dtype=np.float32) / 3
                advantages = rewards[..., 0] - rewards[..., 0].mean(axis=1, keepdims=True)
                sent = {"lists": (indices, rewards.tolist(), advantages.tolist()),
                        "numpy": (np.asarray(indices), rewards, advantages),
                        "torch": (torch.tensor(indices), torch.from_numpy(rewards),
                                  torch.from_numpy(advantages))}[form]
                run.report(step, sent[0], sent[1], advantages=sent[2])
            states.append((run.next_batch(3), cur.state().model_dump(exclude={"name"})))
    assert states[0] == states[1] == states[2]


KILLED_AFTER_ACK = """
import os, sys
import numpy as np
import paceline

client = paceline.Client.embedded(sys.argv[1])
cur = client.create_curriculum("math", distributions={"a": 10}, objectives=["acc"],
                               batch_size=4)
run = cur.start_run(run_id="r", heartbeat_interval=None)
acks = [run.report(step, run.next_batch(step).indices, np.ones((4, 2)) * step,
                   idempotency_key=f"r/{step}").seq for step in range(3)]
print(acks, flush=True)
os._exit(0)  # no close, no clean shutdown: what was acknowledged must be on disk
"""


def test_an_acknowledged_report_survives_the_process(tmp_path: Path) -> None:
    """Durability and idempotency of the in-process service: reports acknowledged by a
    process that then dies without closing anything are there when the file is opened
    again, and retrying one with its key is answered as the first time (replayed)."""
    path = tmp_path / "crash.db"
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_ACK, str(path)],
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[1, 2, 3]"
    with paceline.Client.embedded(path) as client:
        cur = client.curriculum("math")
        assert cur.info.seq == 3
        run = cur.start_run(run_id="r", heartbeat_interval=None)
        again = run.report(1, run.next_batch(1).indices, np.ones((4, 2)),
                           idempotency_key="r/1")
        assert (again.seq, again.replayed) == (2, True)
        assert cur.state().distribution("a").rollouts == 3 * 4 * 2


def test_embedded_coordinates_as_the_server_does(tmp_path: Path) -> None:
    """Settings name the coordinator as for a server: with a Redis URL the embedded
    service leases and caches acks through Redis (here a retried report is answered from
    the cache), without one it coordinates through the database alone."""
    from support import REDIS_URL

    with paceline.Client.embedded(tmp_path / "local.db") as client:
        assert type(client._transport.service.service.coordinator).__name__ \
            == "LocalCoordinator"
    prefix = f"paceline-embedded-{uuid.uuid4().hex[:8]}"
    with paceline.Client.embedded(tmp_path / "redis.db", redis_url=REDIS_URL,
                                  redis_prefix=prefix) as client:
        assert type(client._transport.service.service.coordinator).__name__ \
            == "RedisCoordinator"
        run = client.create_curriculum("math", **SPEC).start_run("r", heartbeat_interval=None)
        indices = run.next_batch(0).indices
        first = run.report(0, indices, rewards_for(indices), idempotency_key="k")
        again = run.report(0, indices, rewards_for(indices), idempotency_key="k")
        assert (first.seq, first.replayed, again.seq, again.replayed) == (1, False, 1, True)


def test_close_lets_calls_of_other_threads_finish_first() -> None:
    """Closing a temporary embedded client removed its database under calls still
    running in other threads ("disk I/O error", reported as UNAVAILABLE). Calls in
    flight now finish (and their reports are acknowledged); later ones are refused as
    the client being closed. Ten clients, each closed while four threads use it."""
    import threading

    seen: list[BaseException] = []
    acked: list[int] = []

    def report(cur: paceline.Curriculum, run_id: str) -> None:
        run = cur.start_run(run_id, heartbeat_interval=None)
        try:
            for step in range(10_000):
                batch = run.next_batch(step)
                acked.append(run.report(step, batch.indices,
                                        np.ones((len(batch.indices), 2, 2))).seq)
                cur.state()
        except BaseException as exc:  # what reached the thread, whatever it is
            seen.append(exc)

    for _ in range(10):
        client = paceline.Client.embedded()
        cur = client.create_curriculum("threads", **SPEC)
        threads = [threading.Thread(target=report, args=(cur, f"r{i}")) for i in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        client.close()
        for thread in threads:
            thread.join(30)
    assert acked and len(seen) == 40
    for exc in seen:
        closed = isinstance(exc, paceline.TransportError) and exc.code == "CLIENT_CLOSED"
        assert closed or (isinstance(exc, RuntimeError) and "closed" in str(exc)), repr(exc)


@pytest.mark.parametrize("case", ["no_directory", "schema_behind"])
def test_errors_at_open_are_the_clients(tmp_path: Path, case: str) -> None:
    """A database that cannot be opened (here a missing directory; also one another
    process holds locked past the lock timeout) or whose schema is behind raised the
    server's own exception classes out of `Client.embedded()`, which
    `except paceline.Unavailable` (or `paceline.PacelineError`) did not catch. They are
    now the client's, with the code and status the service gives them."""
    if case == "no_directory":
        open_ = lambda: paceline.Client.embedded(tmp_path / "missing" / "x.db")  # noqa: E731
        code = "UNAVAILABLE"
    else:
        open_ = lambda: paceline.Client.embedded(tmp_path / "x.db",  # noqa: E731
                                                 auto_migrate=False)
        code = "SCHEMA_OUTDATED"
    with pytest.raises(paceline.Unavailable) as raised:
        open_()
    assert (raised.value.code, raised.value.status) == (code, 503)
    with pytest.raises(paceline.Unavailable):
        paceline.AsyncClient.embedded(tmp_path / "missing" / "x.db")


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    """Keyword arguments are settings, and one that names none (a typo such as
    `snapshot_evry=10`, or an HTTP client's `token=`) was silently ignored, so the
    service ran with the default the caller meant to change. It is a TypeError now, as
    any unexpected keyword argument is, and nothing is left behind."""
    with pytest.raises(TypeError, match="snapshot_evry"):
        paceline.Client.embedded(tmp_path / "x.db", snapshot_evry=10)
    with pytest.raises(TypeError, match="token"):
        paceline.AsyncClient.embedded(tmp_path / "x.db", token="t")
    assert not (tmp_path / "x.db").exists()
    with paceline.Client.embedded(tmp_path / "x.db", snapshot_every=10) as client:
        assert client._transport.service.service.settings.snapshot_every == 10


@pytest.mark.parametrize("change", ["delete", "create"])
def test_list_curricula_while_others_change_it(embedded: paceline.Client,
                                               monkeypatch: pytest.MonkeyPatch,
                                               change: str) -> None:
    """`list_curricula` pages through the listing; a curriculum deleted ("b") or
    created ("0") before its position between two pages shifted every later offset, so
    it skipped one that existed throughout ("c") or returned one twice ("b")."""
    for name in "abcdefg":
        embedded.create_curriculum(name, **SPEC)
    monkeypatch.setattr("paceline.client.PAGE", 2)
    calls = []
    original = embedded._call

    def call(operation: Any) -> Any:
        calls.append(operation)
        answer = original(operation)
        if len(calls) == 1:
            if change == "delete":
                embedded.curriculum("b").delete()
            else:
                embedded.create_curriculum("0", **SPEC)
        return answer

    monkeypatch.setattr(embedded, "_call", call)
    # The first page (a, b) was read before the change; "0" sorts before it.
    assert [c.name for c in embedded.list_curricula()] == list("abcdefg")
    assert len(calls) > 1


@pytest.mark.parametrize("change", ["attach", "older"])
def test_runs_are_read_page_by_page_while_others_attach(embedded: paceline.Client,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        change: str) -> None:
    """`cur.runs()` reads every page of the runs listing (the service answers at most
    `limit` runs per call), each from where the last one ended: a run attached between
    two pages (at the end of the listing, or before the pages read, as an import of an
    older run is) neither hides one that existed throughout nor repeats one."""
    from datetime import UTC, datetime, timedelta

    from paceline import _operations as op

    cur = embedded.create_curriculum("math", **SPEC)
    store = embedded._transport.service.service.store
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    ids = [f"r{i}" for i in range(6)]
    for i, run_id in enumerate(ids):
        store.add_run("math", run_id, {}, t0 + timedelta(seconds=i))
    monkeypatch.setattr("paceline.client.PAGE", 2)
    pages: list[tuple[int, int, str | None]] = []
    original = embedded._call

    def call(operation: Any) -> Any:
        answer = original(operation)
        if isinstance(operation, op.ListRuns):
            pages.append((operation.limit, operation.offset, operation.page_token))
            if len(pages) == 1:
                seconds = 60 if change == "attach" else -60
                store.add_run("math", "new", {}, t0 + timedelta(seconds=seconds))
        return answer

    monkeypatch.setattr(embedded, "_call", call)
    listed = [r.run_id for r in cur.runs()]
    assert listed == ids + (["new"] if change == "attach" else [])
    # Each page after the first continues from the token of the one before.
    assert len(pages) == (4 if change == "attach" else 3)
    assert all((limit, offset) == (2, 0) for limit, offset, _ in pages)
    assert pages[0][2] is None and all(token for *_, token in pages[1:])

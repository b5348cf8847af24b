"""The client contract over both transports: one real `paceline-server serve` process
with REST and gRPC, the same tests parametrized over `http://` and `grpc://` URLs, with
faults injected between client and service (refused, lost answers, connection failures).
Every report must be applied exactly once, and both transports must give equal objects."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from grpc_support import FAST, FaultInjector, GrpcFaults, client_with_faults, refuse

import paceline
from paceline import _transport
from support import CLIENT_SPEC as SPEC
from support import ServiceProcess, connect_error, free_port, lost, start_service

pytestmark = pytest.mark.slow
_names = itertools.count()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with start_service(tmp_path_factory.mktemp("grpc") / "paceline.db", grpc=True,
                       PACELINE_LOG_LEVEL="warning") as process:
        yield process


@pytest.fixture(params=["http", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def wired(service: ServiceProcess, transport: str
          ) -> Iterator[tuple[paceline.Client, FaultInjector | GrpcFaults]]:
    client, faults = client_with_faults(transport, service.endpoint(transport), timeout=10)
    with client:
        yield client, faults


@pytest.fixture
def client(wired: tuple[paceline.Client, FaultInjector | GrpcFaults]) -> paceline.Client:
    return wired[0]


@pytest.fixture
def faults(wired: tuple[paceline.Client, FaultInjector | GrpcFaults]) -> FaultInjector | GrpcFaults:
    return wired[1]


def fresh(client: paceline.Client, **change: Any) -> paceline.Curriculum:
    """A new curriculum (the service process is shared by the module's tests)."""
    return client.create_curriculum(f"math-{next(_names)}", **{**SPEC, **change})


@pytest.fixture
def run(client: paceline.Client) -> paceline.Run:
    return fresh(client).start_run(run_id="run-1", heartbeat_interval=None)


def rewards_for(indices: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 2, (len(indices), 4)),
                     rng.integers(0, 100, (len(indices), 4))], axis=-1).astype(float)


def report(run: paceline.Run, step: int) -> paceline.ReportAck:
    indices = run.next_batch(step).indices
    return run.report(step, indices, rewards_for(indices, step))


# ------------------------------------------------------------------ the cycle
def test_full_cycle(client: paceline.Client) -> None:
    cur = fresh(client)
    assert cur.objectives == ["acc", "len"]
    assert cur.distributions == ["easy", "hard"]
    assert cur.spec["batch_size"] == 8  # an int, not 8.0
    with cur.start_run(run_id="run-1", metadata={"gpu": "none", "n": 1},
                       heartbeat_interval=0.05) as run:
        assert run.info.metadata == {"gpu": "none", "n": 1}
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
        assert report(run, 3).seq == 2
    state = cur.state()
    assert state.seq == 2
    assert sum(d.sampled for d in state.distributions) == 16
    assert state.weight_history[0].weights == {"acc": 0.75, "len": 0.25}
    assert cur.refresh().seq == 2
    assert [r.run_id for r in cur.runs()] == ["run-1"]
    assert cur.name in [c.name for c in client.list_curricula()]


def test_report_with_next_step_carries_the_batch(client: paceline.Client) -> None:
    cur = fresh(client, objectives=[{"name": "acc"},
                                    {"name": "len", "direction": "minimize"}])
    run = cur.start_run(run_id="r", heartbeat_interval=None)
    indices = run.next_batch(0).indices
    ack = run.report(0, indices, rewards_for(indices), next_step=1)
    assert (ack.seq, ack.replayed) == (1, False)
    assert ack.batch is not None
    assert (ack.batch.step, ack.batch.seq, ack.batch.minimize) == (1, 1, ["len"])
    assert ack.batch == run.next_batch(1)  # stored: the separate call returns it too
    sized = run.report(1, ack.batch.indices, rewards_for(ack.batch.indices, 1),
                       next_step=2, next_size=3)
    assert sized.batch is not None and len(sized.batch.indices) == 3
    assert run.report(2, [1], [[[1.0, 1.0]]], unserved="accept").batch is None  # not asked
    with pytest.raises(paceline.InvalidInput) as too_big:
        run.report(3, [1], [[[1.0, 1.0]]], next_step=4, next_size=101)
    assert (too_big.value.code, too_big.value.status) == ("INVALID_REQUEST", 422)
    with pytest.raises(paceline.Conflict):  # step 2 was served with size 3
        run.report(3, [1], [[[1.0, 1.0]]], next_step=2, next_size=8)
    assert cur.state().seq == 3  # neither refused report was applied


def test_both_transports_give_equal_objects(service: ServiceProcess) -> None:
    """One curriculum driven half over REST, half over gRPC: every read is equal."""
    with paceline.Client(service.http) as http, paceline.Client(service.grpc) as grpc:
        name = f"parity-{next(_names)}"
        cur = {"http": http.create_curriculum(name, **SPEC),
               "grpc": grpc.curriculum(name)}
        runs = {t: c.start_run(run_id="r", metadata={"k": [1, 2]}, heartbeat_interval=None)
                for t, c in cur.items()}
        for step in range(4):
            transport = "http" if step % 2 else "grpc"
            batch = runs[transport].next_batch(step)
            assert batch == runs["grpc" if transport == "http" else "http"].next_batch(step)
            rewards = rewards_for(batch.indices, step)
            runs[transport].report(step, batch.indices, rewards,
                                   eval_objectives={"acc": 0.5, "len": 30.0})
        assert cur["http"].refresh() == cur["grpc"].refresh()
        assert cur["http"].state() == cur["grpc"].state()
        assert runs["http"].refresh() == runs["grpc"].refresh()
        assert cur["http"].runs() == cur["grpc"].runs()
        assert http.list_curricula() == grpc.list_curricula()


def test_runs_are_read_page_by_page(client: paceline.Client,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`cur.runs()` reads every page of the runs listing (GET .../runs or ListRuns), each
    asked for with the page token of the one before: a run attached between two pages
    is listed once, after those that existed throughout, none of them skipped or
    repeated."""
    from paceline import _operations as op

    monkeypatch.setattr("paceline.client.PAGE", 2)
    cur = fresh(client)
    ids = [f"r{i}" for i in range(5)]
    for run_id in ids:
        cur.start_run(run_id, heartbeat_interval=None)
    pages: list[tuple[int, int, str | None]] = []
    original = client._call

    def call(operation: Any) -> Any:
        answer = original(operation)
        if isinstance(operation, op.ListRuns):
            pages.append((operation.limit, operation.offset, operation.page_token))
            if len(pages) == 1:
                cur.start_run("late", heartbeat_interval=None)
        return answer

    monkeypatch.setattr(client, "_call", call)
    assert [r.run_id for r in cur.runs()] == [*ids, "late"]
    assert [(limit, offset) for limit, offset, _ in pages] == [(2, 0)] * 3
    assert pages[0][2] is None and all(token for *_, token in pages[1:])


def test_curricula_are_read_page_by_page_while_others_change(
        client: paceline.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """`list_curricula` follows the page tokens over either transport: a curriculum
    deleted and one created before the position between two pages (which shifted every
    later offset) make it neither skip nor repeat one that exists throughout."""
    from paceline import _operations as op

    prefix = f"page-{next(_names)}-"
    for letter in "abcdef":
        client.create_curriculum(prefix + letter, **SPEC)
    monkeypatch.setattr("paceline.client.PAGE", 2)
    original, changed = client._call, []

    def call(operation: Any) -> Any:
        answer = original(operation)
        names = [c["name"] for c in answer["curricula"]] \
            if isinstance(operation, op.ListCurricula) else []
        if prefix + "b" in names and not changed:
            client.curriculum(prefix + "a").delete()
            client.create_curriculum(prefix + "0", **SPEC)
            changed.append(True)
        return answer

    monkeypatch.setattr(client, "_call", call)
    listed = [c.name for c in client.list_curricula() if c.name.startswith(prefix)]
    assert changed and listed == [prefix + letter for letter in "abcdef"]


def test_same_reports_give_the_same_state_over_either_transport(service: ServiceProcess) -> None:
    """Packed floats carry exactly what JSON carries: the learning state is identical."""
    states = []
    for url in (service.http, service.grpc):
        with paceline.Client(url) as client:
            cur = client.create_curriculum(f"det-{next(_names)}", **{
                **SPEC, "sampler": "dump_ucb"})
            run = cur.start_run(run_id="r", heartbeat_interval=None)
            for step in range(5):
                indices = run.next_batch(step).indices
                rewards = rewards_for(indices, step).astype(np.float32) / 3
                run.report(step, indices, rewards, grad_products=[[1.0, 0.1], [0.1, 1.0]])
            states.append((run.next_batch(5), cur.state().model_dump(exclude={"name"})))
    assert states[0] == states[1]


def test_ragged_groups_and_rewards_by_objective(client: paceline.Client) -> None:
    run = fresh(client).start_run(run_id="r", heartbeat_interval=None)
    indices = run.next_batch(0).indices
    rewards = rewards_for(indices)
    ack = run.report(0, indices, {"len": rewards[..., 1].tolist(), "acc": rewards[..., 0]})
    assert ack.seq == 1
    flat = [indices[0]] * 3 + [indices[1]] * 2
    ack = run.report(1, flat, [[1.0, 5.0]] * 5, group_ids=[0, 0, 0, 1, 1],
                     advantages=[0.1, -0.1, 0.0, 0.2, -0.2], unserved="accept")
    assert ack.seq == 2
    with pytest.raises(paceline.InvalidInput, match="missing"):
        run.report(9, [1], {"acc": [[1.0]]})


# ------------------------------------------------------------------ errors
def test_exist_ok_and_conflicts(client: paceline.Client) -> None:
    first = fresh(client)
    again = client.create_curriculum(first.name, **SPEC, exist_ok=True)
    assert again.info == first.info
    with pytest.raises(paceline.Conflict) as info:
        client.create_curriculum(first.name, **SPEC)
    assert (info.value.code, info.value.status) == ("CURRICULUM_EXISTS", 409)
    assert info.value.details == {"name": first.name, "same_spec": True}
    with pytest.raises(paceline.Conflict, match="different spec"):
        client.create_curriculum(first.name, **{**SPEC, "seed": 2}, exist_ok=True)


@pytest.mark.parametrize(("change", "code"), [
    ({"sampler": "nope"}, "UNKNOWN_STRATEGY"),
    ({"sampler": {"kind": "uniform", "x": 1}}, "INVALID_PARAMS"),
    ({"objectives": []}, "INVALID_SPEC"),
    ({"batch_size": 1000}, "INVALID_SPEC"),
])
def test_bad_specs(client: paceline.Client, change: dict[str, Any], code: str) -> None:
    with pytest.raises(paceline.InvalidInput) as info:
        fresh(client, **change)
    assert (info.value.code, info.value.status) == (code, 422)


def test_errors_are_mapped(client: paceline.Client, faults: FaultInjector | GrpcFaults) -> None:
    with pytest.raises(paceline.NotFound) as missing:
        client.curriculum("nope")
    assert (missing.value.code, missing.value.status) == ("CURRICULUM_NOT_FOUND", 404)
    assert missing.value.details == {"curriculum": "nope"}
    cur = fresh(client)
    run = cur.start_run(heartbeat_interval=None)
    batch = run.next_batch(0)
    with pytest.raises(paceline.InvalidInput) as out_of_range:
        run.report(0, indices=[500], rewards=[[[1.0, 1.0]]])
    assert (out_of_range.value.code, out_of_range.value.status) == ("INDEX_OUT_OF_RANGE", 422)
    assert faults.plan.count("Report") == 1  # client errors are not retried
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
    with pytest.raises(paceline.InvalidInput) as negative:
        run.next_batch(-1)
    assert (negative.value.code, negative.value.status) == ("INVALID_REQUEST", 422)
    ghost = paceline.Run(cur, run.info.model_copy(update={"run_id": "ghost"}), None)
    with pytest.raises(paceline.NotFound) as no_run:
        ghost.next_batch(0)
    assert no_run.value.code == "RUN_NOT_FOUND"
    run.report(1, [1], [[[1.0, 1.0]]], idempotency_key="same-key", unserved="accept")
    with pytest.raises(paceline.Conflict) as reused:
        run.report(1, [1], [[[0.0, 1.0]]], idempotency_key="same-key", unserved="accept")
    assert reused.value.code == "IDEMPOTENCY_CONFLICT"
    assert cur.state().seq == 1  # only the first same-key report was applied


def test_non_finite_numbers_and_empty_groups_alike(client: paceline.Client) -> None:
    """NaN in a spec or run metadata: the same InvalidInput over HTTP (whose JSON
    encoder raised a bare ValueError) as over gRPC (which sent it on); a group without
    rollouts: INVALID_REPORT (it was a 500 INTERNAL), and the curriculum untouched."""
    with pytest.raises(paceline.InvalidInput) as nan:
        fresh(client, sampler={"kind": "dump_ucb", "tau": float("nan")})
    assert (nan.value.code, nan.value.details) == ("INVALID_PARAMS", {"field": "sampler.tau"})
    with pytest.raises(paceline.InvalidInput) as bound:
        fresh(client, objectives=[{"name": "acc", "bounds": [0, float("inf")]}, "len"])
    assert (bound.value.code, bound.value.details) == (
        "INVALID_SPEC", {"field": "objectives[0].bounds[1]"})
    cur = fresh(client)
    with pytest.raises(paceline.InvalidInput) as metadata:
        cur.start_run("r", metadata={"lr": float("inf")})
    assert metadata.value.code == "INVALID_REQUEST"
    assert cur.runs() == []
    run = cur.start_run("r", heartbeat_interval=None)
    batch = run.next_batch(0)
    with pytest.raises(paceline.InvalidInput) as empty:
        run.report(0, batch.indices, np.zeros((len(batch.indices), 0, 2)))
    assert (empty.value.code, empty.value.status) == ("INVALID_REPORT", 422)
    assert cur.state().seq == 0
    assert not run.report(0, batch.indices, np.ones((len(batch.indices), 2, 2))).replayed


def test_odd_integer_arrays_are_refused_alike(client: paceline.Client) -> None:
    """What the service refuses over HTTP the gRPC codec refuses too, with the same code:
    `dropped` given as floats (gRPC turned them into integers and applied the report) and
    uint64 indices beyond int64 (gRPC wrapped them to a negative index: another code)."""
    run = fresh(client).start_run("r", heartbeat_interval=None)
    indices = run.next_batch(0).indices
    rewards = np.ones((len(indices), 2, 2))
    with pytest.raises(paceline.InvalidInput) as floats:
        run.report(0, indices, rewards, dropped=[float(indices[0])])
    assert floats.value.code == "INVALID_REPORT"
    with pytest.raises(paceline.InvalidInput) as huge:
        run.report(0, np.array([2**63 + 3], dtype=np.uint64), rewards[:1])
    assert huge.value.code == "INVALID_REPORT"
    assert run.curriculum.state().seq == 0
    assert run.report(0, indices, rewards, dropped=np.array(indices[:1])).groups_dropped == 1


def test_integers_beyond_64_bits_are_invalid_input(client: paceline.Client) -> None:
    """A step or size protobuf cannot carry: InvalidInput over gRPC as over HTTP (gRPC
    raised protobuf's bare ValueError, outside the client's errors)."""
    run = fresh(client).start_run("r", heartbeat_interval=None)
    indices = run.next_batch(0).indices
    for call in (lambda: run.next_batch(2**70), lambda: run.next_batch(1, size=2**70),
                 lambda: run.report(0, indices, np.ones((len(indices), 2, 2)),
                                    next_step=2**70)):
        with pytest.raises(paceline.InvalidInput) as info:
            call()
        assert info.value.code == "INVALID_REQUEST"
    with pytest.raises(paceline.InvalidInput):
        run.report(-2**70, indices, np.ones((len(indices), 2, 2)))
    assert run.curriculum.state().seq == 0


def test_any_text_in_run_ids_and_keys(client: paceline.Client) -> None:
    """A run id in another script makes a default key HTTP cannot put in a header (it
    raised UnicodeEncodeError before sending); a key with spaces around it would lose them
    there. Both travel in the body; a key no transport can carry is refused alike."""
    cur = fresh(client)
    run = cur.start_run("прогон-1", heartbeat_interval=None)
    batch = run.next_batch(0)
    sent = (batch.indices, np.ones((len(batch.indices), 2, 2)))
    assert not run.report(0, *sent).replayed
    assert run.report(0, *sent, idempotency_key=" k ").replayed
    run.next_batch(1)
    assert not run.report(1, run.next_batch(1).indices, np.ones((8, 2, 2)),
                          idempotency_key="ключ").replayed
    with pytest.raises(paceline.Conflict) as reused:  # the same key, read back intact
        run.report(2, [1], np.ones((1, 2, 2)), idempotency_key="ключ", unserved="accept")
    assert reused.value.code == "IDEMPOTENCY_CONFLICT"
    for key in ("a\x00b", "a\ud800"):
        with pytest.raises(paceline.InvalidInput) as refused:
            run.report(2, [1], np.ones((1, 2, 2)), idempotency_key=key, unserved="accept")
        assert refused.value.code == "INVALID_REQUEST"
    assert cur.state().seq == 2


# ------------------------------------------------------------------ retries
def test_refused_then_success_applies_the_report_once(
        run: paceline.Run, faults: FaultInjector | GrpcFaults) -> None:
    faults.plan.inject(refuse("Report", retry_after="0"))
    ack = report(run, 0)
    assert (ack.seq, ack.replayed) == (1, False)
    assert faults.plan.count("Report") == 2
    assert run.curriculum.state().seq == 1


def test_lost_answers_are_replayed_not_reapplied(
        run: paceline.Run, faults: FaultInjector | GrpcFaults) -> None:
    faults.plan.inject(lost("Report"), lost("Report"))
    ack = report(run, 0)
    assert (ack.seq, ack.replayed) == (1, True)
    assert faults.plan.count("Report") == 3
    assert report(run, 1).seq == 2
    state = run.curriculum.state()
    assert state.seq == 2
    assert sum(d.sampled for d in state.distributions) == 16


def test_lost_answer_of_a_report_with_next_step(
        run: paceline.Run, faults: FaultInjector | GrpcFaults) -> None:
    indices = run.next_batch(0).indices
    faults.plan.inject(lost("Report"))
    ack = run.report(0, indices, rewards_for(indices), next_step=1)
    assert (ack.seq, ack.replayed) == (1, True)
    assert ack.batch is not None and ack.batch == run.next_batch(1)
    assert run.curriculum.state().seq == 1


def test_connection_error_then_success(run: paceline.Run,
                                       faults: FaultInjector | GrpcFaults) -> None:
    faults.plan.inject(connect_error("NextBatch"), connect_error("NextBatch"))
    assert len(run.next_batch(0).indices) == 8
    assert faults.plan.count("NextBatch") == 3


def test_retry_after_is_honoured(run: paceline.Run, faults: FaultInjector | GrpcFaults,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(_transport, "_sleep", lambda seconds, *_: slept.append(seconds))
    faults.plan.inject(refuse("NextBatch", retry_after="2", throttle=True),
                       refuse("NextBatch"))
    run.next_batch(0)
    assert slept[0] == 2.0
    assert 0.0 <= slept[1] <= 0.02  # no retry-after: jittered backoff, second retry


def test_retry_after_of_a_proxy_without_a_paceline_error() -> None:
    """A proxy's UNAVAILABLE with a retry-after and no Paceline error is waited out as
    named, as HTTP waits out a proxy's 503 with Retry-After (gRPC used the backoff)."""
    import grpc

    from paceline._grpc_transport import Failure, after_failure

    policy = paceline.RetryPolicy(backoff_initial=0.01, retry_after_max=5.0)
    proxy = Failure(grpc.StatusCode.UNAVAILABLE, "upstream overloaded", None, 3.0)
    assert after_failure(policy.start(), proxy) == 3.0
    assert _transport.RetryState(policy).after_response(
        httpx.Response(503, headers={"Retry-After": "3"}, text="overloaded")) == 3.0
    huge = Failure(grpc.StatusCode.UNAVAILABLE, "upstream overloaded", None, 3600.0)
    assert after_failure(policy.start(), huge) == 5.0


def test_retries_run_out(run: paceline.Run, faults: FaultInjector | GrpcFaults) -> None:
    faults.plan.inject(*[refuse("GetState", retry_after="0")] * 4)
    with pytest.raises(paceline.Unavailable) as info:
        run.curriculum.state()
    assert (info.value.code, info.value.status) == ("UNAVAILABLE", 503)
    assert faults.plan.count("GetState") == 4


def test_heartbeats_are_not_retried(run: paceline.Run,
                                    faults: FaultInjector | GrpcFaults) -> None:
    faults.plan.inject(refuse("Heartbeat", retry_after="0"))
    with pytest.raises(paceline.Unavailable):
        run.heartbeat()
    assert faults.plan.count("Heartbeat") == 1


def test_lost_create_and_delete_answers(client: paceline.Client,
                                        faults: FaultInjector | GrpcFaults) -> None:
    name = f"lost-{next(_names)}"
    faults.plan.inject(lost("CreateCurriculum"))
    cur = client.create_curriculum(name, **SPEC)  # the retry sees a conflict, same spec
    assert cur.name == name
    assert faults.plan.count("CreateCurriculum") == 2
    faults.plan.inject(lost("DeleteCurriculum"))
    cur.delete()  # the retry sees not found: the lost attempt deleted it
    with pytest.raises(paceline.NotFound):
        client.curriculum(name)


def test_resuming_a_run(client: paceline.Client) -> None:
    cur = fresh(client)
    first = cur.start_run(run_id="trainer-0", heartbeat_interval=None)
    batch = first.next_batch(5)
    again = cur.start_run(run_id="trainer-0", heartbeat_interval=None)
    assert again.next_batch(5) == batch
    assert [r.run_id for r in cur.runs()] == ["trainer-0"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_no_service(scheme: str) -> None:
    with paceline.Client(f"{scheme}://127.0.0.1:{free_port()}", retries=FAST) as client, \
            pytest.raises(paceline.TransportError) as info:
        client.list_curricula()
    assert info.value.code == "CONNECTION_ERROR"
    assert info.value.details == {"attempts": 4}


# ------------------------------------------------------------------ auth, asyncio
def test_authentication(tmp_path: Path) -> None:
    tokens = '{"reader": "read", "writer": "write"}'
    with start_service(tmp_path / "auth.db", grpc=True, PACELINE_LOG_LEVEL="warning",
                       PACELINE_API_TOKENS=tokens) as service:
        for url in (service.http, service.grpc):
            with paceline.Client(url, retries=FAST) as anonymous, \
                    pytest.raises(paceline.AuthError) as missing:
                anonymous.list_curricula()
            assert (missing.value.code, missing.value.status) == ("UNAUTHENTICATED", 401)
            with paceline.Client(url, token="wrong", retries=FAST) as wrong, \
                    pytest.raises(paceline.AuthError, match="unknown"):
                wrong.list_curricula()
            with paceline.Client(url, token="reader", retries=FAST) as reader:
                assert [c.name for c in reader.list_curricula()] in ([], ["math"])
                with pytest.raises(paceline.AuthError) as denied:
                    reader.create_curriculum("math", **SPEC)
                assert (denied.value.code, denied.value.status) == ("FORBIDDEN", 403)
            with paceline.Client(url, token="writer", retries=FAST) as writer:
                assert writer.create_curriculum("math", **SPEC, exist_ok=True).name == "math"
            with paceline.Client(url, token="reader", retries=FAST) as reader:
                assert reader.curriculum("math").state().seq == 0


def test_async_client(service: ServiceProcess, transport: str) -> None:
    async def body() -> None:
        async with paceline.AsyncClient(service.endpoint(transport), retries=FAST) as client:
            cur = await client.create_curriculum(f"async-{next(_names)}", **SPEC)
            async with await cur.start_run(run_id="r", heartbeat_interval=0.05) as run:
                for step in range(3):
                    batch = await run.next_batch(step)
                    ack = await run.report(step, batch.indices,
                                           rewards_for(batch.indices, step))
                    assert ack.seq == step + 1
                await asyncio.sleep(0.12)
                assert run.heartbeating
                assert (await run.refresh()).last_heartbeat > run.info.created_at
            state = await cur.state()
            assert state.seq == 3
            with pytest.raises(paceline.NotFound):
                await client.curriculum("nope")

    asyncio.run(asyncio.wait_for(body(), timeout=60))

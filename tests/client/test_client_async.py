"""AsyncClient: the full cycle on the embedded service, the heartbeat task, and retries
through a fault-injecting transport in front of the real ASGI app (in this process).
Plain `asyncio.run`, no pytest plugin."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from client_support import asgi_service

import paceline
from paceline.models import CurriculumInfo
from support import CLIENT_SPEC as SPEC
from support import AsyncFaultInjector, lost, status, threaded_service

FAST = paceline.RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05)


def run_async(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=60))


def rewards_for(indices: list[int]) -> list[Any]:
    return [[[float((i + j) % 2), 10.0 * j] for j in range(4)] for i in indices]


def test_full_cycle(tmp_path: Path) -> None:
    async def body() -> None:
        async with paceline.AsyncClient.embedded(tmp_path / "a.db") as client:
            cur = await client.create_curriculum("math", **SPEC)
            same = await client.create_curriculum("math", **SPEC, exist_ok=True)
            assert same.info == cur.info
            async with await cur.start_run(run_id="r", heartbeat_interval=None) as run:
                for step in range(3):
                    batch = await run.next_batch(step)
                    assert batch.reward_weights == {"acc": 0.75, "len": 0.25}
                    rewards = np.asarray(rewards_for(batch.indices))
                    by_objective = {"acc": rewards[..., 0], "len": rewards[..., 1]}
                    ack = await run.report(step, batch.indices, by_objective,
                                           advantages=np.zeros((8, 4)))
                    assert (ack.seq, ack.replayed) == (step + 1, False)
                ack = await run.report(3, [1, 1, 2], rewards=[[1, 1], [0, 2], [1, 3]],
                                       group_ids=[0, 0, 1], unserved="accept")
                assert ack.seq == 4
            state = await cur.state()
            assert state.seq == 4
            assert sum(d.rollouts for d in state.distributions) == 3 * 8 * 4 + 3
            assert [c.name for c in await client.list_curricula()] == ["math"]
            assert (await client.curriculum("math")).info.seq == 4
            assert [r.run_id for r in await cur.runs()] == ["r"]
            with pytest.raises(paceline.NotFound) as info:
                await client.curriculum("nope")
            assert info.value.code == "CURRICULUM_NOT_FOUND"
            with pytest.raises(paceline.InvalidInput):
                await run.report(9, [500], [[[1.0, 1.0]]])
            await cur.delete()
            assert await client.list_curricula() == []

    run_async(body)


def test_report_with_next_step(tmp_path: Path) -> None:
    async def body() -> None:
        async with paceline.AsyncClient.embedded(tmp_path / "a.db") as client:
            cur = await client.create_curriculum("math", **SPEC)
            run = await cur.start_run(run_id="r", heartbeat_interval=None)
            batch = await run.next_batch(0)
            for step in range(3):
                ack = await run.report(step, batch.indices, rewards_for(batch.indices),
                                       next_step=step + 1)
                assert ack.batch is not None
                assert (ack.seq, ack.batch.step, ack.batch.seq) == (step + 1, step + 1,
                                                                    step + 1)
                assert ack.batch == await run.next_batch(step + 1)
                batch = ack.batch
            sized = await run.report(3, batch.indices[:1], [[[1.0, 1.0]]], next_step=4,
                                     next_size=2)
            assert sized.batch is not None and len(sized.batch.indices) == 2

    run_async(body)


def test_heartbeat_task(tmp_path: Path) -> None:
    async def body() -> None:
        client = paceline.AsyncClient.embedded(tmp_path / "h.db")
        cur = await client.create_curriculum("math", **SPEC)
        run = await cur.start_run(heartbeat_interval=0.05)
        first = run.info.last_heartbeat
        assert run.heartbeating
        for _ in range(200):
            if (await run.refresh()).last_heartbeat > first:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("no heartbeat arrived")
        other = await cur.start_run(heartbeat_interval=0.05)
        await run.aclose()
        assert not run.heartbeating
        await client.aclose()  # stops the remaining heartbeat tasks
        assert not other.heartbeating

    run_async(body)


@pytest.mark.parametrize("transport", ["embedded", "http"])
def test_runs_are_read_page_by_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    transport: str) -> None:
    """`await cur.runs()` reads every page of the listing, as the sync client does."""
    from paceline import _operations as op

    monkeypatch.setattr("paceline.client.PAGE", 2)

    async def body() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if transport == "embedded":
                client = paceline.AsyncClient.embedded(tmp_path / "e.db")
            else:
                app = await stack.enter_async_context(asgi_service(tmp_path / "h.db"))
                client = paceline.AsyncClient("http://paceline.test", transport=app)
            await stack.enter_async_context(client)
            cur = await client.create_curriculum("math", **SPEC)
            ids = [f"r{i}" for i in range(5)]
            for run_id in ids:
                await cur.start_run(run_id=run_id, heartbeat_interval=None)
            pages: list[tuple[int, int, str | None]] = []
            original = client._call

            async def call(operation: Any) -> Any:
                answer = await original(operation)
                if isinstance(operation, op.ListRuns):
                    pages.append((operation.limit, operation.offset, operation.page_token))
                    if len(pages) == 1:  # attached between two pages: listed once, last
                        await cur.start_run(run_id="late", heartbeat_interval=None)
                return answer

            monkeypatch.setattr(client, "_call", call)
            assert [r.run_id for r in await cur.runs()] == [*ids, "late"]
            assert [(limit, offset) for limit, offset, _ in pages] == [(2, 0)] * 3
            assert pages[0][2] is None and all(token for *_, token in pages[1:])

    run_async(body)


def test_retries_apply_a_report_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with asgi_service(tmp_path / "r.db") as app, \
                paceline.AsyncClient("http://paceline.test", retries=FAST,
                                     transport=(faults := AsyncFaultInjector(app))) as client:
            cur = await client.create_curriculum("math", **SPEC)
            run = await cur.start_run(heartbeat_interval=None)
            faults.inject(status("/batches", 503, retry_after="0"))
            batch = await run.next_batch(0)
            assert faults.count("/batches") == 2
            faults.inject(lost("/reports", 503), status("/reports", 502))
            ack = await run.report(0, batch.indices, rewards_for(batch.indices))
            assert (ack.seq, ack.replayed) == (1, True)
            assert faults.count("/reports") == 3
            assert (await cur.state()).seq == 1
            faults.inject(*[status("/state", 504)] * 4)
            with pytest.raises(paceline.Unavailable):
                await cur.state()

    run_async(body)


def test_a_cancelled_task_leaving_async_with_closes_everything(tmp_path: Path) -> None:
    """An orchestrator cancels the task that holds a client and three heartbeating runs
    (a timeout, a TaskGroup): leaving `async with` stopped only the first run's heartbeat
    (the others went on beating for good) and never closed the client."""
    held: dict[str, Any] = {}
    training = asyncio.Event()

    async def job() -> None:
        async with paceline.AsyncClient.embedded(tmp_path / "c.db") as client:
            held["client"] = client
            cur = await client.create_curriculum("job", **SPEC)
            held["runs"] = [await cur.start_run(heartbeat_interval=0.02) for _ in range(3)]
            training.set()
            await asyncio.sleep(3600)  # training

    async def orchestrator() -> None:
        # The timeout expires once the job trains, however long its start took (a fixed
        # 0.5 s expired during the start on a loaded machine).
        async def expire(deadline: asyncio.Timeout) -> None:
            await training.wait()
            await asyncio.sleep(0.05)  # a few heartbeats
            deadline.reschedule(asyncio.get_running_loop().time())

        async def bounded_job() -> None:
            async with asyncio.timeout(None) as deadline:
                held["expiry"] = asyncio.ensure_future(expire(deadline))
                await job()

        with pytest.raises(TimeoutError):
            await bounded_job()
        await held["expiry"]
        client, runs = held["client"], held["runs"]
        assert client._closed and not client._transport._on_close.alive  # service closed
        assert not any(run.heartbeating for run in runs)
        beating = [t.get_name() for t in asyncio.all_tasks()
                   if t.get_name().startswith("paceline-heartbeat")]
        assert not beating

    run_async(orchestrator)


def test_a_run_attached_while_the_client_closes_does_not_heartbeat(tmp_path: Path) -> None:
    """`aclose` while `start_run` awaited its attach: the run was added to the client
    after close had stopped every heartbeat, so its heartbeat task beat a closed client
    for good (logging a failure)."""
    async def body() -> None:
        client = paceline.AsyncClient.embedded(tmp_path / "c.db")
        cur = await client.create_curriculum("math", **SPEC)
        starting = asyncio.ensure_future(cur.start_run(heartbeat_interval=0.01))
        await asyncio.sleep(0)  # the attach is in flight (in a worker thread)
        await client.aclose()
        run = await starting
        await asyncio.sleep(0.05)
        assert not run.heartbeating
        assert not [t for t in asyncio.all_tasks()
                    if t.get_name().startswith("paceline-heartbeat")]

    run_async(body)


def test_a_run_attached_while_the_sync_client_closes_does_not_heartbeat() -> None:
    """The sync twin: a close from another thread while `start_run` waited for its
    attach left the run's heartbeat thread beating a closed client."""
    client: paceline.Client

    def answer(request: httpx.Request) -> httpx.Response:
        client.close()  # another thread closes the client while the attach is answered
        now = "2025-01-01T00:00:00Z"
        return httpx.Response(201, json={"run_id": "r", "curriculum": "math",
                                         "created_at": now, "last_heartbeat": now,
                                         "stale": False, "metadata": {}})

    client = paceline.Client("http://x", transport=httpx.MockTransport(answer))
    cur = paceline.Curriculum(client, CurriculumInfo.model_construct(name="math"))
    run = cur.start_run(run_id="r", heartbeat_interval=0.01)
    time.sleep(0.05)
    assert not run.heartbeating


def test_an_async_client_used_in_a_second_event_loop_says_so(tmp_path: Path) -> None:
    """A second `asyncio.run` with the same client over HTTP: its pooled connection
    belonged to the first, closed loop, and the call failed deep in the network stack
    with `RuntimeError: Event loop is closed`. It is refused with a clear error."""
    with threaded_service(f"sqlite:///{tmp_path / 'l.db'}", api_tokens={}) as url:
        client = paceline.AsyncClient(url, retries=FAST)

        async def first() -> None:
            await client.create_curriculum("math", **SPEC)

        async def second() -> None:
            with pytest.raises(RuntimeError, match=r"another event loop.*which is closed"):
                await client.curriculum("math")
            await client.aclose()

        run_async(first)
        run_async(second)

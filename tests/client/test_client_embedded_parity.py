"""The embedded mode calls the service's application layer without HTTP, and must still
behave as the service over HTTP: the same exception, code and status for the same bad
input (messages too, where the service writes them), the same state afterwards, and no
web framework loaded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import paceline
from paceline.errors import error_class
from support import CLIENT_SPEC as SPEC
from support import threaded_service

#: Codes whose HTTP message is written by the web framework's schema check, not by the
#: service; the embedded mode says the same thing in its own words.
SCHEMA_CODES = {"INVALID_REQUEST"}


def rewards(n: int, value: float = 1.0) -> np.ndarray:
    return np.full((n, 2, 2), value)


def served(client: paceline.Client, name: str, run_id: str = "r") -> tuple[paceline.Run,
                                                                          list[int]]:
    """A curriculum `name` with run `run_id` whose step 0 was served."""
    cur = client.create_curriculum(name, **SPEC, exist_ok=True)
    run = cur.start_run(run_id=run_id, heartbeat_interval=None)
    return run, run.next_batch(0).indices


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


def ghost(client: paceline.Client, name: str) -> paceline.Curriculum:
    """A handle on a curriculum that does not exist (`name` is created, `name`-gone not)."""
    info = client.create_curriculum(name, **SPEC).info
    return paceline.Curriculum(client, info.model_copy(update={"name": f"{name}-gone"}))


def _reported(client: paceline.Client, name: str) -> paceline.Run:
    run, indices = served(client, name)
    run.report(0, indices, rewards(len(indices)))
    return run


def _report_unserved_index(client: paceline.Client, name: str) -> paceline.ReportAck:
    run, indices = served(client, name)
    return run.report(0, [i for i in range(100) if i not in indices][:1], rewards(1))


#: name -> what to do with a client (names are curriculum names: unique per case).
BAD: dict[str, Callable[[paceline.Client, str], Any]] = {
    "missing_curriculum": lambda c, n: c.curriculum(n),
    "missing_state": lambda c, n: ghost(c, n).state(),
    "missing_history": lambda c, n: ghost(c, n).history(),
    "missing_runs": lambda c, n: ghost(c, n).runs(),
    "unknown_sampler": lambda c, n: c.create_curriculum(n, **{**SPEC, "sampler": "nope"}),
    "bad_params": lambda c, n: c.create_curriculum(
        n, **{**SPEC, "sampler": {"kind": "uniform", "x": 1}}),
    "batch_too_large": lambda c, n: c.create_curriculum(n, **{**SPEC, "batch_size": 1000}),
    "no_objectives": lambda c, n: c.create_curriculum(n, **{**SPEC, "objectives": []}),
    "other_spec": lambda c, n: (c.create_curriculum(n, **SPEC),
                                c.create_curriculum(n, **{**SPEC, "seed": 9})),
    "exist_ok_other_spec": lambda c, n: (c.create_curriculum(n, **SPEC), c.create_curriculum(
        n, **{**SPEC, "seed": 9}, exist_ok=True)),
    "run_id_too_long": lambda c, n: c.create_curriculum(n, **SPEC).start_run("r" * 129),
    "run_id_control": lambda c, n: c.create_curriculum(n, **SPEC).start_run("a\x00b"),
    "metadata_too_deep": lambda c, n: c.create_curriculum(n, **SPEC).start_run(
        "r", metadata=_deep(40)),
    "attach_missing": lambda c, n: ghost(c, n).start_run("r", heartbeat_interval=None),
    "ghost_run": lambda c, n: paceline.Run(
        c.create_curriculum(n, **SPEC), served(c, n)[0].info.model_copy(
            update={"run_id": "ghost"}), None).next_batch(0),
    "size_zero": lambda c, n: served(c, n)[0].next_batch(1, size=0),
    "size_too_large": lambda c, n: served(c, n)[0].next_batch(1, size=101),
    "negative_step": lambda c, n: served(c, n)[0].next_batch(-1),
    "resized": lambda c, n: served(c, n)[0].next_batch(0, size=3),
    "index_out_of_range": lambda c, n: served(c, n)[0].report(0, [500], rewards(1)),
    "nan_reward": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1][:1], rewards(1, float("nan"))),
    "groups_mismatch": lambda c, n: served(c, n)[0].report(0, served(c, n)[1][:2],
                                                           rewards(1)),
    "not_served": lambda c, n: served(c, n)[0].report(5, [1], rewards(1)),
    "indices_not_served": lambda c, n: _report_unserved_index(c, n),
    "report_conflict": lambda c, n: _reported(c, n).report(
        0, served(c, n)[1], rewards(8, 0.0)),
    "key_reused": lambda c, n: (_reported(c, n).next_batch(1), served(c, n)[0].report(
        1, served(c, n)[0].next_batch(1).indices, rewards(8), idempotency_key="k"),
        served(c, n)[0].next_batch(2), served(c, n)[0].report(
        2, served(c, n)[0].next_batch(2).indices, rewards(8), idempotency_key="k")),
    "next_size_without_step": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1], rewards(8), next_size=4),
    "refill_out_of_order": lambda c, n: served(c, n)[0].refill(0, 2),
    "refill_part_too_high": lambda c, n: served(c, n)[0].refill(0, 65),
    "refill_after_report": lambda c, n: _reported(c, n).refill(0, 1),
    "refill_too_large": lambda c, n: served(c, n)[0].refill(0, 1, size=99),
    "history_since": lambda c, n: c.create_curriculum(n, **SPEC).history(since=5),
    "history_every": lambda c, n: c.create_curriculum(n, **SPEC).history(every=0),
    "unserved_value": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1], rewards(8), unserved="maybe"),  # type: ignore[arg-type]
    "delete_missing": lambda c, n: ghost(c, n).delete(),
    # non-finite numbers: refused alike (HTTP's JSON encoder raised a bare ValueError)
    "nan_param": lambda c, n: c.create_curriculum(
        n, **{**SPEC, "sampler": {"kind": "dump_ucb", "tau": float("nan")}}),
    "inf_bound": lambda c, n: c.create_curriculum(
        n, **{**SPEC, "objectives": [{"name": "acc", "bounds": [0, float("inf")]}, "len"]}),
    "nan_metadata": lambda c, n: c.create_curriculum(n, **SPEC).start_run(
        "r", metadata={"lr": [1.0, float("-inf")]}),
    # keys HTTP cannot put in a header travel in the body (they were a UnicodeEncodeError
    # or a connection error over HTTP)
    "key_with_nul": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1], rewards(8), idempotency_key="a\x00b"),
    "key_with_surrogate": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1], rewards(8), idempotency_key="a\ud800"),
    "no_rollouts": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1], np.zeros((len(served(c, n)[1]), 0, 2))),
    # strings where numbers are meant, booleans where integers are (numpy read "1" as
    # 1.0 and True as 1)
    "string_rewards": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1][:1], [[["1", "0.5"]] * 2]),
    "string_array_rewards": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1][:1], np.array([[["1", "0.5"]] * 2])),
    "string_eval_by_name": lambda c, n: served(c, n)[0].report(
        0, served(c, n)[1][:1], rewards(1), eval_objectives={"acc": "0.5", "len": 1.0}),
    "boolean_index": lambda c, n: served(c, n)[0].report(
        9, [0, True], rewards(2), unserved="accept"),
    "boolean_dropped": lambda c, n: served(c, n)[0].report(
        9, [0, 1], rewards(2), dropped=[0, True], unserved="accept"),
}


def outcome(client: paceline.Client, case: str, name: str) -> tuple[Any, ...]:
    try:
        BAD[case](client, name)
    except paceline.PacelineError as exc:
        message = None if exc.code in SCHEMA_CODES else exc.message.replace(name, "<name>")
        return type(exc), exc.code, exc.status, message
    raise AssertionError(f"{case}: no error")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[paceline.Client, paceline.Client]]:
    """A client of the service over HTTP (served on a thread: the same app and HTTP stack
    as a `serve` process, without its start-up) and an embedded one."""
    root = tmp_path_factory.mktemp("parity")
    with threaded_service(f"sqlite:///{root / 'http.db'}") as url, \
            paceline.Client(url, retries=0) as http, \
            paceline.Client.embedded(root / "embedded.db") as embedded:
        yield http, embedded


@pytest.mark.parametrize("case", sorted(BAD))
def test_embedded_errors_equal_http_errors(
        pair: tuple[paceline.Client, paceline.Client], case: str) -> None:
    http, embedded = pair
    name = f"parity-{case.replace('_', '-')}"
    expected = outcome(http, case, name)
    assert outcome(embedded, case, name) == expected
    # ... and leave the same state behind (what was applied before the refusal).
    try:
        states = [c.curriculum(name).state().model_dump() for c in (http, embedded)]
    except paceline.NotFound:
        for client in (http, embedded):
            with pytest.raises(paceline.NotFound):
                client.curriculum(name)
    else:
        assert states[0] == states[1]


def test_same_answers_over_http_and_embedded(
        pair: tuple[paceline.Client, paceline.Client]) -> None:
    """One short run through both: the same batches, acks, state and history."""
    seen = []
    for client in pair:
        cur = client.create_curriculum("parity-answers", **{**SPEC, "sampler": "dump_ucb"})
        run = cur.start_run(run_id="r", metadata={"a": [1, 2]}, heartbeat_interval=None)
        batch = run.next_batch(0)
        acks = []
        for step in range(3):
            sent = (batch.indices, rewards(len(batch.indices), step % 2))
            ack = run.report(step, *sent, advantages=np.zeros((len(batch.indices), 2)),
                             next_step=step + 1, dropped=batch.indices[:1])
            assert ack.batch is not None
            acks.append(ack.model_dump())
            batch = ack.batch
        refill = run.refill(3, 1, size=2)
        again = run.report(2, *sent, advantages=np.zeros((len(sent[0]), 2)),
                           dropped=sent[0][:1], idempotency_key="other")
        assert again.replayed
        history = cur.history().model_dump(exclude={"time"})
        seen.append((acks, refill, again, cur.state().model_dump(), history,
                     run.info.metadata, [r.run_id for r in cur.runs()],
                     client.strategies()))
    assert seen[0] == seen[1]


def test_async_embedded_errors_equal_http_errors(
        pair: tuple[paceline.Client, paceline.Client], tmp_path: Path) -> None:
    http = pair[0]
    expected = [outcome(http, case, f"async-{case}") for case in
                ("missing_curriculum", "index_out_of_range")]

    async def body() -> list[tuple[Any, ...]]:
        found = []
        async with paceline.AsyncClient.embedded(tmp_path / "a.db") as client:
            try:
                await client.curriculum("async-missing_curriculum")
            except paceline.PacelineError as exc:
                found.append((type(exc), exc.code, exc.status,
                              exc.message.replace("async-missing_curriculum", "<name>")))
            cur = await client.create_curriculum("async-index_out_of_range", **SPEC)
            run = await cur.start_run(run_id="r", heartbeat_interval=None)
            await run.next_batch(0)
            try:
                await run.report(0, [500], rewards(1))
            except paceline.PacelineError as exc:
                found.append((type(exc), exc.code, exc.status, exc.message))
        return found

    assert asyncio.run(body()) == expected


def test_error_classes_match_the_service_statuses() -> None:
    """Every code of the service's error table raises, in the client, the exception of
    the family its HTTP status means (the embedded mode takes the status from that
    table, HTTP from the answer)."""
    from paceline_server.transport.errors import TABLE

    for cls, status in TABLE.items():
        assert error_class(cls.code, None) is error_class("UNLISTED", status.http), cls.code


EMBEDDED_RUN = """
import json, sys
import numpy as np
import paceline

with paceline.Client.embedded() as client:
    cur = client.create_curriculum("m", distributions={"a": 10}, objectives=["acc"],
                                   batch_size=4)
    run = cur.start_run(heartbeat_interval=None)
    batch = run.next_batch(0)
    run.report(0, batch.indices, np.ones((4, 2)), next_step=1)
    cur.state(); cur.history(); client.strategies()
    try:
        client.curriculum("nope")
    except paceline.NotFound:
        pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in
                        ("fastapi", "starlette", "uvicorn", "grpc"))))
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("paceline_server.api",
                                                                "paceline_server.grpc")))))
"""


def test_embedded_loads_no_web_framework(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", EMBEDDED_RUN], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, check=True)
    frameworks, transports = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert frameworks == []
    assert transports == []

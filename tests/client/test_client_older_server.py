"""A client of this release against a server older than page tokens.

Such a server pages its listings by limit and offset only: it ignores `page_token` (an
unknown query parameter; an unknown protobuf field) and its answers have no
`next_page_token` at all. The client read that as "the last page" and stopped after the
first 100 curricula or runs, silently. An answer without the field is now told apart
from a last page (null / empty token): a full page of it is read on by offset, each page
from the last item seen, so an item that exists throughout is listed exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

import paceline
from paceline import _grpc_codec
from paceline import _grpc_pb2 as client_pb
from paceline import _operations as op
from paceline.models import CurriculumInfo
from paceline_server.app.operations import ListCurricula
from paceline_server.app.service import PacelineService
from paceline_server.grpc import convert
from paceline_server.grpc.server import create_server
from paceline_server.grpc.service import PacelineHandlers
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.store import open_store
from support import SPEC

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class OlderServer:
    """The REST listings of a release before page tokens, over a list that may change
    between two pages (`between(n)` runs after the n-th answer, counting from 1)."""

    def __init__(self, names: list[str], runs: list[tuple[datetime, str]],
                 token: bool = False) -> None:
        self.names, self.runs, self.token = names, runs, token
        self.asked: list[dict[str, str]] = []
        self.between: Callable[[int], None] = lambda _: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.asked.append(params)
        limit, offset = int(params.get("limit", "100")), int(params.get("offset", "0"))
        if request.url.path == "/v1/curricula":
            body: dict[str, Any] = {"curricula": [
                {"name": name, "spec": {}, "created_at": stamp(T0), "seq": 0,
                 "num_samples": 1, "distributions": ["d"], "objectives": ["acc"]}
                for name in sorted(self.names)[offset:offset + limit]]}
        else:
            body = {"runs": [
                {"run_id": run_id, "curriculum": "math", "created_at": stamp(created),
                 "last_heartbeat": stamp(created), "stale": False, "metadata": {}}
                for created, run_id in sorted(self.runs)[offset:offset + limit]]}
        if self.token:  # a server with tokens, on its last page
            body["next_page_token"] = None
        self.between(len(self.asked))
        return httpx.Response(200, json=body)


@pytest.fixture
def older() -> OlderServer:
    return OlderServer([f"c{i:03d}" for i in range(250)],
                       [(T0 + timedelta(seconds=i // 4), f"r{i:03d}") for i in range(230)])


def test_every_curriculum_of_an_older_server_is_listed(older: OlderServer) -> None:
    with paceline.Client("http://old", transport=httpx.MockTransport(older)) as client:
        assert [c.name for c in client.list_curricula()] == sorted(older.names)
    # The first page as a server with tokens is asked; then by offset, each page from
    # the last item of the one before (which it must hold).
    assert [a.get("offset") for a in older.asked] == ["0", "99", "198"]
    assert not any("page_token" in a for a in older.asked)


def test_an_older_server_changing_between_pages_skips_and_repeats_nothing(
        older: OlderServer) -> None:
    """A curriculum deleted before the position (every later offset shifts back) and
    ones created before it (they shift forward): none is skipped or repeated, as the
    clients of that release paged."""
    def change(answered: int) -> None:
        if answered == 1:
            older.names.remove("c010")
        elif answered == 3:  # the page after the shift, read again from further back
            older.names += ["a-new", "b-new", "c150x"]

    older.between = change
    with paceline.Client("http://old", transport=httpx.MockTransport(older)) as client:
        listed = [c.name for c in client.list_curricula()]
    # c010 was listed before it was deleted, a-new and b-new were created behind the
    # position, c150x ahead of it. A bare offset skipped c100 (shifted back into the
    # first page) and then repeated two (shifted forward by the creations).
    assert listed == sorted([f"c{i:03d}" for i in range(250)] + ["c150x"])


def test_every_run_of_an_older_server_is_listed_by_the_async_client(
        older: OlderServer) -> None:
    async def runs() -> list[str]:
        async with paceline.AsyncClient("http://old",
                                        transport=httpx.MockTransport(older)) as client:
            cur = paceline.AsyncCurriculum(client, CurriculumInfo.model_construct(
                name="math"))
            return [r.run_id for r in await cur.runs()]

    assert asyncio.run(runs()) == [run_id for _, run_id in sorted(older.runs)]
    assert [a.get("offset") for a in older.asked] == ["0", "99", "198"]


def test_a_full_last_page_of_a_server_with_tokens_is_the_end(older: OlderServer) -> None:
    """A null token is the last page even when the page is full: no offset page after."""
    older.token = True
    with paceline.Client("http://new", transport=httpx.MockTransport(older)) as client:
        assert len(client.list_curricula()) == 100
    assert len(older.asked) == 1


def test_grpc_tells_an_unset_token_from_an_empty_one() -> None:
    """next_page_token is `optional` in the proto (the same bytes on the wire), so the
    codec sees whether the server set it: unset (an older server, whose message has no
    such field) leaves it out of the answer, empty (the last page) is None."""
    decode = _grpc_codec.ENCODERS[op.ListRuns](op.ListRuns("math")).body
    older = client_pb.ListRunsResponse()
    assert "next_page_token" not in decode(older)
    assert decode(client_pb.ListRunsResponse(next_page_token=""))["next_page_token"] is None
    assert decode(client_pb.ListRunsResponse(next_page_token="t"))["next_page_token"] == "t"
    # What a server with tokens sends on its last page keeps the field set on the wire.
    sent = pb.ListRunsResponse(next_page_token="").SerializeToString()
    assert client_pb.ListRunsResponse.FromString(sent).HasField("next_page_token")


@pytest.fixture
def older_grpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A gRPC server whose ListCurricula is that of a release before page tokens: by
    offset, page_token ignored, next_page_token never set."""
    def by_offset(self: PacelineHandlers, request: pb.ListCurriculaRequest,
                  context: grpc.ServicerContext) -> pb.ListCurriculaResponse:
        page = self.ops.list_curricula(ListCurricula(request.limit or 100, request.offset))
        return pb.ListCurriculaResponse(curricula=[convert.curriculum(r)
                                                   for r in page.items])

    monkeypatch.setattr(PacelineHandlers, "list_curricula", by_offset)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    config = Settings(database_url=url, auto_migrate=True)
    service = PacelineService(open_store(url, auto_migrate=True), config)
    server = create_server(service, config, port=0, host="127.0.0.1")
    server.start()
    try:
        for i in range(7):
            service.create_curriculum({**SPEC, "name": f"c{i}"})
        yield f"grpc://127.0.0.1:{server.port}"
    finally:
        server.stop(0)
        service.close()
        service.store.close()


def test_every_curriculum_of_an_older_grpc_server_is_listed(
        older_grpc: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("paceline.client.PAGE", 3)
    with paceline.Client(older_grpc) as client:
        assert [c.name for c in client.list_curricula()] == [f"c{i}" for i in range(7)]

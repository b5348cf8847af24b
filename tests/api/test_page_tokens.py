"""The REST listings paged by token (GET /v1/curricula, GET /v1/curricula/{name}/runs).

Paged by `offset` alone, a caller reading a listing while others created or deleted
entries before its position skipped one entry per deletion and repeated one per creation
(the Python client guessed its way around that; curl and the dashboard could not). Each
page now carries `next_page_token`, naming where it ended, and `?page_token=` continues
strictly after that entry."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from paceline_server.app import page_tokens
from support import SPEC

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
RUNS = "/v1/curricula/math/runs"


def create(client: TestClient, *names: str) -> None:
    for name in names:
        assert client.post("/v1/curricula", json={**SPEC, "name": name}).status_code == 201


def delete(client: TestClient, name: str) -> None:
    assert client.delete(f"/v1/curricula/{name}", params={"confirm": name}).status_code == 204


def read_all(client: TestClient, path: str, field: str, key: str, limit: int,
             between: Callable[[int], None] = lambda _: None) -> list[str]:
    """Every page of a listing by its tokens, `between(n)` run after page n."""
    found: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    for number in range(100):
        answer = client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body[field]) <= limit
        found += [entry[key] for entry in body[field]]
        if body["next_page_token"] is None:
            return found
        assert body[field], "a token never leads to an empty page"
        between(number)
        params = {"limit": limit, "page_token": body["next_page_token"]}
    raise AssertionError("the listing did not end")


def error(answer: Any) -> tuple[int, str]:
    return answer.status_code, answer.json()["error"]["code"]


def test_curricula_pages_by_token_while_others_are_created_and_deleted(
        client: TestClient) -> None:
    """A curriculum that exists throughout is listed exactly once, in name order: "b"
    deleted after the first page shifted an offset back (skipping "d"), "0" created
    before the position shifted it forward (repeating one)."""
    create(client, *"abcdefg")
    assert read_all(client, "/v1/curricula", "curricula", "name", 2) == list("abcdefg")

    def change(page: int) -> None:
        if page == 0:
            delete(client, "b")
            create(client, "0")
        elif page == 1:
            delete(client, "e")  # not yet listed: it is gone when its page comes
            create(client, "x")  # after the position: listed

    assert read_all(client, "/v1/curricula", "curricula", "name", 2, change) \
        == list("abcdfgx")


def test_runs_page_by_token_while_others_are_attached(client: TestClient) -> None:
    """Runs are ordered by (created_at, run_id); one attached between pages with a
    creation time before the position (an import of an older run), or at the same time
    with a smaller id, repeated an entry under offsets; with tokens each run that exists
    throughout is listed once, and those attached after the position are listed too."""
    create(client, "math")
    store = client.app.state.service.store  # type: ignore[attr-defined]
    for i in range(6):
        store.add_run("math", f"r{i}", {}, T0 + timedelta(seconds=i // 2))  # ties
    ids = [f"r{i}" for i in range(6)]
    assert read_all(client, RUNS, "runs", "run_id", 2) == ids

    def change(page: int) -> None:
        if page == 0:
            store.add_run("math", "older", {}, T0 - timedelta(seconds=1))
            store.add_run("math", "a-tie", {}, T0)  # r0, r1's time, an id before r1
            store.add_run("math", "r1b", {}, T0)  # same time, after r1: still to come
            store.add_run("math", "newer", {}, T0 + timedelta(hours=1))

    assert read_all(client, RUNS, "runs", "run_id", 2, change) == [
        "r0", "r1", "r1b", *ids[2:], "newer"]


def test_the_last_page_has_no_token(sqlite_client: TestClient) -> None:
    """No token leads to an empty page: a listing of exactly `limit` entries is one page,
    and an empty `page_token` is the first page."""
    client = sqlite_client
    create(client, "a", "b")
    for params in ({"limit": 2}, {"limit": 2, "page_token": ""}, {"offset": 0}):
        body = client.get("/v1/curricula", params=params).json()
        assert ([c["name"] for c in body["curricula"]], body["next_page_token"]) \
            == (["a", "b"], None)
    first = client.get("/v1/curricula", params={"limit": 1}).json()
    assert first["next_page_token"]
    # An offset page carries a token too, so a caller can switch to tokens.
    by_offset = client.get("/v1/curricula", params={"limit": 1, "offset": 0}).json()
    assert by_offset["next_page_token"] == first["next_page_token"]
    rest = client.get("/v1/curricula", params={"page_token": first["next_page_token"]})
    assert rest.json() == {"curricula": [client.get("/v1/curricula/b").json()],
                           "next_page_token": None}
    assert client.get(RUNS.replace("math", "a")).json() == {"runs": [],
                                                             "next_page_token": None}


def _tokens(client: TestClient) -> dict[str, str]:
    create(client, "math", "other")
    for name in ("math", "other"):
        for run_id in ("r1", "r2"):
            client.post(f"/v1/curricula/{name}/runs", json={"run_id": run_id})
    pick = {"curricula": "/v1/curricula", "math": RUNS,
            "other": "/v1/curricula/other/runs"}
    return {what: client.get(path, params={"limit": 1}).json()["next_page_token"]
            for what, path in pick.items()}


def _tampered(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[raw.index(b'"after"') + 10] ^= 1  # one bit of the name it continues after
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


#: (what, the token sent to the curricula listing, to the runs of "math")
BAD: list[tuple[str, Callable[[dict[str, str]], str]]] = [
    ("garbage", lambda t: "not a token!"),
    ("base64 of garbage", lambda t: base64.urlsafe_b64encode(b"garbage, " * 4).decode()),
    ("cut short", lambda t: t["curricula"][:-3]),
    ("tampered", lambda t: _tampered(t["curricula"])),
    ("overlong", lambda t: "A" * (page_tokens.MAX_TOKEN + 4)),
    ("of another listing", lambda t: t["math"]),
    ("forged with a NUL", lambda t: page_tokens._seal(
        {"v": 1, "list": "curricula", "after": "a\x00"})),
    ("of another version", lambda t: page_tokens._seal(
        {"v": 2, "list": "curricula", "after": "a"})),
]


@pytest.mark.parametrize(("what", "bad"), BAD, ids=[what for what, _ in BAD])
def test_a_bad_curricula_token_is_refused(sqlite_client: TestClient, what: str,
                                          bad: Callable[[dict[str, str]], str]) -> None:
    client = sqlite_client
    tokens = _tokens(client)
    before = client.get("/v1/curricula").json()
    answer = client.get("/v1/curricula", params={"page_token": bad(tokens)})
    assert error(answer) == (422, "INVALID_PAGE_TOKEN"), answer.text
    assert answer.json()["error"]["details"] == {"field": "page_token"}
    assert client.get("/v1/curricula").json() == before


@pytest.mark.parametrize("what", ["of the curricula", "of another curriculum's runs",
                                  "tampered", "forged run key", "forged creation time"])
def test_a_bad_runs_token_is_refused(sqlite_client: TestClient, what: str) -> None:
    client = sqlite_client
    tokens = _tokens(client)
    bad = {"of the curricula": tokens["curricula"],
           "of another curriculum's runs": tokens["other"],
           "tampered": _tampered(tokens["math"]),
           "forged run key": page_tokens._seal(
               {"v": 1, "list": "runs", "of": "math", "after": ["yesterday", "r1"]}),
           "forged creation time": page_tokens._seal(
               {"v": 1, "list": "runs", "of": "math", "created": "2024-05-01T12:00:00",
                "after": ["2024-05-01T12:00:00+00:00", "r1"]}),
           }[what]
    answer = client.get(RUNS, params={"page_token": bad})
    assert error(answer) == (422, "INVALID_PAGE_TOKEN"), answer.text
    # and the good one continues where its page ended
    rest = client.get(RUNS, params={"page_token": tokens["math"]}).json()
    assert [r["run_id"] for r in rest["runs"]] == ["r2"]


def test_a_runs_token_of_a_recreated_curriculum_is_refused(client: TestClient) -> None:
    """A runs token named the curriculum only: deleted and created again between two
    pages (with runs of the same ids), the next page silently listed the new
    curriculum's runs after the old one's key. The token now names the curriculum's
    creation (created_at), so it is refused with CONFLICT (409) and nothing else
    changes; the new curriculum's listing starts over, from the first page."""
    create(client, "math")
    for run_id in ("r1", "r2", "r3"):
        client.post(f"{RUNS}", json={"run_id": run_id})
    stale = client.get(RUNS, params={"limit": 1}).json()["next_page_token"]
    delete(client, "math")
    create(client, "math")
    for run_id in ("r1", "r2", "r3", "r4"):
        client.post(f"{RUNS}", json={"run_id": run_id})
    answer = client.get(RUNS, params={"limit": 2, "page_token": stale})
    assert error(answer) == (409, "CONFLICT"), answer.text
    assert answer.json()["error"]["details"] == {"curriculum": "math"}
    assert "from the first page" in answer.json()["error"]["message"]
    assert read_all(client, RUNS, "runs", "run_id", 2) == ["r1", "r2", "r3", "r4"]


def test_a_runs_token_made_before_tokens_named_the_creation_continues(
        sqlite_client: TestClient) -> None:
    """A token an older replica handed out (no creation time in it), met during a rolling
    upgrade, continues as it did; the next token it gets names the curriculum's."""
    client = sqlite_client
    create(client, "math")
    for run_id in ("r1", "r2", "r3"):
        client.post(f"{RUNS}", json={"run_id": run_id})
    first = client.get(RUNS, params={"limit": 1}).json()["runs"][0]
    older = page_tokens._seal({"v": 1, "list": "runs", "of": "math",
                               "after": [first["created_at"], "r1"]})
    page = client.get(RUNS, params={"limit": 1, "page_token": older}).json()
    assert [r["run_id"] for r in page["runs"]] == ["r2"]
    rest = client.get(RUNS, params={"page_token": page["next_page_token"]}).json()
    assert [r["run_id"] for r in rest["runs"]] == ["r3"]


def test_a_token_with_an_offset_is_refused(sqlite_client: TestClient) -> None:
    """Either says where the page starts; both together are refused, not one ignored."""
    client = sqlite_client
    tokens = _tokens(client)
    for path, token in (("/v1/curricula", tokens["curricula"]), (RUNS, tokens["math"])):
        answer = client.get(path, params={"page_token": token, "offset": 1})
        assert error(answer) == (422, "INVALID_REQUEST"), answer.text
        assert answer.json()["error"]["details"] == {"field": "offset"}
        assert client.get(path, params={"page_token": token, "offset": 0}).status_code == 200


def test_the_tokens_are_documented(sqlite_client: TestClient) -> None:
    schema = sqlite_client.get("/openapi.json").json()
    for path, listed in (("/v1/curricula", "CurriculumList"),
                         ("/v1/curricula/{name}/runs", "RunList")):
        parameters = {p["name"] for p in schema["paths"][path]["get"]["parameters"]}
        assert {"limit", "offset", "page_token"} <= parameters
        assert "next_page_token" in schema["components"]["schemas"][listed]["properties"]

"""Client input at the edges of what JSON can carry: a 4xx with a stable code, never a
500, and the curriculum's state left as it was (the next good report still works)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from paceline_server.app.operations import Operations, SubmitReport
from paceline_server.domain.errors import InvalidReport
from support import SPEC

CUR = "/v1/curricula/math"
HUGE = str(10**400)  # a JSON integer beyond float64: numpy's conversion overflows
GOOD = '"run_id": "r", "indices": [1], "unserved": "accept"'


def setup(client: TestClient) -> None:
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    assert client.post(f"{CUR}/runs", json={"run_id": "r"}).status_code == 201


def post_json(client: TestClient, path: str, text: str) -> Any:
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("field", "body"), [
    ("rewards", f'{{{GOOD}, "step": 0, "rewards": [[[{HUGE}, 1]]]}}'),
    ("advantages", f'{{{GOOD}, "step": 0, "rewards": [[[1, 1]]], '
                   f'"advantages": [[{HUGE}]]}}'),
    ("grad_products", f'{{{GOOD}, "step": 0, "rewards": [[[1, 1]]], '
                      f'"grad_products": [[{HUGE}, 0], [0, 1]]}}'),
    ("eval_objectives", f'{{{GOOD}, "step": 0, "rewards": [[[1, 1]]], '
                        f'"eval_objectives": {{"acc": {HUGE}, "len": 1}}}}'),
    ("rewards", f'{{"run_id": "r", "step": 0, "rollout_indices": [1], '
                f'"unserved": "accept", "rewards": [[1, -{HUGE}]]}}'),
])
def test_an_integer_beyond_float64_is_an_invalid_report(
        sqlite_client: TestClient, field: str, body: str) -> None:
    setup(sqlite_client)
    before = sqlite_client.get(f"{CUR}/state").json()
    answer = post_json(sqlite_client, f"{CUR}/reports", body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "INVALID_REPORT" and error["details"]["field"] == field
    assert sqlite_client.get(f"{CUR}/state").json() == before
    ok = post_json(sqlite_client, f"{CUR}/reports",
                   f'{{{GOOD}, "step": 0, "rewards": [[[1, 1]]]}}')
    assert ok.status_code == 200 and ok.json()["seq"] == 1, ok.text


def test_the_operation_refuses_it_in_process(sqlite_client: TestClient) -> None:
    """The rule is the operation layer's, so an in-process caller gets it too."""
    setup(sqlite_client)
    ops: Operations = sqlite_client.app.state.operations  # type: ignore[attr-defined]
    body = {"run_id": "r", "step": 0, "indices": [1], "unserved": "accept",
            "rewards": [[[10**400, 1]]]}
    with pytest.raises(InvalidReport):
        ops.report(SubmitReport("math", body))


@pytest.mark.parametrize("index", ["1e30", "-1e19", "9.3e18"])
def test_an_integral_float_index_beyond_int64_is_not_integer(
        sqlite_client: TestClient, index: str) -> None:
    """1e30 is integral, but int64 cannot hold it: it was wrapped to -2**63 and refused
    as an index out of range, quoting a number nobody sent."""
    setup(sqlite_client)
    answer = post_json(sqlite_client, f"{CUR}/reports",
                       f'{{"run_id": "r", "indices": [{index}], "unserved": "accept", '
                       f'"step": 0, "rewards": [[[1, 1]]]}}')
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "INVALID_REPORT" and error["details"]["field"] == "indices"
    assert "9223372036854775808" not in error["message"]


SURROGATE = "\\ud800"  # JSON's escape of a lone surrogate: valid JSON, not encodable UTF-8
SPEC_TEXT = ('{"name": "y", "layout": {"distributions": [{"name": "a", "size": 10}]}, '
             '"objectives": ["acc"], "batch_size": 2, %s}')


@pytest.mark.parametrize(("path", "text", "code"), [
    (f"{CUR}/reports", f'{{{GOOD}, "step": 0, "rewards": [[[1, 1]]], "{SURROGATE}": 1}}',
     "INVALID_REPORT"),
    ("/v1/curricula", SPEC_TEXT % f'"sampler": "{SURROGATE}"', "UNKNOWN_STRATEGY"),
    ("/v1/curricula", SPEC_TEXT % f'"weighting": {{"kind": "{SURROGATE}"}}',
     "UNKNOWN_STRATEGY"),
    ("/v1/curricula", SPEC_TEXT % f'"sampler": {{"kind": "uniform", "{SURROGATE}": 1}}',
     "INVALID_PARAMS"),
])
def test_an_error_echoing_a_lone_surrogate_is_rendered(
        sqlite_client: TestClient, path: str, text: str, code: str) -> None:
    """The error's details name what the client sent (an unknown field, a strategy
    name); a lone surrogate there made the error itself unrenderable: 500 INTERNAL."""
    setup(sqlite_client)
    answer = post_json(sqlite_client, path, text)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["code"] == code
    assert "\\ud800" in answer.text  # shown as its escape
    assert sqlite_client.get(f"{CUR}/state").json()["seq"] == 0
    assert sqlite_client.get("/v1/curricula").json()["curricula"][0]["name"] == "math"


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("gzipped", [False, True])
def test_an_integer_over_pythons_digit_limit_is_a_malformed_body(
        sqlite_client: TestClient, monkeypatch: pytest.MonkeyPatch, large: bool,
        gzipped: bool) -> None:
    """json.loads refuses an integer of more than 4300 digits with a plain ValueError (not
    a JSONDecodeError), which answered 500 INTERNAL with a traceback in the log; gRPC's
    spec_json and the FastAPI routes already answered 400. Both parsers (the large-body
    one too) and gzip bodies."""
    import gzip

    from paceline_server.api import body as body_module

    if large:  # the pure-Python scanner of bodies over LARGE_BODY
        monkeypatch.setattr(body_module, "LARGE_BODY", 10)
    setup(sqlite_client)
    before = sqlite_client.get(f"{CUR}/state").json()
    text = f'{{{GOOD}, "step": {"9" * 5000}, "rewards": [[[1, 1]]]}}'.encode()
    headers = {"Content-Type": "application/json"}
    if gzipped:
        text, headers = gzip.compress(text), {**headers, "Content-Encoding": "gzip"}
    answer = sqlite_client.post(f"{CUR}/reports", content=text, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "MALFORMED_BODY"
    assert sqlite_client.get(f"{CUR}/state").json() == before

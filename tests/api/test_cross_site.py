"""Writes a browser sends from another site's page are refused: with authentication off
(`serve`'s default, on 127.0.0.1) a "simple" cross-site POST, one without a Content-Type
and so sent without a CORS preflight, posted reports and imported curricula, as the
report and import routes read a body without a Content-Type as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from support import SPEC

CUR = "/v1/curricula/math"
REPORT = {"run_id": "r", "step": 0, "indices": [1], "rewards": [[[1.0, 2.0]]],
          "unserved": "accept"}
CROSS_SITE = [{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
              {"Origin": "https://evil.example"},  # a browser without Sec-Fetch-*
              {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"}]


def setup(client: TestClient) -> bytes:
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    assert client.post(f"{CUR}/runs", json={"run_id": "r"}).status_code == 201
    return client.get(f"{CUR}/export").content.replace(b'"name":"math"', b'"name":"copy"')


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_site_writes_are_refused(sqlite_client: TestClient,
                                       headers: dict[str, str]) -> None:
    export = setup(sqlite_client)
    before = sqlite_client.get(f"{CUR}/state").json()
    answers: list[Any] = [
        sqlite_client.post(f"{CUR}/reports", content=json.dumps(REPORT).encode(),
                           headers=headers),
        sqlite_client.post("/v1/imports", content=export, headers=headers),
        sqlite_client.delete(CUR, params={"confirm": "math"}, headers=headers)]
    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "FORBIDDEN"
    assert sqlite_client.get(f"{CUR}/state").json() == before
    assert sqlite_client.get("/v1/curricula/copy").status_code == 404
    # Reads stay open to the browser (the dashboard's own, or a cross-site GET, which
    # the browser does not let the page read).
    assert sqlite_client.get(f"{CUR}/state", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [
    {}, {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
    {"Sec-Fetch-Site": "none"}, {"Origin": "http://testserver"}])
def test_same_origin_and_non_browser_writes_pass(sqlite_client: TestClient,
                                                 headers: dict[str, str]) -> None:
    setup(sqlite_client)
    answer = sqlite_client.post(f"{CUR}/reports", json=REPORT, headers=headers)
    assert answer.status_code == 200 and answer.json()["seq"] == 1, answer.text

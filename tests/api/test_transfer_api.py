"""`GET /v1/curricula/{name}/export` and `POST /v1/imports` on SQLite and
PostgreSQL: the CLI's format, one transaction, refusals with stable codes, scopes."""

from __future__ import annotations

import gzip

import orjson
from fastapi.testclient import TestClient

from api_support import make_client
from support import SPEC

CUR = "/v1/curricula/math"
NDJSON = {"Content-Type": "application/x-ndjson"}


def seed(client: TestClient, reports: int = 4) -> None:
    assert client.post("/v1/curricula", json=SPEC).status_code == 201
    assert client.post(f"{CUR}/runs", json={"run_id": "r", "metadata": {"lr": 0.1}}
                       ).status_code == 201
    for step in range(reports):
        indices = [step, step + 1, 60 + step]
        rewards = [[[float(i % 2), 10.0]] * 2 for i in indices]
        ack = client.post(f"{CUR}/reports", headers={"Idempotency-Key": f"r/{step}"},
                          json={"run_id": "r", "step": step, "indices": indices,
                                "rewards": rewards, "unserved": "accept"})
        assert ack.status_code == 200, ack.text


def test_export_then_import(client: TestClient) -> None:
    seed(client)
    exported = client.get(f"{CUR}/export")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in exported.content.splitlines()]
    assert [x["type"] for x in lines] == ["curriculum", "run"] + ["report"] * 4
    assert lines[0]["seq"] == 4 and lines[0]["format"] == 1
    assert lines[1]["metadata"] == {"lr": 0.1}
    assert [x["idempotency_key"] for x in lines[2:]] == [f"r/{s}" for s in range(4)]

    created = client.post("/v1/imports?name=copy", content=exported.content,
                          headers=NDJSON)
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "copy", "created": True, "seq": 4, "reports_added": 4,
                              "reports_present": 0, "runs_added": 1, "runs_present": 0}
    assert client.get("/v1/curricula/copy/state").json()["distributions"] == \
        client.get(f"{CUR}/state").json()["distributions"]

    again = client.post("/v1/imports?name=copy", content=exported.content,
                        headers=NDJSON)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "CURRICULUM_EXISTS"
    merged = client.post("/v1/imports?name=copy&merge=true",
                         content=gzip.compress(exported.content),
                         headers={**NDJSON, "Content-Encoding": "gzip"})
    assert merged.status_code == 200, merged.text
    assert merged.json()["reports_present"] == 4 and merged.json()["reports_added"] == 0


def test_refusals_have_stable_codes_and_change_nothing(client: TestClient) -> None:
    seed(client, reports=2)
    exported = client.get(f"{CUR}/export").content
    before = client.get("/v1/curricula").content
    missing = client.get("/v1/curricula/nope/export")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "CURRICULUM_NOT_FOUND"
    cases = [
        ("other", exported, {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("other", exported[:-30], NDJSON, 400, "MALFORMED_BODY"),
        ("other", b"", NDJSON, 422, "INVALID_REQUEST"),
        ("other", b"not json\n", NDJSON, 400, "MALFORMED_BODY"),
        ("bad name", exported, NDJSON, 422, "INVALID_SPEC"),
        ("other", exported, {**NDJSON, "Content-Encoding": "gzip"}, 400, "MALFORMED_BODY"),
        ("other", exported, {**NDJSON, "Content-Encoding": "br"}, 415,
         "UNSUPPORTED_MEDIA_TYPE"),
    ]
    for name, body, headers, status, code in cases:
        response = client.post("/v1/imports", params={"name": name}, content=body,
                               headers=headers)
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"]["code"] == code
    assert client.get("/v1/curricula").content == before


def test_export_reads_and_import_writes(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/auth.db"
    with make_client(url, api_tokens={"reader": "read", "writer": "write"}) as client:
        writer = {"Authorization": "Bearer writer"}
        reader = {"Authorization": "Bearer reader"}
        client.headers.update(writer)
        seed(client, reports=1)
        exported = client.get(f"{CUR}/export", headers=reader)
        assert exported.status_code == 200
        refused = client.post("/v1/imports?name=copy", content=exported.content,
                              headers={**NDJSON, **reader})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
        client.headers.pop("Authorization")
        assert client.get(f"{CUR}/export").status_code == 401
        assert client.post("/v1/imports", content=exported.content,
                           headers=NDJSON).status_code == 401
        assert client.post("/v1/imports?name=copy", content=exported.content,
                           headers={**NDJSON, **writer}).status_code == 201


def test_a_run_time_beyond_utc_years_is_refused(client: TestClient) -> None:
    """A run's time whose UTC form leaves years 1..9999 (a valid ISO 8601 text with a
    far offset) is the import's 422, not the driver's 500, and nothing is imported; an
    offset within range is stored as the same instant."""
    seed(client, reports=1)
    lines = [orjson.loads(line) for line in client.get(f"{CUR}/export").content.splitlines()]
    for field in ("created_at", "last_heartbeat"):
        for stamp in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
            run = {**lines[1], field: stamp}
            body = b"\n".join(orjson.dumps(x) for x in (lines[0], run, *lines[2:]))
            answer = client.post("/v1/imports?name=copy", content=body, headers=NDJSON)
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["code"] == "INVALID_REQUEST"
            assert error["details"] == {"field": field, "line": 2}
    assert client.get("/v1/curricula/copy").status_code == 404
    run = {**lines[1], "created_at": "2020-01-01T09:00:00+09:00"}
    body = b"\n".join(orjson.dumps(x) for x in (lines[0], run, *lines[2:]))
    assert client.post("/v1/imports?name=copy", content=body,
                       headers=NDJSON).status_code == 201
    stored = client.get("/v1/curricula/copy/runs/r").json()["created_at"]
    assert stored.startswith("2020-01-01T00:00:00")

"""Schemathesis against the service's own OpenAPI schema, in process (ASGI), bounded for
CI: no 5xx, and every response conforms to the schema (status code documented, body and
headers as declared, content type, Allow on 405), over schema-derived valid and invalid
requests (invalid ones must be refused with a 4xx).

Two passes: random values everywhere on SQLite (mostly unknown curricula: routing,
validation and error paths), and, on PostgreSQL, path parameters pinned to a curriculum
and run that exist, so that generated bodies reach the report, batch and run use cases.

`positive_data_acceptance` (a schema-valid request must succeed) is waived where the
schema cannot say what makes a request acceptable: a curriculum spec is validated by its
strategies, a report against the curriculum's layout, a delete needs `?confirm=`
equal to the path's name, and a history's `since` must not pass the curriculum's head.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import msgpack  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

from paceline_server.api.app import create_app  # noqa: E402
from paceline_server.settings import Settings  # noqa: E402
from support import SPEC, fresh_pg_schema  # noqa: E402

#: Examples per operation (and phase); `PACELINE_FUZZ_EXAMPLES=300` for a longer hunt.
EXAMPLES = int(os.environ.get("PACELINE_FUZZ_EXAMPLES", "12"))
# Rules JSON Schema cannot state (valid UTF-8 text, finite numbers, what a curriculum
# allows, a step written as 1.0, which JSON Schema counts as an integer) are checked by
# the service and answered 422 on schema-valid bodies; a listing's page_token is opaque
# (only one the service handed out is valid: INVALID_PAGE_TOKEN otherwise).
SEMANTIC = {"POST /v1/curricula", "DELETE /v1/curricula/{name}",
            "POST /v1/curricula/{name}/runs", "POST /v1/curricula/{name}/batches",
            "POST /v1/curricula/{name}/reports", "POST /v1/imports",
            "GET /v1/curricula/{name}/history", "GET /v1/curricula",
            "GET /v1/curricula/{name}/runs"}


def _openapi() -> dict[str, Any]:
    """The schema the service publishes (rendered once, from a throwaway database)."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(database_url=f"sqlite:///{tmp}/schema.db", auto_migrate=True))
        document = app.openapi()
        app.state.service.store.close()
    return document


OPENAPI = _openapi()
GENERATION = {"max-examples": EXAMPLES}
anywhere = schemathesis.openapi.from_dict(
    OPENAPI, config=SchemathesisConfig.from_dict({"generation": GENERATION}))
existing = schemathesis.openapi.from_dict(OPENAPI, config=SchemathesisConfig.from_dict({
    "generation": GENERATION,
    "parameters": {"path.name": "math", "path.run_id": "run-1"}}))
FUZZ_SETTINGS = settings(deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


def _packable(value: Any) -> Any:
    """msgpack has no integers beyond 64 bits: send those as floats, as JSON would."""
    if isinstance(value, dict):
        return {k: _packable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_packable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) \
            and not -(2**63) <= value < 2**64:
        return float(value)
    return value


@schemathesis.serializer("application/msgpack")
def _msgpack(context: Any, value: Any) -> bytes:
    """Reports may come as msgpack: fuzz that decoder too."""
    packed: bytes = msgpack.packb(_packable(value))
    return packed


@schemathesis.serializer("application/x-ndjson")
def _ndjson(context: Any, value: Any) -> bytes:
    """An import body: each item of a generated array as a line (anything else as one)."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def call_and_check(case: Any, app: FastAPI) -> None:
    waived = [positive_data_acceptance] if case.operation.label in SEMANTIC else []
    case.call_and_validate(app=app, excluded_checks=waived)


@pytest.fixture
def sqlite_app(tmp_path: Any) -> Iterator[FastAPI]:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/fuzz.db", auto_migrate=True))
    yield app
    app.state.service.store.close()


def seed(client: TestClient) -> None:
    client.post("/v1/curricula", json={**SPEC, "exist_ok": True})
    client.post("/v1/curricula/math/runs", json={"run_id": "run-1"})


@pytest.fixture
def pg_client() -> Iterator[TestClient]:
    with fresh_pg_schema() as url, \
            TestClient(create_app(Settings(database_url=url, auto_migrate=True))) as client:
        seed(client)
        yield client
        client.app.state.service.store.close()  # type: ignore[attr-defined]


@anywhere.parametrize()
@FUZZ_SETTINGS
def test_anywhere(case: Any, sqlite_app: FastAPI) -> None:
    call_and_check(case, sqlite_app)


@existing.parametrize()
@FUZZ_SETTINGS
def test_on_existing_resources(case: Any, pg_client: TestClient) -> None:
    try:
        call_and_check(case, pg_client.app)  # type: ignore[arg-type]
    finally:
        if case.method.upper() == "DELETE":  # a generated delete may have removed them
            seed(pg_client)

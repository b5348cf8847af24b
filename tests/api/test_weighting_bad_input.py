"""Bad weighting input over REST: gradient products that are not a k×k symmetric finite
matrix, preference weights that do not match the objectives (count, sign, finiteness),
objective bounds with lo >= hi. Each is a 4xx with a stable code and leaves the
curriculum's state exactly as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from support import SPEC

CUR = "/v1/curricula/math"
GRADIENT_SPEC = {**SPEC, "weighting": {"kind": "gradient"}}


def setup(client: TestClient) -> None:
    assert client.post("/v1/curricula", json=GRADIENT_SPEC).status_code == 201
    assert client.post(f"{CUR}/runs", json={"run_id": "run-1"}).status_code == 201


def report(step: int, **extra: Any) -> dict[str, Any]:
    return {"run_id": "run-1", "step": step, "indices": [1, 2], "unserved": "accept",
            "rewards": [[[1.0, 10.0], [0.0, 20.0]], [[1.0, 5.0], [1.0, 9.0]]], **extra}


@pytest.mark.parametrize("gram", [
    [[1.0, 0.5], [0.4, 1.0]],  # not symmetric
    [[1.0, 1e-3], [-1e-3, 1.0]],  # antisymmetric part
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],  # 3x3 for 2 objectives
    [[1.0, 0.0]],  # not square
    [1.0, 0.0],  # not a matrix
])
def test_bad_grad_products(sqlite_client: TestClient, gram: Any) -> None:
    setup(sqlite_client)
    ok = sqlite_client.post(f"{CUR}/reports",
                            json=report(0, grad_products=[[1.0, -0.5], [-0.5, 2.0]]))
    assert ok.status_code in (200, 201), ok.text
    before = sqlite_client.get(f"{CUR}/state").json()
    response = sqlite_client.post(f"{CUR}/reports", json=report(1, grad_products=gram))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "INVALID_REPORT"
    assert "grad_products" in response.json()["error"]["message"]
    assert sqlite_client.get(f"{CUR}/state").json() == before


def test_non_finite_grad_products(sqlite_client: TestClient) -> None:
    setup(sqlite_client)
    before = sqlite_client.get(f"{CUR}/state").json()
    body = json.dumps(report(0)).replace('"unserved"',
                                         '"grad_products": [[1, Infinity], [Infinity, 1]], '
                                         '"unserved"')
    response = sqlite_client.post(f"{CUR}/reports", content=body,
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "INVALID_REPORT"
    assert sqlite_client.get(f"{CUR}/state").json() == before


@pytest.mark.parametrize(("change", "code"), [
    ({"weighting": {"kind": "fixed", "weights": [1.0, 2.0, 3.0]}}, "INVALID_PARAMS"),
    ({"weighting": {"kind": "gradient", "weights": [1.0]}}, "INVALID_PARAMS"),
    ({"weighting": {"kind": "hypervolume", "weights": [1.0, -1.0]}}, "INVALID_PARAMS"),
    ({"weighting": {"kind": "spard", "weights": [1e308, 1e308]}}, "INVALID_PARAMS"),
    ({"weighting": {"kind": "fixed", "weights": [1e999, 1.0]}}, "INVALID_PARAMS"),
    ({"objectives": ["acc", {"name": "len", "bounds": [5, 5]}]}, "INVALID_SPEC"),
    ({"objectives": ["acc", {"name": "len", "bounds": [10, 0]}]}, "INVALID_SPEC"),
])
def test_bad_weights_and_bounds(sqlite_client: TestClient, change: dict[str, Any],
                                code: str) -> None:
    body = json.dumps({**SPEC, "name": "bad", **change})  # 1e999 is written as Infinity
    response = sqlite_client.post("/v1/curricula", content=body,
                                  headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert sqlite_client.get("/v1/curricula/bad").status_code == 404

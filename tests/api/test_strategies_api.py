"""`GET /v1/strategies` and the recommended default sampler over REST."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api_support import make_client
from paceline_server.domain.spec import DEFAULT_SAMPLER, DEFAULT_WEIGHTING
from paceline_server.strategies import registry
from paceline_server.strategies.params import require
from paceline_server.strategies.samplers.uniform import UniformSampler
from support import SPEC


@dataclass(frozen=True)
class TiltParams:
    allocation: str = "multinomial"
    tilt: float = 0.5
    band: tuple[float, ...] = (0.2, 0.8)

    def __post_init__(self) -> None:
        require(0 <= self.tilt <= 1, "tilt must be in [0, 1]", "tilt")


class TiltSampler(UniformSampler):
    """A third-party sampler registered at run time (uniform underneath)."""

    name = "tilt_test_sampler"
    params_type = TiltParams


@pytest.fixture
def registered() -> Iterator[None]:
    registry.register_sampler(TiltSampler)
    try:
        yield
    finally:
        registry._registered_samplers.pop(TiltSampler.name, None)


def no_sampler(**change: Any) -> dict[str, Any]:
    spec = {k: v for k, v in SPEC.items() if k not in ("sampler", "weighting")}
    return {**spec, **change}


def test_create_without_sampler_gets_the_default(client: TestClient) -> None:
    created = client.post("/v1/curricula", json=no_sampler())
    assert created.status_code == 201
    spec = created.json()["spec"]
    assert spec["sampler"]["kind"] == DEFAULT_SAMPLER.kind
    assert spec["weighting"]["kind"] == DEFAULT_WEIGHTING.kind
    # the canonical spec is concrete: every parameter of the default spelled out
    listing = client.get("/v1/strategies").json()
    assert spec["sampler"] == listing["default_sampler"]
    assert client.get("/v1/curricula/math").json()["spec"] == spec
    # an explicit null means the default too, and the same spec again is "equal"
    again = client.post("/v1/curricula", json={**no_sampler(), "sampler": None,
                                              "exist_ok": True})
    assert again.status_code == 200
    assert again.json()["spec"] == spec
    run = client.post("/v1/curricula/math/runs", json={"run_id": "r"})
    assert run.status_code == 201
    batch = client.post("/v1/curricula/math/batches", json={"run_id": "r", "step": 0})
    assert batch.status_code == 200 and len(batch.json()["indices"]) == 8


def test_strategies_lists_builtins_with_params(sqlite_client: TestClient) -> None:
    response = sqlite_client.get("/v1/strategies")
    assert response.status_code == 200
    body = response.json()
    samplers = {s["name"]: s for s in body["samplers"]}
    weightings = {s["name"]: s for s in body["weightings"]}
    assert set(registry.available_samplers()) == set(samplers)
    assert set(registry.available_weightings()) == set(weightings)
    assert [n for n, s in samplers.items() if s["default"]] == [DEFAULT_SAMPLER.kind]
    assert [n for n, s in weightings.items() if s["default"]] == [DEFAULT_WEIGHTING.kind]
    assert body["default_sampler"]["kind"] == DEFAULT_SAMPLER.kind
    dump = {p["name"]: p for p in samplers["dump_ucb"]["params"]}
    assert dump["window"] == {"name": "window", "type": "int", "default": 300,
                              "required": False, "choices": None}
    assert dump["allocation"]["choices"] == ["multinomial", "largest_remainder"]
    assert samplers["uniform"]["origin"] == "builtin"
    assert samplers["uniform"]["description"].startswith("`uniform`")
    hyper = {p["name"]: p for p in weightings["hypervolume"]["params"]}
    assert hyper["weights"]["type"] == "list[float] | None"
    # each listed default is what a spec naming only the kind gets
    created = sqlite_client.post("/v1/curricula", json={**SPEC, "sampler": "temperature"})
    canonical = created.json()["spec"]["sampler"]["params"]
    listed = {p["name"]: p["default"] for p in samplers["temperature"]["params"]}
    assert canonical == listed


def test_runtime_registered_plugin_appears(sqlite_client: TestClient,
                                           registered: None) -> None:
    body = sqlite_client.get("/v1/strategies").json()
    tilt = next(s for s in body["samplers"] if s["name"] == TiltSampler.name)
    assert tilt["origin"] == "registered" and tilt["default"] is False
    assert tilt["description"].startswith("A third-party sampler")
    params = {p["name"]: p for p in tilt["params"]}
    assert params["tilt"]["type"] == "float" and params["tilt"]["default"] == 0.5
    assert params["band"] == {"name": "band", "type": "list[float]", "default": [0.2, 0.8],
                              "required": False, "choices": None}


def test_entry_point_plugin_appears(sqlite_client: TestClient, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "listed_plugin.py").write_text(
        "from paceline_server.strategies.samplers.uniform import UniformSampler\n"
        "class ListedSampler(UniformSampler):\n"
        "    '''Listed through an entry point.'''\n"
        "    name = 'listed_plugin'\n")
    dist = tmp_path / "listed_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: listed-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[paceline.samplers]\nlisted_plugin = listed_plugin:ListedSampler\n"
        "broken_plugin = listed_plugin:Missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    body = sqlite_client.get("/v1/strategies").json()
    samplers = {s["name"]: s for s in body["samplers"]}
    assert samplers["listed_plugin"]["origin"] == "plugin"
    assert samplers["listed_plugin"]["description"] == "Listed through an entry point."
    assert samplers["broken_plugin"]["error"]  # listed with why, not a 500
    assert samplers["broken_plugin"]["params"] == []


def test_strategies_needs_a_token_when_auth_is_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'auth.db'}"
    with make_client(url, api_tokens={"reader": "read"}) as client:
        assert client.get("/v1/strategies").status_code == 401
        ok = client.get("/v1/strategies", headers={"Authorization": "Bearer reader"})
        assert ok.status_code == 200

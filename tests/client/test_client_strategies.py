"""`Client.strategies()` (sync, async, embedded, gRPC) and the default sampler a
curriculum gets when the client names none (the client no longer sends `uniform`)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

import paceline
from paceline._payloads import curriculum_spec
from paceline_server.domain.spec import DEFAULT_SAMPLER
from paceline_server.strategies import registry
from paceline_server.strategies.samplers.uniform import UniformSampler
from support import CLIENT_SPEC as SPEC

NO_SAMPLER: dict[str, Any] = {k: v for k, v in SPEC.items() if k != "sampler"}


class ClientListedSampler(UniformSampler):
    """Registered at run time by the client test."""

    name = "client_listed_sampler"


def check_catalog(catalog: paceline.StrategyCatalog) -> None:
    assert catalog.default_sampler["kind"] == DEFAULT_SAMPLER.kind
    assert catalog.sampler(DEFAULT_SAMPLER.kind).default
    assert not catalog.sampler("uniform").default
    assert catalog.sampler(ClientListedSampler.name).origin == "registered"
    window = next(p for p in catalog.sampler("dump_ucb").params if p.name == "window")
    assert (window.type, window.default) == ("int", 300)
    assert {w.name for w in catalog.weightings} == set(registry.available_weightings())
    with pytest.raises(KeyError):
        catalog.sampler("nope")


@pytest.fixture
def listed() -> Any:
    registry.register_sampler(ClientListedSampler)
    yield
    registry._registered_samplers.pop(ClientListedSampler.name, None)


def test_spec_leaves_sampler_out_when_none_is_given() -> None:
    spec = curriculum_spec("m", distributions={"a": 3}, objectives=["acc"])
    assert "sampler" not in spec and "weighting" not in spec
    chosen = curriculum_spec("m", distributions={"a": 3}, objectives=["acc"],
                             sampler="uniform", weighting="fixed")
    assert (chosen["sampler"], chosen["weighting"]) == ("uniform", "fixed")


def test_embedded_sync(embedded: paceline.Client, listed: None) -> None:
    catalog = embedded.strategies()
    check_catalog(catalog)
    cur = embedded.create_curriculum("math", **NO_SAMPLER)
    assert cur.spec["sampler"] == catalog.default_sampler
    again = embedded.create_curriculum("math", **NO_SAMPLER, exist_ok=True)
    assert again.info == cur.info


def test_async(tmp_path: Path, listed: None) -> None:
    async def body() -> None:
        async with paceline.AsyncClient.embedded(tmp_path / "a.db") as client:
            catalog = await client.strategies()
            check_catalog(catalog)
            cur = await client.create_curriculum("math", **NO_SAMPLER)
            assert cur.spec["sampler"] == catalog.default_sampler

    asyncio.run(asyncio.wait_for(body(), timeout=60))


def test_grpc(tmp_path: Path, listed: None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "grpc"))
    from test_grpc_server import start

    server, service = start(tmp_path)
    try:
        with paceline.Client(f"grpc://127.0.0.1:{server.port}") as client:
            catalog = client.strategies()
            check_catalog(catalog)
            cur = client.create_curriculum("math", **NO_SAMPLER)
            assert cur.spec["sampler"] == catalog.default_sampler
    finally:
        server.stop(0)
        service.store.close()

"""ListStrategies and the default sampler over gRPC (raw stubs, as any language sees it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from test_grpc_server import Raw, error_of, spec, start

from paceline_server.domain.spec import DEFAULT_SAMPLER
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.strategies import registry
from paceline_server.strategies.samplers.uniform import UniformSampler


class GrpcListedSampler(UniformSampler):
    """Registered at run time by the test."""

    name = "grpc_listed_sampler"


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Raw]:
    server, service = start(tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield Raw(channel)
    server.stop(0)
    service.store.close()


def test_create_without_sampler_gets_the_default(raw: Raw) -> None:
    body = json.loads(spec())
    del body["sampler"]
    created = raw("CreateCurriculum", pb.CreateCurriculumRequest(spec_json=json.dumps(body)))
    stored = json.loads(created.curriculum.spec_json)["sampler"]
    listing = raw("ListStrategies", pb.ListStrategiesRequest())
    assert stored["kind"] == DEFAULT_SAMPLER.kind
    assert stored == json.loads(listing.default_sampler_json)


def test_list_strategies(raw: Raw) -> None:
    registry.register_sampler(GrpcListedSampler)
    try:
        listing = raw("ListStrategies", pb.ListStrategiesRequest())
    finally:
        registry._registered_samplers.pop(GrpcListedSampler.name, None)
    samplers = {s.name: s for s in listing.samplers}
    assert set(registry.available_samplers()) | {GrpcListedSampler.name} == set(samplers)
    assert [s.name for s in listing.samplers if s.is_default] == [DEFAULT_SAMPLER.kind]
    assert samplers[GrpcListedSampler.name].origin == "registered"
    window = next(p for p in samplers["dump_ucb"].params if p.name == "window")
    assert (window.type, json.loads(window.default_json), window.choices_json) == \
        ("int", 300, "")
    allocation = next(p for p in samplers["dump_ucb"].params if p.name == "allocation")
    assert json.loads(allocation.choices_json) == ["multinomial", "largest_remainder"]
    assert {w.name for w in listing.weightings} == set(registry.available_weightings())


def test_list_strategies_is_a_read(tmp_path: Path) -> None:
    server, service = start(tmp_path, api_tokens={"reader": "read"})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.RpcError) as info:
                Raw(channel)("ListStrategies", pb.ListStrategiesRequest())
            assert error_of(info)[0] == grpc.StatusCode.UNAUTHENTICATED
            listing = Raw(channel, "reader")("ListStrategies", pb.ListStrategiesRequest())
            assert listing.samplers
    finally:
        server.stop(0)
        service.store.close()

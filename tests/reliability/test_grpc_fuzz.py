"""A bounded gRPC fuzz of every RPC, the counterpart of `test_schema_fuzz` (schemathesis on
REST): hypothesis fills each request message from its descriptor (identifiers biased to
an existing curriculum and run, hostile text, extreme integers, packed arrays of random
shapes, JSON fields), and no answer may be INTERNAL or UNKNOWN: every refusal is a status
from the shared error table. `PACELINE_FUZZ_EXAMPLES` raises the number of examples."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paceline_server.app.service import PacelineService
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.store import open_store

EXAMPLES = int(os.environ.get("PACELINE_FUZZ_EXAMPLES", "30"))
SERVICE = pb.DESCRIPTOR.services_by_name["Paceline"]
SPEC = {"name": "math", "objectives": ["acc", {"name": "len", "bounds": [0, 100]}],
        "layout": {"distributions": [{"name": "a", "size": 6}, {"name": "b", "size": 4}]},
        "sampler": "uniform", "weighting": {"kind": "fixed", "weights": [1, 1]},
        "batch_size": 2}
INT64 = 2**63 - 1

identifiers = st.one_of(
    st.sampled_from(["math", "r", "", "nope", "a\x00b", "tab\tx", "x" * 129, "é🚀"]),
    st.text(max_size=12))
text = st.one_of(identifiers, st.text(max_size=40))
json_text = st.one_of(
    st.sampled_from(["", "{}", "[]", "null", "{", '{"a": NaN}', '{"a": 1e400}',
                     '{"a": "\\ud800"}', '{"a": "\\u0000"}', json.dumps(SPEC),
                     json.dumps({**SPEC, "sampler": {"kind": "dump_ucb", "c": 1e308}}),
                     json.dumps({**SPEC, "exist_ok": "yes"}),
                     json.dumps({**SPEC, "layout": {"distributions": [
                         {"name": "a", "size": 2**31 - 1}]}, "sampler": "prioritized"})]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                 lambda children: st.lists(children, max_size=3)
                 | st.dictionaries(st.text(max_size=5), children, max_size=3),
                 max_leaves=8).map(lambda v: json.dumps(v, allow_nan=True)))
integers = st.one_of(st.sampled_from([0, 1, -1, 2, 2**31, 2**53, 2**53 - 1, 2**62, INT64,
                                      -INT64 - 1]), st.integers(-INT64 - 1, INT64))
floats = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e308, float("inf"), float("nan"),
                                    1e6, 1e7]), st.floats(width=64))


def values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kinds = {FieldDescriptor.TYPE_STRING: text, FieldDescriptor.TYPE_BOOL: st.booleans(),
             FieldDescriptor.TYPE_DOUBLE: floats,
             FieldDescriptor.TYPE_FLOAT: floats.filter(lambda f: abs(f) < 3e38 or f != f),
             FieldDescriptor.TYPE_INT64: integers,
             FieldDescriptor.TYPE_INT32: integers.map(lambda i: max(min(i, 2**31 - 1),
                                                                    -(2**31)))}
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.name.endswith("_json"):
        return json_text
    if field.name in ("name", "curriculum", "run_id", "idempotency_key", "confirm"):
        return identifiers
    if field.name in ("step", "next_step", "size", "next_size", "limit", "offset"):
        small = st.one_of(st.integers(0, 4), integers)
        if field.type == FieldDescriptor.TYPE_INT32:
            return small.map(lambda i: max(min(i, 2**31 - 1), -(2**31)))
        return small
    return kinds.get(field.type, st.none())


def messages(descriptor: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """A message of `descriptor` with a random subset of its fields set."""
    cls = _class(descriptor)
    if depth > 2 or descriptor.GetOptions().map_entry:
        return st.just(cls())
    fields = [f for f in descriptor.fields]

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        message = cls()
        for field in fields:
            if not draw(st.booleans()):
                continue
            strategy = values(field, depth)
            if field.is_repeated:
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    continue
                items = draw(st.lists(strategy, max_size=6))
                container = getattr(message, field.name)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in items:
                        container.add().CopyFrom(item)
                else:
                    container.extend(items)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(draw(strategy))
            else:
                setattr(message, field.name, draw(strategy))
        return message

    return build()


def _class(descriptor: Any) -> Any:
    names = descriptor.full_name.split(".")[2:]  # paceline.v1.Outer.Inner
    cls: Any = pb
    for name in names:
        cls = getattr(cls, name)
    return cls


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'f.db'}"
    config = Settings(database_url=url, max_state_bytes=64 * 1024**2)
    service = PacelineService(open_store(url, auto_migrate=True), config)
    service.create_curriculum(SPEC)
    service.attach_run("math", run_id="r")
    server = create_server(service, config, port=0, host="127.0.0.1")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened
    server.stop(0)
    service.close()
    service.store.close()


METHODS = [m for m in SERVICE.methods if m.name != "DeleteCurriculum"]


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_no_request_gets_an_internal_error(channel: grpc.Channel, method: Any) -> None:
    call = channel.unary_unary(f"/{SERVICE.full_name}/{method.name}",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=lambda raw: raw)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture])
    @given(request=messages(method.input_type))
    def check(request: Any) -> None:
        try:
            call(request, timeout=20)
        except grpc.RpcError as exc:
            error: Any = exc
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                method.name, request, error.details())

    check()

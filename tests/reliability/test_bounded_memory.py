"""Bounded memory (issue 18, F6): every strategy estimates its state from the spec, create
refuses a curriculum over `PACELINE_MAX_STATE_BYTES` before allocating anything (REST and
gRPC), the engine cache is bounded in bytes, and a snapshot that cannot be encoded never
fails the report it is due at."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from api_support import make_client
from paceline_server.app.engines import EngineCache, estimate_state_bytes
from paceline_server.app.service import PacelineService
from paceline_server.cli import main
from paceline_server.domain import CurriculumSpec
from paceline_server.domain.errors import InvalidSpec, StateTooLarge
from paceline_server.domain.report import Report
from paceline_server.engine import CurriculumEngine
from paceline_server.grpc.server import create_server
from paceline_server.grpc.v1 import paceline_pb2 as pb
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.strategies import registry
from paceline_server.strategies.registry import (
    available_samplers,
    available_weightings,
    build_weighting,
)
from paceline_server.strategies.samplers.uniform import UniformSampler
from paceline_server.strategies.state_codec import state_nbytes

N = 40_000
OBJECTIVES = ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}]
REQUIRED: dict[str, dict[str, Any]] = {"fixed_mix": {"probabilities": [0.4, 0.3, 0.2, 0.1]}}


def spec(sampler: Any, weighting: Any = "fixed", sizes: tuple[int, ...] = (N // 2, N // 4,
                                                                            N // 8, N // 8),
         **extra: Any) -> dict[str, Any]:
    return {"name": "m", "objectives": OBJECTIVES, "sampler": sampler, "weighting": weighting,
            "layout": {"distributions": [{"name": f"d{i}", "size": s}
                                         for i, s in enumerate(sizes)]},
            "batch_size": 8, **extra}


CASES = ([{"kind": s, **REQUIRED.get(s, {})} for s in available_samplers()]
         + [{"kind": "spard", "per_sample": True}, {"kind": "prioritized", "h": 50.0},
            {"kind": "dump_ucb", "window": 5000}])


@pytest.mark.parametrize("sampler", CASES, ids=[json.dumps(c) for c in CASES])
@pytest.mark.parametrize("zero_variance", [None, {"threshold": 0.9}], ids=["", "zv"])
def test_the_estimate_covers_the_state_and_is_close(sampler: dict[str, Any],
                                                    zero_variance: Any) -> None:
    extra = {} if zero_variance is None else {"zero_variance": zero_variance}
    parsed = CurriculumSpec.from_dict(spec(sampler, **extra))
    engine = CurriculumEngine(parsed)
    actual = engine.state_bytes_per_sample() * N
    estimate = estimate_state_bytes(parsed)
    assert actual <= estimate <= 1.1 * actual + 128 * 1024, (actual, estimate)
    # The state after a report is no larger than at create (arrays are updated in place).
    batch = engine.next_batch("r", 0)
    engine.apply(Report.dense(run_id="r", step=0, indices=batch.indices,
                              rewards=np.ones((batch.indices.size, 2, 2)),
                              layout=parsed.layout, num_objectives=2))
    assert engine.state_bytes_per_sample() * N <= estimate


@pytest.mark.parametrize("weighting", available_weightings())
def test_weightings_estimate_their_state(weighting: str) -> None:
    parsed = CurriculumSpec.from_dict(spec({"kind": "uniform"}, {"kind": weighting}))
    engine = CurriculumEngine(parsed)
    assert engine.state_bytes_per_sample() * N <= estimate_state_bytes(parsed)


WEIGHTINGS = ([{"kind": w} for w in available_weightings()]
              + [{"kind": "hypervolume", "capacity": 4096}])


@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=[json.dumps(w) for w in WEIGHTINGS])
@pytest.mark.parametrize("objectives", [1, 2, 8, 64])
def test_each_weighting_estimate_covers_its_own_state(weighting: dict[str, Any],
                                                      objectives: int) -> None:
    """Measured on the weighting's state alone: the slack of the engine's other parts
    hid a hypervolume front of `capacity` points left out of the estimate (2 MiB at
    capacity 4096 and 64 objectives, estimated at 0.6 MiB)."""
    names = [f"o{i}" for i in range(objectives)]
    parsed = CurriculumSpec.from_dict({**spec({"kind": "uniform"}, weighting),
                                       "objectives": names})
    built = build_weighting(parsed.weighting, parsed.objectives)
    actual = state_nbytes(built.init_state(np.random.default_rng(0)))
    assert actual <= built.state_bytes(), (actual, built.state_bytes())


HUGE = {
    "prioritized-2^31": spec({"kind": "prioritized"}, sizes=(2**31 - 1,)),
    "dump-ucb-wide-window": spec({"kind": "dump_ucb", "window": 100_000},
                                 sizes=(10,) * 10_000),
    "spard-10^9": spec({"kind": "spard", "per_sample": True}, sizes=(10**9,)),
}


@pytest.mark.parametrize("data", HUGE.values(), ids=HUGE.keys())
def test_an_oversized_curriculum_is_refused_before_anything_is_allocated(
        tmp_path: Path, data: dict[str, Any]) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    service = PacelineService(open_store(url, auto_migrate=True), Settings(database_url=url))
    try:
        tracemalloc.start()
        with pytest.raises(StateTooLarge) as refused:
            service.create_curriculum(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 64 * 1024**2  # the spec is parsed and estimated, nothing built
        assert refused.value.details["estimate_bytes"] > service.settings.max_state_bytes
        assert "GiB" in refused.value.message
        assert service.list_curricula() == []
    finally:
        service.close()
        service.store.close()


@pytest.fixture
def small_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PACELINE_MAX_STATE_BYTES", str(4 * 1024**2))
    return f"sqlite:///{tmp_path / 'b.db'}"


def test_the_budget_is_configurable_and_named_over_rest(small_budget: str) -> None:
    with make_client(small_budget) as client:
        assert client.app.state.settings.max_state_bytes == 4 * 1024**2
        too_big = client.post("/v1/curricula", json=spec({"kind": "prioritized"},
                                                         sizes=(10**6,)))
        assert too_big.status_code == 422, too_big.text
        error = too_big.json()["error"]
        assert error["code"] == "STATE_TOO_LARGE"
        assert error["details"]["budget_bytes"] == 4 * 1024**2
        assert error["details"]["estimate_bytes"] > 4 * 1024**2
        assert client.get("/v1/curricula").json()["curricula"] == []
        fits = client.post("/v1/curricula", json=spec({"kind": "dump_ucb"}, sizes=(10**6,)))
        assert fits.status_code == 201, fits.text


def test_grpc_refuses_an_oversized_curriculum_with_the_same_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'g.db'}"
    config = Settings(database_url=url, max_state_bytes=4 * 1024**2)
    service = PacelineService(open_store(url, auto_migrate=True), config)
    server = create_server(service, config, port=0, host="127.0.0.1")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            create = channel.unary_unary(
                "/paceline.v1.Paceline/CreateCurriculum",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.CreateCurriculumResponse.FromString)
            with pytest.raises(grpc.RpcError) as info:
                create(pb.CreateCurriculumRequest(spec_json=json.dumps(
                    spec({"kind": "prioritized"}, sizes=(10**6,)))), timeout=10)
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        trailer = dict(error.trailing_metadata())
        assert pb.ErrorInfo.FromString(trailer["paceline-error-bin"]).code == "STATE_TOO_LARGE"
    finally:
        server.stop(0)
        service.close()
        service.store.close()


# ------------------------------------------------------------------ distributions
def test_more_distributions_than_the_limit_are_refused(tmp_path: Path) -> None:
    """What a request reads per distribution (state, explanations, history) grows with
    their number: 500 000 held the process for a minute per state read, slowing every
    other curriculum. The default limit is 10 000."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    service = PacelineService(open_store(url, auto_migrate=True), Settings(database_url=url))
    try:
        assert service.settings.max_distributions == 10_000
        with pytest.raises(InvalidSpec) as refused:
            service.create_curriculum(spec("uniform", sizes=(1,) * 10_001))
        assert refused.value.code == "INVALID_SPEC"
        assert refused.value.details == {"field": "layout", "distributions": 10_001,
                                         "limit": 10_000}
        assert "PACELINE_MAX_DISTRIBUTIONS" in refused.value.message
        assert service.list_curricula() == []
        assert service.create_curriculum(spec("uniform", sizes=(1,) * 10_000)).created
    finally:
        service.close()
        service.store.close()


def test_the_distribution_limit_is_configurable_and_holds_for_imports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client(f"sqlite:///{tmp_path / 'a.db'}") as source:
        assert source.post("/v1/curricula", json=spec("uniform")).status_code == 201
        exported = source.get("/v1/curricula/m/export").content
    monkeypatch.setenv("PACELINE_MAX_DISTRIBUTIONS", "3")
    with make_client(f"sqlite:///{tmp_path / 'b.db'}") as client:
        too_many = client.post("/v1/curricula", json=spec("uniform"))  # 4 distributions
        assert too_many.status_code == 422, too_many.text
        assert too_many.json()["error"]["code"] == "INVALID_SPEC"
        assert too_many.json()["error"]["details"]["limit"] == 3
        imported = client.post("/v1/imports", content=exported,
                               headers={"Content-Type": "application/x-ndjson"})
        assert imported.status_code == 422, imported.text
        assert imported.json()["error"]["code"] == "INVALID_SPEC"
        assert client.get("/v1/curricula").json()["curricula"] == []
        fits = client.post("/v1/curricula", json=spec("uniform", sizes=(10, 10, 10)))
        assert fits.status_code == 201, fits.text


def test_a_cli_import_judges_the_limits_before_building_the_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`paceline-server import FILE` read the export, building its engine, before the
    service's limits were asked: an oversized export took its whole state's memory (or
    failed with MemoryError) before STATE_TOO_LARGE; the API judged it first."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    source = PacelineService(open_store(url, auto_migrate=True), Settings(database_url=url))
    try:
        source.create_curriculum(spec({"kind": "prioritized"}, sizes=(1_000_000,)))
    finally:
        source.close()
        source.store.close()
    exported = tmp_path / "m.jsonl"
    out = io.StringIO()
    assert main(["--database-url", url, "export", "m"], out=out) == 0
    exported.write_text(out.getvalue())
    monkeypatch.setenv("PACELINE_MAX_STATE_BYTES", str(4 * 1024**2))
    other = f"sqlite:///{tmp_path / 'other.db'}"
    capsys.readouterr()
    tracemalloc.start()
    try:
        status = main(["--database-url", other, "import", str(exported)], out=io.StringIO())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 2 and capsys.readouterr().err.startswith("error STATE_TOO_LARGE")
    assert peak < 8 * 1024**2, peak  # the state (about 24 MiB) is never built


# ------------------------------------------------------------------ the engine cache
def test_the_engine_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    store = open_store(url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=url))
    try:
        names = []
        for i, size in enumerate((200_000, 100_000, 300_000)):
            data = {**spec({"kind": "prioritized"}, sizes=(size,)), "name": f"c{i}"}
            service.create_curriculum(data)
            names.append(f"c{i}")
        sizes = [estimate_state_bytes(CurriculumSpec.from_dict(store.get_curriculum(n).spec))
                 for n in names]
        cache = EngineCache(store, capacity=64, max_bytes=sizes[0] + sizes[1])
        for name in names[:2]:
            cache.entry(store.head(name))
        assert [n for n, _ in cache.engines()] == names[:2]
        assert cache.nbytes == sizes[0] + sizes[1]
        cache.entry(store.head(names[0]))  # used again: c1 is now the least recent
        cache.entry(store.head(names[2]))  # over the budget: c1 then c0 go
        assert [n for n, _ in cache.engines()] == [names[2]]  # the newest always stays
        assert cache.nbytes == sizes[2]
        cache.forget(names[2])
        assert cache.nbytes == 0 and cache.engines() == []
    finally:
        service.close()
        store.close()


@dataclass
class _HoardState:
    scores: np.ndarray  # float64 [N]: per-sample, which the default estimate leaves out


class _HoardingSampler(UniformSampler):
    """A plug-in keeping 8 bytes per sample without overriding `state_bytes`."""

    name = "hoarding"
    state_type = _HoardState  # type: ignore[assignment]

    def init_state(self, rng: np.random.Generator) -> Any:
        return _HoardState(np.zeros(self.layout.num_samples))


def test_the_cache_counts_a_plugin_state_bigger_than_its_estimate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.SAMPLERS.registered, "hoarding", _HoardingSampler)
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = open_store(url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=url))
    try:
        for name in ("p0", "p1"):
            service.create_curriculum({**spec({"kind": "hoarding"}, sizes=(200_000,)),
                                       "name": name})
        estimate = estimate_state_bytes(CurriculumSpec.from_dict(store.get_curriculum("p0").spec))
        assert estimate < 8 * 200_000  # the plug-in's estimate misses its array
        cache = EngineCache(store, capacity=64, max_bytes=int(1.5 * 8 * 200_000))
        first = cache.entry(store.head("p0"))
        real = first.engine.state_bytes_per_sample() * 200_000
        assert first.nbytes >= real and cache.nbytes == first.nbytes
        cache.entry(store.head("p1"))  # two real states are over the budget: p0 goes
        assert [name for name, _ in cache.engines()] == ["p1"]
        assert cache.nbytes <= cache.max_bytes  # type: ignore[operator]
    finally:
        service.close()
        store.close()


# ------------------------------------------------------------------ snapshots
def test_a_snapshot_out_of_memory_never_fails_its_report(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url, auto_migrate=True)
    service = PacelineService(store, Settings(database_url=url, snapshot_every=2))
    try:
        service.create_curriculum(spec({"kind": "uniform"}, sizes=(100,)))
        service.attach_run("m", run_id="r")
        cached = service.engine("m")

        real_pieces = cached.engine.snapshot_pieces

        def no_memory() -> Iterator[memoryview]:
            """Runs out half-way: the pieces already stored must be rolled back."""
            pieces = real_pieces()
            yield next(pieces)
            yield next(pieces)
            raise MemoryError

        monkeypatch.setattr(cached.engine, "snapshot_pieces", no_memory)
        monkeypatch.setattr(store, "snapshot_chunk_bytes", 16)
        acks = []
        for step in range(2):
            batch = service.next_batch("m", "r", step)
            acks.append(service.report("m", {
                "run_id": "r", "step": step, "indices": batch.indices.tolist(),
                "rewards": [[[1.0, 3.0]]] * batch.indices.size}).seq)
        assert acks == [1, 2]  # seq 2 was due a snapshot, which was skipped
        assert store.latest_snapshot("m") is None
        with store.engine.connect() as conn:  # no orphaned chunk of the skipped snapshot
            assert conn.exec_driver_sql("SELECT count(*) FROM snapshot_chunks").scalar() == 0
        monkeypatch.undo()
        for step in (2, 3):
            batch = service.next_batch("m", "r", step)
            service.report("m", {"run_id": "r", "step": step,
                                 "indices": batch.indices.tolist(),
                                 "rewards": [[[0.0, 3.0]]] * batch.indices.size})
        snapshot = store.latest_snapshot("m")
        assert snapshot is not None and snapshot.seq == 4
    finally:
        service.close()
        store.close()


def test_a_refusal_just_over_the_budget_shows_the_difference() -> None:
    """'about 2.0 GiB of state, over this service's budget of 2.0 GiB' read as wrong."""
    from paceline_server.app.engines import check_state_budget, estimate_state_bytes
    from paceline_server.domain import CurriculumSpec
    from paceline_server.domain.errors import StateTooLarge

    spec = CurriculumSpec.from_dict({
        "name": "edge", "layout": {"distributions": [{"name": "a", "size": 122_474_000}]},
        "objectives": ["acc"]})
    estimate = estimate_state_bytes(spec)
    with pytest.raises(StateTooLarge) as refused:
        check_state_budget(spec, estimate - 1000)
    import re

    sizes = re.findall(r"\d+\.\d+ [KMG]iB", refused.value.message)
    assert len(sizes) == 2 and sizes[0] != sizes[1], refused.value.message

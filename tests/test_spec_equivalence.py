"""Two spellings of one curriculum are one spec for `exist_ok` and an import's merge: a
default named explicitly (the first objective as `primary_objective`, an allocation's
parameter at its default, `start` at steps // 2, `advantage_source` at what `auto`
selects) compares equal to leaving it out, in either order, and the stored spec keeps
what its creator asked. A value that means another curriculum is still a 409 naming it.

(`primary_objective` was compared as written: ["a", "b"] with and without
`primary_objective: "a"` was a 409 although both serve and fold alike.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from api_support import make_client
from cli_support import populated
from paceline_server.app.service import PacelineService
from paceline_server.app.strategies import strategy_catalog
from paceline_server.app.transfer import export_curriculum, import_curriculum, read_lines
from paceline_server.domain.errors import CurriculumExists
from paceline_server.settings import Settings
from paceline_server.store import open_store
from paceline_server.strategies import registry
from support import SPEC

BASE: dict[str, Any] = {
    "layout": {"distributions": [{"name": "easy", "size": 60}, {"name": "hard", "size": 40}]},
    "objectives": ["acc", {"name": "len", "direction": "minimize", "bounds": [0, 100]}],
    "batch_size": 8,
}
LEARNABILITY = {"kind": "learnability", "allocation": "dump_ucb"}

#: (id, one spelling, the other): each pair means the same curriculum.
EQUIVALENT: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("primary-objective", {}, {"primary_objective": "acc"}),
    ("allocation-param-at-default",
     {"sampler": LEARNABILITY},
     {"sampler": {**LEARNABILITY, "allocation_params": {"c": 1.0, "window": 300}}}),
    ("allocation-params-of-prioritized",
     {"sampler": "prioritized"},
     {"sampler": {"kind": "prioritized", "allocation_params": {"tau": 0.1}}}),
    ("temperature-start-at-half",
     {"sampler": {"kind": "temperature", "steps": 100}},
     {"sampler": {"kind": "temperature", "steps": 100, "start": 50}}),
    ("advantage-source-auto-with-two-objectives",
     {"sampler": "dump_ucb"},
     {"sampler": {"kind": "dump_ucb", "advantage_source": "primary"}}),
    ("advantage-source-auto-with-one-objective",
     {"sampler": "dump_ucb", "objectives": ["acc"]},
     {"sampler": {"kind": "dump_ucb", "advantage_source": "scalarized"},
      "objectives": ["acc"]}),
    # already equal before (the strategies' top-level defaults are spelled out when
    # stored): kept here so that a change to the comparison cannot lose them
    ("default-sampler-named", {}, {"sampler": LEARNABILITY}),
    ("sampler-param-at-default", {"sampler": "dump_ucb"},
     {"sampler": {"kind": "dump_ucb", "c": 1.0, "tau": 0.1, "window": 300}}),
    ("default-weighting-named", {}, {"weighting": {"kind": "fixed", "weights": None}}),
    ("objective-fields-at-defaults", {},
     {"objectives": [{"name": "acc", "direction": "maximize", "bounds": [0.0, 1.0],
                      "reference": None}, BASE["objectives"][1]]}),
    ("zero-variance-defaults", {"zero_variance": True},
     {"zero_variance": {"threshold": 0.9, "max_redraws": 3, "exact": False,
                        "explore": 0.5}}),
    ("seed-at-default", {}, {"seed": 0}),
]

#: (id, one spelling, the other, the differing path): each pair is two curricula.
DIFFERENT: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("another-primary-objective", {}, {"primary_objective": "len"}, "primary_objective"),
    ("allocation-param-off-default", {"sampler": LEARNABILITY},
     {"sampler": {**LEARNABILITY, "allocation_params": {"c": 2.0}}},
     "sampler.params.allocation_params.c"),
    ("temperature-start-elsewhere", {"sampler": {"kind": "temperature", "steps": 100}},
     {"sampler": {"kind": "temperature", "steps": 100, "start": 10}},
     "sampler.params.start"),
    ("advantage-source-other-than-auto", {"sampler": "dump_ucb"},
     {"sampler": {"kind": "dump_ucb", "advantage_source": "scalarized"}},
     "sampler.params.advantage_source"),
    # equal weights spelled out: the same numbers once normalised, but a choice of
    # weights the stored curriculum did not make; left a difference (docs/algorithms.md)
    ("weights-given", {}, {"weighting": {"kind": "fixed", "weights": [1, 1]}},
     "weighting.params.weights"),
    ("another-seed", {}, {"seed": 3}, "seed"),
]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[PacelineService]:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    service = PacelineService(open_store(url, auto_migrate=True), Settings(database_url=url))
    yield service
    service.store.close()


def spec(name: str, change: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "name": name, **change}


@pytest.mark.parametrize(("first", "second"), [(0, 1), (1, 0)], ids=["as-is", "swapped"])
@pytest.mark.parametrize(("case", "one", "other"), EQUIVALENT, ids=[c[0] for c in EQUIVALENT])
def test_equivalent_spellings_are_one_curriculum(service: PacelineService, case: str,
                                                 one: dict[str, Any], other: dict[str, Any],
                                                 first: int, second: int) -> None:
    pair = (one, other)
    created = service.create_curriculum(spec("c", pair[first]))
    again = service.create_curriculum(spec("c", pair[second]), exist_ok=True)
    assert not again.created
    assert again.record.spec == created.record.spec  # the stored spec is the first's
    assert service.get_curriculum("c").spec == created.record.spec


@pytest.mark.parametrize(("case", "one", "other", "path"), DIFFERENT,
                         ids=[c[0] for c in DIFFERENT])
def test_a_real_difference_is_still_a_conflict(service: PacelineService, case: str,
                                               one: dict[str, Any], other: dict[str, Any],
                                               path: str) -> None:
    for first, second in ((one, other), (other, one)):
        name = "a" if first is one else "b"
        service.create_curriculum(spec(name, first))
        with pytest.raises(CurriculumExists) as refused:
            service.create_curriculum(spec(name, second), exist_ok=True)
        assert refused.value.details["differing"] == [path]


def test_exist_ok_over_rest_with_the_primary_objective_named(tmp_path: Path) -> None:
    with make_client(f"sqlite:///{tmp_path / 'r.db'}") as client:
        assert client.post("/v1/curricula", json=SPEC).status_code == 201
        named = {**SPEC, "primary_objective": "acc", "exist_ok": True}
        again = client.post("/v1/curricula", json=named)
        assert again.status_code == 200, again.text
        assert again.json()["spec"]["primary_objective"] is None  # as first stored
        other = client.post("/v1/curricula", json={**named, "primary_objective": "len"})
        assert other.status_code == 409
        assert other.json()["error"]["details"]["differing"] == ["primary_objective"]


def test_an_export_merges_into_the_same_curriculum_spelled_otherwise(tmp_path: Path) -> None:
    """The merge of an export compares specs as `exist_ok` does."""
    source = populated(f"sqlite:///{tmp_path / 'a.db'}", reports=3)
    data = b"".join(orjson.dumps(orjson.loads(line)) + b"\n"
                    for line in export_curriculum(source, "math"))
    url = f"sqlite:///{tmp_path / 'b.db'}"
    target = PacelineService(open_store(url, auto_migrate=True), Settings(database_url=url))
    target.create_curriculum({**SPEC, "primary_objective": "acc"})
    merged = import_curriculum(target, read_lines(data.splitlines()), merge=True)
    assert merged.reports_added == 3
    assert target.get_curriculum("math").spec["primary_objective"] == "acc"


@pytest.mark.parametrize("sampler", [LEARNABILITY, {"kind": "prioritized"}, None],
                         ids=["learnability", "prioritized", "default"])
def test_an_allocation_s_parameters_are_stored_spelled_out(
        service: PacelineService, sampler: dict[str, Any] | None) -> None:
    """As the sampler's own parameters are: every one stored with its value, so that a
    later release changing an allocation's default leaves the curriculum as created
    (they were stored as given, `{}`, and read with whatever defaults the code had)."""
    given = {} if sampler is None else {"sampler": {**sampler,
                                                    "allocation_params": {"c": 2.0}}}
    stored = service.create_curriculum(spec("c", given)).record.spec["sampler"]["params"]
    allocation = stored["allocation"]
    fields = {f.name for f in dataclasses.fields(
        registry.sampler_class(allocation).params_type)}
    assert set(stored["allocation_params"]) == fields
    assert stored["allocation_params"]["c"] == (1.0 if sampler is None else 2.0)
    if sampler is None:  # what /v1/strategies says a curriculum without one gets
        assert service.create_curriculum(spec("d", {})).record.spec["sampler"] == \
            strategy_catalog().default_sampler


def test_a_curriculum_stored_with_allocation_params_as_given_is_the_same_curriculum(
        service: PacelineService) -> None:
    """One stored by an earlier release ({} for the allocation's defaults) and a create
    of the same spec now (spelled out) are one curriculum for `exist_ok`."""
    old = service.create_curriculum(spec("c", {"sampler": LEARNABILITY})).record.spec
    old = {**old, "sampler": {**old["sampler"], "params": {
        **old["sampler"]["params"], "allocation_params": {}}}}
    service.store.delete_curriculum("c")
    service.store.create_curriculum("c", old)
    again = service.create_curriculum(spec("c", {"sampler": LEARNABILITY}), exist_ok=True)
    assert not again.created
    assert again.record.spec["sampler"]["params"]["allocation_params"] == {}

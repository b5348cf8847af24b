"""The fast lane's choice (tests/fast_lane.py): which tests `-m "not slow"` leaves out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fast_lane import TESTS, is_slow, path_is_slow


def item(path: str, name: str = "test_x", **params: Any) -> Any:
    callspec = SimpleNamespace(params=params) if params else None
    return SimpleNamespace(fspath=TESTS / path, callspec=callspec, originalname=name,
                           name=f"{name}[p]" if params else name)


def test_unit_tests_and_sqlite_runs_stay_in_the_fast_lane() -> None:
    assert not is_slow(item("test_engine.py"))
    assert not is_slow(item("api/test_api.py", database_url="sqlite"))
    assert not is_slow(item("store/test_store_contract.py", migrated="sqlite", n=3))


def test_processes_trainers_benchmarks_and_postgresql_twins_are_slow() -> None:
    assert is_slow(item("grpc/test_grpc_server.py"))
    assert is_slow(item("examples/test_example_grpo_math.py"))
    assert is_slow(item("test_benchmarks_smoke.py"))
    assert is_slow(item("store/test_store_concurrency.py"))
    assert is_slow(item("api/test_api.py", database_url="postgresql"))
    assert is_slow(item("test_sumtree.py", "test_single_draw_frequencies"))
    assert not is_slow(item("test_sumtree.py", "test_draws_are_unique_in_range"))


def test_files_outside_the_tests_folder_are_left_alone() -> None:
    assert not is_slow(item(str(Path("/") / "elsewhere" / "test_x.py")))


def test_folders_and_files_of_slow_tests_are_not_collected() -> None:
    assert path_is_slow(TESTS / "integrations")
    assert path_is_slow(TESTS / "grpc" / "test_grpc_server.py")
    assert path_is_slow(TESTS / "test_docs.py")
    assert not path_is_slow(TESTS / "api")
    assert not path_is_slow(TESTS / "test_sumtree.py")  # one slow test among fast ones
    assert not path_is_slow(TESTS)


def test_auto_workers_follow_the_cores_up_to_the_cap(monkeypatch: Any) -> None:
    """`-n auto` (the README's test command) starts one worker per usable core, at most
    MAX_WORKERS: each holds torch, service processes and database sessions."""
    import os

    import workers

    for cores, expected in [(1, 1), (2, 2), (3, 3), (64, workers.MAX_WORKERS)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)),
                            raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda n=cores: n)
        assert workers.auto_workers() == expected
    assert workers.MAX_WORKERS == 4

"""The fast lane's choice: `pytest -m "not slow"` leaves out what starts processes or
servers, drives whole trainers, benchmarks, fuzzes, or repeats a test on PostgreSQL that
also runs on SQLite. CI runs everything (plain `pytest`); the marks only choose what a
developer runs between edits. `conftest.py` applies `is_slow` to every collected test; a
test file can still mark itself (`pytestmark = pytest.mark.slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
#: The mark expression of the fast lane.
FAST_LANE = "not slow"
#: Folders whose tests are all slow: server processes (grpc, replicas, client
#: processes), whole trainers (examples, integrations), fault injection and fuzzing
#: (reliability), image and chart builds (deploy), a browser (ui).
SLOW_FOLDERS = {"deploy", "examples", "grpc", "integrations", "reliability", "replicas", "ui"}
#: Files elsewhere that are slow for the same reasons.
SLOW_FILES = {
    "test_benchmarks_smoke.py", "test_history_bench_smoke.py", "test_peers_smoke.py",
    "test_weighting_bench.py", "test_learner_suite.py",  # benchmark scripts, tiny runs
    "test_weighting_trainer.py",
    "test_cli_remote.py", "test_process.py", "test_client_process.py",  # servers
    "test_concurrency.py", "test_store_concurrency.py",  # threads against PostgreSQL
    "test_docs.py",  # the docs' examples against a service it starts
    # whole-service scenarios the core API tests already touch once: the full ASGI stack
    # in-process per case, long replays, every transport per case
    "test_history.py", "test_exact_resume.py", "test_transfer_api.py",
    "test_client_embedded.py", "test_client_exact_resume.py", "test_client_history.py",
    "test_input_edges.py", "test_cross_site.py",  # an app per case, as test_api's twins
    "test_allowed_hosts.py",  # an app (or a `serve`) per case, as test_cross_site
    "test_history_budget.py",  # long, wide histories read both ways per case
    "test_store_listing_plan.py", "test_store_upgrade_data.py",  # 20k-row tables;
    # databases built at old revisions and upgraded
}
#: Single slow tests in otherwise fast files (file name :: test name, any parameters):
#: trainer libraries driven end to end, a statistical test of many draws, a subprocess.
SLOW_TESTS = {
    "test_scalarize.py::test_verl_served_weights_score",
    "test_scalarize.py::test_trl_reward_function",
    "test_scalarize.py::test_torch_step_scalarize",  # loads torch; Step.scalarize is the
    # client's scalarize, which the ledger and issue-example tests cover in the fast lane
    "test_scalarize.py::test_domain_engine_and_client_agree",
    "test_sumtree.py::test_single_draw_frequencies",
    "test_cli.py::test_the_installed_command_prints_no_traceback",
    "test_client_payloads.py::test_typed_arrays_from_tensors_and_fallbacks",  # loads torch
    "test_scalarize.py::test_openrlhf_reward_call_scores_every_row_with_one_weight_vector",
    "test_client_async.py::test_an_async_client_used_in_a_second_event_loop_says_so",
}


def _parts(path: Path) -> tuple[str, ...] | None:
    try:
        return Path(path).resolve().relative_to(TESTS).parts
    except ValueError:
        return None


def path_is_slow(path: Path) -> bool:
    """Whether every test in the file or folder at `path` is slow (the fast lane then
    does not even import it: collecting the trainer tests alone loads torch)."""
    parts = _parts(path)
    return parts is not None and len(parts) > 0 and (
        parts[0] in SLOW_FOLDERS or parts[-1] in SLOW_FILES)


def is_slow(item: pytest.Item) -> bool:
    """Whether the fast lane leaves `item` out (see the module docstring)."""
    path = Path(str(item.fspath))
    parts = _parts(path)
    if parts is None:
        return False
    if path_is_slow(path):
        return True
    if f"{parts[-1]}::{getattr(item, 'originalname', item.name)}" in SLOW_TESTS:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        isinstance(value, str) and value == "postgresql" for value in callspec.params.values())

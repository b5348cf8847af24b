"""How many workers `pytest -n auto` (the README's test command, pytest-xdist) starts:
`conftest.py` answers xdist's `pytest_xdist_auto_num_workers` with `auto_workers()`."""

from __future__ import annotations

import os

#: Most workers `-n auto` starts: every worker holds torch, its own service processes and
#: database connections (about 1 GB and a handful of PostgreSQL sessions each), and past
#: a few workers the suite's servers and subprocesses compete for the same cores.
MAX_WORKERS = 4


def auto_workers() -> int:
    """The cores this process may run on (a container's CPU set, not the host's), at most
    MAX_WORKERS."""
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))

"""Paceline's arithmetic runs under numpy's default error handling whatever the host
process set (`domain/numerics.py`): Syllabus, for one, makes every floating-point
warning raise when it is imported."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import paceline
from paceline_server.domain.numerics import numpy_defaults
from paceline_server.engine import CurriculumEngine
from support import report, spec

#: Revisits of one prompt that never passes again after its first pass: its float32
#: success count halves per visit (gamma 0.5) and goes subnormal after ~130 of them.
REVISITS = 160


@pytest.fixture
def raising() -> Iterator[None]:
    """What `import syllabus` does to the process: every floating-point error raises."""
    old = np.seterr(all="raise")
    try:
        yield
    finally:
        np.seterr(**old)


def test_an_underflowing_decay_raises_under_the_hosts_setting(raising: None) -> None:
    # The premise: the decay the engine does underflows in float32 and, with the host's
    # setting, numpy raises on it.
    counts = np.full(4, 3e-38, dtype=np.float32)  # a count after ~125 halvings
    with pytest.raises(FloatingPointError):
        np.multiply(np.float32(0.3), counts)  # subnormal and inexact: underflow


def test_the_engine_folds_and_proposes_under_numpys_defaults(raising: None) -> None:
    cur = spec((10, 10), sampler={"kind": "learnability", "params": {"gamma": 0.5}})
    guarded = CurriculumEngine(cur)
    guarded.apply(report(cur, [0], np.ones((1, 4))))
    for step in range(1, REVISITS):
        guarded.apply(report(cur, [0], np.zeros((1, 4)), step=step))
        batch = guarded.next_batch("run", step)
        assert batch.indices.size == cur.batch_size
    assert guarded.state.sampler.successes[0] < 1e-38  # it did go subnormal
    assert np.geterr()["under"] == "raise"  # the host's setting is back afterwards
    # And the result is what numpy's defaults give.
    np.seterr(all="warn", under="ignore")
    plain = CurriculumEngine(cur)
    plain.apply(report(cur, [0], np.ones((1, 4))))
    for step in range(1, REVISITS):
        plain.apply(report(cur, [0], np.zeros((1, 4)), step=step))
    assert plain.to_bytes() == guarded.to_bytes()


def test_embedded_client_reports_under_numpys_defaults(raising: None, tmp_path: Path) -> None:
    with paceline.Client.embedded(tmp_path / "paceline.db") as client:
        cur = client.create_curriculum(
            "numerics", {"d": 10}, batch_size=2, objectives=["acc"],
            sampler={"kind": "learnability", "params": {"gamma": 0.5}})
        with cur.start_run(run_id="r") as run:
            run.report(0, indices=[0], rewards=np.ones((1, 4, 1)), unserved="accept")
            for step in range(1, REVISITS):
                ack = run.report(step, indices=[0], rewards=np.zeros((1, 4, 1)),
                                 unserved="accept")
            assert ack.seq == REVISITS
            assert len(run.next_batch(REVISITS).indices) == 2
    assert np.geterr()["under"] == "raise"


def test_numpy_defaults_are_numpys_own() -> None:
    fresh = np.geterr()  # pytest runs with numpy's defaults
    with np.errstate(all="raise"), numpy_defaults():
        assert np.geterr() == fresh

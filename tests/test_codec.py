"""Stored payloads: exact round trips, equal content gives equal bytes, compact reports
(narrow exact types, group sizes), earlier releases' payloads still decode, and garbage
is StateCorrupt, never a crash."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from paceline_server.app.codec import (
    MAGIC,
    decode_batch,
    decode_report,
    encode_batch,
    encode_report,
    same_report,
)
from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import StateCorrupt
from paceline_server.domain.npz import save_npz
from paceline_server.domain.report import Report


def report(**extra: object) -> Report:
    rng = np.random.default_rng(0)
    fields: dict[str, object] = {
        "run_id": "run-é", "step": 7, "indices": np.array([3, 9, 4], dtype=np.int64),
        "group_of": np.repeat(np.arange(3, dtype=np.int64), 2),
        "rewards": rng.random((6, 2))}
    fields.update(extra)
    return Report(**fields)  # type: ignore[arg-type]


def batch(loss_weights: np.ndarray | None = None) -> Batch:
    return Batch(run_id="r", step=3, indices=np.array([5, 1, 2], dtype=np.int64),
                 reward_weights=np.array([0.25, 0.75]), reward_scale=1.5,
                 loss_weights=loss_weights, probabilities=np.array([0.5, 0.5]),
                 skipped_zero_variance=2, clock=11)


def assert_reports_equal(a: Report, b: Report) -> None:
    assert (a.run_id, a.step) == (b.run_id, b.step)
    for name in ("indices", "group_of", "rewards", "advantages", "grad_products",
                 "eval_objectives"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def test_report_round_trip_is_exact() -> None:
    full = report(advantages=np.linspace(-1, 1, 6), grad_products=np.eye(2),
                  eval_objectives=np.array([0.5, 0.1]))
    for original in (report(), full):
        data = encode_report(original)
        assert data.startswith(MAGIC)
        decoded = decode_report(data)
        assert_reports_equal(decoded, original)
        assert decoded.rewards.flags.writeable  # not a view on the stored bytes
        assert encode_report(decoded) == data  # equal content, equal bytes


def stored_dtypes(data: bytes) -> dict[str, str]:
    fields = msgpack.unpackb(data[len(MAGIC):])
    return {k: v["d"] for k, v in fields.items() if isinstance(v, dict)}


@pytest.mark.parametrize(("values", "stored"), [
    (np.array([0.0, 1.0, -3.0, 127.0]), "|i1"),
    (np.array([0.5, 1.0, -3.25, 2.0 ** 100]), "<f4"),
    (np.array([0.5, 1e30]), "<f8"),  # 1e30 as a double is not a float32
    (np.array([0.1, 1.0]), "<f8"),
    (np.array([0.0, -0.0]), "<f4"),  # int8 would lose the sign of -0.0
    (np.array([128.0, 1.0]), "<f4"),  # out of int8's range
    (np.array([np.nan, 1.0]), "<f4"),
    (np.array([np.inf, 1.0]), "<f4"),
    (np.array([1e300, 1.0]), "<f8"),
    (np.array([2.0 ** -140, 1.0]), "<f4"),  # a float32 subnormal
    (np.array([2.0 ** -1074, 1.0]), "<f8"),  # a float64 subnormal
])
def test_floats_are_stored_in_the_narrowest_exact_type(values: np.ndarray,
                                                       stored: str) -> None:
    original = report(rewards=np.resize(values, 12).reshape(6, 2),
                      advantages=np.resize(values, 6))
    data = encode_report(original)
    assert stored_dtypes(data)["rewards"] == stored
    decoded = decode_report(data)
    assert decoded.rewards.dtype == np.float64
    # Bit for bit: the sign of zero and NaN payloads included.
    assert decoded.rewards.tobytes() == original.rewards.tobytes()
    assert decoded.advantages is not None and original.advantages is not None
    assert decoded.advantages.tobytes() == original.advantages.tobytes()
    assert encode_report(decoded) == data


def test_a_large_binary_report_is_compact() -> None:
    rng = np.random.default_rng(0)
    big = Report(run_id="r", step=0, indices=np.arange(1024, dtype=np.int64),
                 group_of=np.repeat(np.arange(1024, dtype=np.int64), 8),
                 rewards=rng.integers(0, 2, (8192, 3)).astype(np.float64))
    data = encode_report(big)
    assert len(data) < 45_000  # 270 KB as float64 rewards and an int64 group column
    assert "group_of" not in stored_dtypes(data)
    assert_reports_equal(decode_report(data), big)


def test_reports_of_the_previous_format_decode_and_compare_equal() -> None:
    """Events written before the compact format (float64 arrays and the group column)
    decode to the same report, and a retry after an upgrade is recognised as the same
    report though its bytes differ."""
    original = report(advantages=np.linspace(-1, 1, 6))
    previous = MAGIC + msgpack.packb({
        "run_id": original.run_id, "step": original.step,
        **{name: {"d": value.dtype.str, "s": list(value.shape), "b": value.tobytes()}
           for name, value in (("indices", original.indices),
                               ("group_of", original.group_of),
                               ("rewards", original.rewards),
                               ("advantages", original.advantages))}}, use_bin_type=True)
    assert previous != encode_report(original)
    assert_reports_equal(decode_report(previous), original)
    assert same_report(previous, original)
    assert not same_report(previous, report(advantages=np.linspace(-1, 1, 6) * 2))
    assert not same_report(previous, report(step=8, advantages=np.linspace(-1, 1, 6)))
    assert not same_report(b"junk", original)


def test_big_endian_arrays_are_stored_little_endian() -> None:
    swapped = report(rewards=np.arange(6 * 2, dtype=">f8").reshape(6, 2))
    decoded = decode_report(encode_report(swapped))
    assert decoded.rewards.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(decoded.rewards, swapped.rewards)
    assert encode_report(swapped) == encode_report(decoded)


def test_batch_round_trip() -> None:
    for original in (batch(), batch(np.array([1.0, 0.5, 2.0]))):
        decoded = decode_batch(encode_batch(original))
        assert (decoded.run_id, decoded.step, decoded.reward_scale,
                decoded.skipped_zero_variance, decoded.clock) == ("r", 3, 1.5, 2, 11)
        np.testing.assert_array_equal(decoded.indices, original.indices)
        np.testing.assert_array_equal(decoded.reward_weights, original.reward_weights)
        np.testing.assert_array_equal(decoded.probabilities, original.probabilities)
        assert (decoded.loss_weights is None) == (original.loss_weights is None)


def test_first_release_npz_payloads_still_decode() -> None:
    old = report(advantages=np.zeros(6))
    legacy_report = save_npz({
        "indices": old.indices, "group_of": old.group_of, "rewards": old.rewards,
        "advantages": old.advantages, "run_id": np.asarray(old.run_id),
        "step": np.asarray(old.step, dtype=np.int64)})
    assert_reports_equal(decode_report(legacy_report), old)
    b = batch()
    legacy_batch = save_npz({
        "indices": b.indices, "reward_weights": b.reward_weights,
        "probabilities": b.probabilities, "run_id": np.asarray(b.run_id),
        "scalars": np.array([b.step, b.skipped_zero_variance, b.clock], dtype=np.int64),
        "reward_scale": np.asarray(b.reward_scale)})
    decoded = decode_batch(legacy_batch)
    assert (decoded.step, decoded.skipped_zero_variance, decoded.clock) == (3, 2, 11)
    np.testing.assert_array_equal(decoded.indices, b.indices)


@pytest.mark.parametrize("data", [b"", b"junk", MAGIC + b"\xc1", MAGIC + b"\x01",
                                  MAGIC + b"\x81\xa6run_id\x01", b"PK\x03\x04broken"])
def test_garbage_is_state_corrupt(data: bytes) -> None:
    with pytest.raises(StateCorrupt):
        decode_report(data)
    with pytest.raises(StateCorrupt):
        decode_batch(data)

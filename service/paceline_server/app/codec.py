"""Event and batch payloads: what the store keeps as opaque bytes.

Payloads are msgpack maps of typed arrays (dtype, shape, little-endian bytes) behind a
4-byte magic: no pickle, equal content gives equal bytes (idempotency digests rely on
it), and a 1024 × 8 × 3 report encodes and decodes in tens of microseconds, where the
`.npz` container of the first release took about a millisecond on the hot path. Payloads
written by that release (a zip archive, magic `PK`) still decode.

Reports are stored compactly but exactly, because every report is written to the log
(a 1024 × 8 × 3 report was 270 KB, most of a commit's cost): float arrays in the
narrowest of int8 / float32 / float64 that gives back every value bit for bit (binary
and small integer rewards fit int8), and the sorted group column as group sizes.
Decoding gives back the very same float64 values, so a replay folds exactly what the
live engine folded.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np

from paceline_server.domain.batch import Batch
from paceline_server.domain.errors import StateCorrupt
from paceline_server.domain.npz import load_npz
from paceline_server.domain.report import Report
from paceline_server.store.base import EventRecord, payload_digest

MAGIC = b"PLM1"
_NPZ_MAGIC = b"PK"

_REPORT_FLOATS = ("rewards", "advantages", "grad_products", "eval_objectives")
_NARROWER = (np.dtype(np.int8), np.dtype(np.float32))
_BATCH_ARRAYS = ("indices", "reward_weights", "loss_weights", "probabilities")


def _pack_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype.hasobject:
        raise TypeError("object arrays cannot be stored")
    return {"d": array.dtype.str, "s": list(array.shape), "b": array.tobytes()}


def _unpack_array(packed: Any) -> np.ndarray:
    dtype = np.dtype(packed["d"])
    if dtype.hasobject:
        raise ValueError("object dtype in payload")
    return np.frombuffer(packed["b"], dtype=dtype).reshape(packed["s"]).copy()


def _pack(fields: dict[str, Any]) -> bytes:
    return MAGIC + msgpack.packb(fields, use_bin_type=True)


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        fields = msgpack.unpackb(data[len(MAGIC):], raw=False, strict_map_key=True)
        if not isinstance(fields, dict):
            raise TypeError("payload is not a map")
        return {key: (_unpack_array(value) if isinstance(value, dict) else value)
                for key, value in fields.items()}
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise StateCorrupt(f"cannot decode stored payload: {exc}") from exc


def _fields(data: bytes) -> dict[str, Any]:
    if data[:len(MAGIC)] == MAGIC:
        return _unpack(data)
    if data[:len(_NPZ_MAGIC)] == _NPZ_MAGIC:
        return _from_npz(data)
    raise StateCorrupt("cannot decode stored payload: unknown format")


def _from_npz(data: bytes) -> dict[str, Any]:
    """The first release's payloads: scalars were stored as 0-d arrays."""
    arrays = load_npz(data, "stored payload")
    fields: dict[str, Any] = {key: value for key, value in arrays.items()
                              if key not in ("run_id", "step", "scalars", "reward_scale")}
    fields["run_id"] = str(arrays["run_id"].item())
    if "step" in arrays:
        fields["step"] = int(arrays["step"].item())
    if "scalars" in arrays:
        fields["step"], fields["skipped"], fields["clock"] = (
            int(v) for v in arrays["scalars"])
    if "reward_scale" in arrays:
        fields["reward_scale"] = float(arrays["reward_scale"].item())
    return fields


def _exact(array: np.ndarray) -> np.ndarray:
    """float64 `array` in the narrowest type it round-trips through bit for bit (so -0.0,
    fractions and out-of-range values rule int8 out; only float64 holds every value)."""
    if array.dtype.kind == "f" and array.dtype.itemsize == 8:
        array = array.astype(np.float64, copy=False)  # native byte order
        bits = array.view(np.int64)
        for dtype in _NARROWER:
            with np.errstate(over="ignore", invalid="ignore"):
                narrow = array.astype(dtype)
                if np.array_equal(narrow.astype(np.float64).view(np.int64), bits):
                    return narrow
    return array


def encode_report(report: Report) -> bytes:
    """Equal reports give equal bytes (the idempotency check compares them)."""
    fields: dict[str, Any] = {"run_id": report.run_id, "step": int(report.step),
                              "indices": _pack_array(report.indices)}
    group_of = report.group_of
    sizes = np.bincount(group_of, minlength=report.indices.size) if group_of.size \
        and group_of.min() >= 0 else None
    if sizes is not None and np.array_equal(
            np.repeat(np.arange(sizes.size, dtype=np.int64), sizes), group_of):
        fields["group_sizes"] = _pack_array(sizes.astype(np.int64))
    else:  # not in canonical order (refused by validation later): stored as is
        fields["group_of"] = _pack_array(group_of)
    for name in _REPORT_FLOATS:
        value = getattr(report, name)
        if value is not None:
            fields[name] = _pack_array(_exact(value))
    return _pack(fields)


def decode_report(data: bytes) -> Report:
    fields = _fields(data)
    try:
        if "group_sizes" in fields:
            sizes = fields["group_sizes"]
            group_of = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        else:
            group_of = fields["group_of"]
        # Already a fresh copy (`_unpack_array`): widening needs no second one.
        floats = {name: fields[name].astype(np.float64, copy=False)
                  for name in _REPORT_FLOATS if fields.get(name) is not None}
        return Report(run_id=str(fields["run_id"]), step=int(fields["step"]),
                      indices=fields["indices"], group_of=group_of, **floats)
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise StateCorrupt(f"stored report is malformed: {exc}") from exc


def holds(record: EventRecord, payload: bytes, report: Report) -> bool:
    """Whether a stored event holds `report` (encoded as `payload`): the same bytes, the
    same arrays in an earlier release's encoding, or, for an event pruned since, the
    same digest (a retry or a resumed trainer's re-report is then still recognised):
    of the content (`pruned_digest`), or of the payload's bytes, as the first release
    with pruned digests kept them."""
    if record.digest is not None:
        return record.digest in (content_digest(report), payload_digest(payload))
    return record.payload == payload or same_report(record.payload, report)


#: Names the content digest's layout; a new layout gets a new name, never a change.
_CONTENT_DIGEST = b"paceline-report-content-v1\0"


def content_digest(report: Report) -> bytes:
    """SHA-256 of what `same_report` compares (run, step and the arrays' shapes and
    values; dtypes widened, -0.0 as 0.0), independent of how any release encodes
    payloads: a pruned event's digest must still match a retry encoded by a later
    release (an event of the first release, pruned after an upgrade, did not)."""
    digest = hashlib.sha256(_CONTENT_DIGEST)
    digest.update(report.run_id.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(np.int64(report.step).tobytes())
    for array, dtype in ((report.indices, np.int64), (report.group_of, np.int64),
                         (report.rewards, np.float64), (report.advantages, np.float64),
                         (report.grad_products, np.float64),
                         (report.eval_objectives, np.float64)):
        if array is None:
            digest.update(b"-")
            continue
        values: np.ndarray = np.ascontiguousarray(array,
                                                  dtype=np.dtype(dtype).newbyteorder("<"))
        if dtype is np.float64:
            values = values + 0.0  # -0.0 equals 0.0, as np.array_equal says
        digest.update(b"+" + np.asarray(values.shape, dtype="<i8").tobytes())
        digest.update(values.tobytes())
    return digest.digest()


def pruned_digest(payload: bytes) -> bytes:
    """What stays of a pruned report event: its content digest (the payload's bytes'
    digest for a payload that does not decode, which no retry can match anyway)."""
    try:
        return content_digest(decode_report(payload))
    except StateCorrupt:
        return payload_digest(payload)


def same_report(stored: bytes, report: Report) -> bool:
    """Whether a stored report payload holds `report` (for payloads whose bytes differ
    only because an earlier release encoded them differently)."""
    try:
        old = decode_report(stored)
    except StateCorrupt:
        return False
    if (old.run_id, old.step) != (report.run_id, report.step):
        return False
    return all(
        (a is None and b is None) or (a is not None and b is not None
                                      and a.shape == b.shape and np.array_equal(a, b))
        for a, b in ((old.indices, report.indices), (old.group_of, report.group_of),
                     (old.rewards, report.rewards), (old.advantages, report.advantages),
                     (old.grad_products, report.grad_products),
                     (old.eval_objectives, report.eval_objectives)))


def encode_batch(batch: Batch) -> bytes:
    fields: dict[str, Any] = {
        "run_id": batch.run_id, "step": int(batch.step),
        "skipped": int(batch.skipped_zero_variance), "clock": int(batch.clock),
        "reward_scale": float(batch.reward_scale), "rollouts_saved": int(batch.rollouts_saved)}
    for name in _BATCH_ARRAYS:
        value = getattr(batch, name)
        if value is not None:
            fields[name] = _pack_array(value)
    return _pack(fields)


def decode_batch(data: bytes) -> Batch:
    fields = _fields(data)
    try:
        return Batch(
            run_id=str(fields["run_id"]), step=int(fields["step"]),
            indices=fields["indices"], reward_weights=fields["reward_weights"],
            reward_scale=float(fields["reward_scale"]),
            loss_weights=fields.get("loss_weights"),
            probabilities=fields["probabilities"],
            skipped_zero_variance=int(fields["skipped"]), clock=int(fields["clock"]),
            # Batches stored before the figure existed saved nothing they could report.
            rollouts_saved=int(fields.get("rollouts_saved", 0)))
    except KeyError as exc:
        raise StateCorrupt(f"stored batch lacks {exc}") from exc

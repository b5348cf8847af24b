"""The streamed snapshot format (domain/array_stream.py) and the engine on it: exact round
trips whatever the chunk sizes, a clear StateCorrupt for anything malformed, and engines
resuming from either snapshot form (the array stream, or `to_bytes` of older versions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from paceline_server.domain.array_stream import (
    MAGIC,
    chunked,
    decode_arrays,
    encode_arrays,
    is_array_stream,
)
from paceline_server.domain.errors import StateCorrupt
from paceline_server.engine import CurriculumEngine
from support import report, spec

ARRAYS = {
    "f": np.linspace(0, 1, 1001),
    "i": np.arange(12, dtype=np.int32).reshape(3, 4),
    "t": np.arange(12, dtype=np.int64).reshape(3, 4).T,  # not C-contiguous
    "b": np.array([True, False, True]),
    "s": np.asarray("dump_ucb"),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "scalar": np.asarray(7),
}


def encoded(arrays: dict[str, np.ndarray]) -> bytes:
    return b"".join(bytes(piece) for piece in encode_arrays(arrays))


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_round_trip_is_exact_for_any_chunk_size(size: int) -> None:
    decoded = decode_arrays(chunked(encode_arrays(ARRAYS), size))
    assert list(decoded) == list(ARRAYS)
    for key, array in ARRAYS.items():
        assert decoded[key].dtype == array.dtype and decoded[key].shape == array.shape
        assert np.array_equal(decoded[key], array)
        assert decoded[key].flags.writeable


def test_chunks_are_bounded_and_encoding_deterministic() -> None:
    chunks = list(chunked(encode_arrays(ARRAYS), 100))
    assert all(len(c) == 100 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 100
    assert b"".join(chunks) == encoded(ARRAYS) == encoded(dict(ARRAYS))
    assert is_array_stream(chunks[0]) and not is_array_stream(b"PK\x03\x04")
    with pytest.raises(ValueError, match="at least 1 byte"):
        list(chunked([b"x"], 0))


def test_object_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        encoded({"o": np.array([object()])})


def header(entries: object) -> bytes:
    text = json.dumps(entries).encode()
    return MAGIC + len(text).to_bytes(8, "little") + text


@pytest.mark.parametrize("data", [
    b"",
    b"PK\x03\x04 an npz",
    MAGIC + (10**9).to_bytes(8, "little"),
    header("not a list"),
    header([["x", "|O", [1]]]),
    header([["x", "<f8", [-1]]]),
    header([["x", "<f8", [2**62, 2**62]]]),
    header([["x", "<f8", [1] * 65]]),
    header([["x", "<f8", [True]]]),
    header([["x", "<f8", [2]], ["x", "<f8", [0]]]) + bytes(16),
    header([["x", "<f8", [2]]]) + bytes(15),  # ends early
    header([["x", "<f8", [2]]]) + bytes(17),  # bytes after the last array
], ids=["empty", "npz", "huge-header", "header-type", "object", "negative", "overflow",
        "dimensions", "bool-dim", "twice", "truncated", "trailing"])
def test_malformed_streams_are_state_corrupt(data: bytes) -> None:
    with pytest.raises(StateCorrupt):
        decode_arrays([data[:5], data[5:]])


@pytest.mark.parametrize("sampler", ["prioritized", "learnability", "dump_ucb"])
def test_engines_resume_from_either_snapshot_form(sampler: str) -> None:
    curriculum = spec((300, 200), sampler=sampler, zero_variance={"threshold": 0.9})
    engine = CurriculumEngine(curriculum)
    for step in range(3):
        batch = engine.next_batch("r", step)
        engine.apply(report(curriculum, batch.indices,
                            np.tile([[1.0, 0.0]], (batch.indices.size, 1)), step=step))
    blob = engine.to_bytes()
    pieces = [bytes(p) for p in engine.snapshot_pieces()]
    for resumed in (CurriculumEngine.from_chunks(curriculum, chunked(pieces, 13)),
                    CurriculumEngine.from_bytes(curriculum, b"".join(pieces)),
                    CurriculumEngine.from_chunks(curriculum, [blob[:3], blob[3:]]),
                    CurriculumEngine.from_bytes(curriculum, blob)):
        assert resumed.to_bytes() == blob
        assert np.array_equal(resumed.next_batch("r", 9).indices,
                              engine.next_batch("r", 9).indices)


def test_a_stream_of_another_spec_is_refused() -> None:
    engine = CurriculumEngine(spec((300, 200), sampler="prioritized"))
    other = spec((300, 200), sampler="uniform")
    with pytest.raises(StateCorrupt, match="sampler_kind"):
        CurriculumEngine.from_chunks(other, engine.snapshot_pieces())

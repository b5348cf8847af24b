"""Typed arrays' base64 is decoded by pybase64 (SIMD) with the standard library's
`b64decode(validate=True)` as the rule: the same strings accepted, the same bytes out,
the same strings refused."""

from __future__ import annotations

import base64
import binascii

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline_server.app.reports import decode_base64, parse_report
from paceline_server.domain.errors import InvalidReport
from support import spec

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def standard(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def ours(text: str) -> bytes | None:
    try:
        return decode_base64(text)
    except (binascii.Error, ValueError):
        return None


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=ALPHABET + "==== \n-_.\u00e9\x00", max_size=24))
def test_accepts_and_refuses_what_the_standard_library_does(text: str) -> None:
    assert ours(text) == standard(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_round_trips_any_bytes(data: bytes) -> None:
    assert decode_base64(base64.b64encode(data).decode("ascii")) == data


@pytest.mark.parametrize(("text", "expected"), [
    ("QUJD", b"ABC"),
    ("QUJD=", b"ABC"),  # padding after a complete quantum: pybase64 refuses, stdlib takes
    ("QUI=", b"AB"),
    ("", b""),
    ("QUJ", None),
    ("QU JD", None),
    ("QUJD\u00e9", None),
    ("QU=D", None),
])
def test_edge_cases(text: str, expected: bytes | None) -> None:
    assert ours(text) == expected


def test_a_report_with_bad_base64_is_invalid() -> None:
    s = spec((10,), objective_names=("acc",))
    good = base64.b64encode(np.ones((1, 2), dtype="<f4").tobytes()).decode()
    body = {"run_id": "r", "step": 0, "indices": [1],
            "rewards": {"dtype": "<f4", "shape": [1, 2], "data": good}}
    assert np.asarray(parse_report(body, s).rewards).size == 2
    body["rewards"] = {"dtype": "<f4", "shape": [1, 2], "data": good[:-1] + "!"}
    with pytest.raises(InvalidReport, match="not valid base64"):
        parse_report(body, s)

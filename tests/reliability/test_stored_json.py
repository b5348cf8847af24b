"""Stored JSON documents always render (domain/stored_json.py): what an older version
could store comes back sanitised with its text kept; anything else comes back as is."""

from __future__ import annotations

import json

import pytest

from paceline_server.domain.stored_json import ORIGINAL_KEY, is_renderable, readable_document


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a":"\\ud800"}', {"a": "\ufffd"}),
    ('{"\\udfff":1}', {"\ufffd": 1}),
    ('{"a":NaN,"b":[Infinity,-Infinity,1.5]}', {"a": "NaN", "b": ["Infinity", "-Infinity", 1.5]}),
    ('{"a":1e400,"b":{"c":-1E+999}}', {"a": "Infinity", "b": {"c": "-Infinity"}}),
    ("not json", {}),
    ("[1,2]", {}),
    ('"text"', {}),
    ("[" * 100_000, {}),
])
def test_unrenderable_documents_come_back_sanitised_with_their_text(
        text: str, expected: dict[str, object]) -> None:
    document, sanitised = readable_document(text)
    assert sanitised
    assert document == {**expected, ORIGINAL_KEY: text}
    assert is_renderable(document)
    json.dumps(document, allow_nan=False).encode("utf-8")  # renders strictly


@pytest.mark.parametrize("text", [
    '{"a":1,"b":"NaN","c":"Infinity"}',  # the names as strings are fine
    '{"emoji":"\\ud83d\\ude00","release":"e100","x":1e300,"y":1e-400}',
    '{"nested":{"list":[1,2,{"deep":null}]},"t":true}',
    "{}",
])
def test_renderable_documents_come_back_as_parsed(text: str) -> None:
    document, sanitised = readable_document(text)
    assert not sanitised
    assert document == json.loads(text)


def test_raw_control_characters_in_strings_are_read() -> None:
    document, sanitised = readable_document('{"a":"x\x00y"}')
    assert document == {"a": "x\x00y"} and not sanitised

"""Stored JSON documents that can always be rendered, whatever an older version wrote.

Before inputs were validated once on every transport, run metadata (and, by hand or by
import, a spec) could be stored holding what JSON output cannot carry: lone surrogates
(`"\\ud800"`, not valid UTF-8), NaN or infinities (`NaN`, `1e400`), text that is not a
JSON object at all. Every answer including such a row then failed. Reading goes through
`readable_document`, which returns such a document sanitised: lone surrogates become
U+FFFD, non-finite numbers their names as strings ("NaN", "Infinity", "-Infinity"), and
the text as stored is kept under `ORIGINAL_KEY`, so nothing is lost and the row renders.
`paceline-server repair` writes the same document back (store/repair.py).

Documents that need none of this (all of them, once repaired) are returned as parsed:
a cheap scan of the text decides whether the walk is needed at all.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Where a sanitised document keeps the text it was read from.
ORIGINAL_KEY = "_paceline_original"
#: What can make a parsed document unrenderable shows in its text as one of these: a
#: NaN/Infinity literal, an escaped surrogate, or an exponent large enough to overflow.
_SUSPECT = re.compile(r"NaN|Infinity|\\u[dD][89a-fA-F]|[eE]\+?0*[1-9]\d{2}")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def readable_document(text: str) -> tuple[dict[str, Any], bool]:
    """(the document, whether it had to be sanitised) for stored JSON text."""
    try:
        value = json.loads(text, strict=False)  # raw control characters in strings too
    except (ValueError, RecursionError):
        return {ORIGINAL_KEY: text}, True
    if not isinstance(value, dict):
        return {ORIGINAL_KEY: text}, True
    if not _SUSPECT.search(text):
        return value, False
    clean, changed = sanitised(value)
    if not changed:
        return value, False
    return {**clean, ORIGINAL_KEY: text}, True


def sanitised(value: Any) -> tuple[Any, bool]:
    """`value` with lone surrogates replaced (in keys too) and non-finite floats named;
    and whether anything changed."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value, False
        return ("NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"), True
    if isinstance(value, str):
        clean = _LONE_SURROGATE.sub("\ufffd", value)
        return clean, clean != value
    if isinstance(value, list):
        items = [sanitised(item) for item in value]
        return [item for item, _ in items], any(changed for _, changed in items)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        changed = False
        for key, item in value.items():
            clean_key, key_changed = sanitised(key)
            clean_item, item_changed = sanitised(item)
            out[clean_key] = clean_item
            changed = changed or key_changed or item_changed
        return out, changed
    return value, False


def is_renderable(value: Any) -> bool:
    """Whether strict JSON output (UTF-8, no NaN) can carry `value` as it is."""
    return not sanitised(value)[1]

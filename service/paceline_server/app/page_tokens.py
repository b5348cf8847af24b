"""Page tokens: where the next page of a listing starts, handed to the caller opaque.

A listing paged by offset shifts under a caller paging through it: each curriculum or
run created before the offset between two pages repeats an entry, each one deleted skips
one. A page token names the last entry of the page instead (its key in the listing's
order), and the next page is the entries after that key (keyset pagination, as Google's
AIP-158 `page_token` / `next_page_token`): entries created or deleted elsewhere in the
listing move no page, so an entry that exists throughout is listed exactly once.

A token is base64url of a small JSON document followed by a checksum:
`{"v": 1, "list": "curricula", "after": name}` or
`{"v": 1, "list": "runs", "of": curriculum, "created": its created_at,
"after": [created_at, run_id]}`. The listing it continues is inside, so a token used for
another listing (the curricula, the runs of another curriculum) is refused rather than
read as a position there. A runs token also names which creation of the curriculum it
lists (its created_at, as writers tell a recreated curriculum apart): one deleted and
created again between two pages is another listing, refused by the store (CONFLICT)
instead of continued into the new curriculum's runs. The checksum
catches a token cut short or edited; it is not a secret and needs none: a token holds
only names the caller may list, and one forged with a valid checksum is still only a
position in the listing it names, checked as any argument before the database sees it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from datetime import datetime
from typing import Any

from paceline_server.domain.errors import InvalidPageToken
from paceline_server.domain.validation import check_identifier
from paceline_server.store.base import CurriculumRecord, RunKey, RunRecord

#: The document's version: a later layout is a new number, and an old token then a 4xx.
VERSION = 1
#: Longest token read (a token this service makes is under 1.5 KiB).
MAX_TOKEN = 4096
#: Longest name a token may continue after (the curricula's column holds 256).
MAX_AFTER = 256
_DIGEST_SIZE = 8
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
CURRICULA, RUNS = "curricula", "runs"


def _digest(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=_DIGEST_SIZE, person=b"paceline-page").digest()


def _seal(document: dict[str, Any]) -> str:
    payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(payload + _digest(payload)).rstrip(b"=").decode("ascii")


def _invalid(why: str) -> InvalidPageToken:
    return InvalidPageToken(f"page_token {why}; pass the next_page_token of the page "
                            "before, unchanged, or none for the first page",
                            {"field": "page_token"})


def _open(token: str, listing: str) -> dict[str, Any]:
    """The document of `token`, which must continue `listing`; InvalidPageToken if not."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not _ALPHABET.fullmatch(token):
        raise _invalid("is not a page token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("is not a page token") from None
    payload, digest = raw[:-_DIGEST_SIZE], raw[-_DIGEST_SIZE:]
    if not payload or not hmac.compare_digest(digest, _digest(payload)):
        raise _invalid("is not a page token (cut short or edited?)")
    try:
        document = json.loads(payload)
    except ValueError:  # UnicodeDecodeError is one
        raise _invalid("is not a page token") from None
    if not isinstance(document, dict) or document.get("v") != VERSION:
        raise _invalid("is of an unknown version")
    if document.get("list") != listing:
        raise _invalid(f"does not continue the {listing} listing")
    return document


def _name(value: object) -> str:
    return check_identifier(value, "page_token", InvalidPageToken, max_length=MAX_AFTER)


def curricula_token(last: CurriculumRecord) -> str:
    """The token of the curricula after `last`."""
    return _seal({"v": VERSION, "list": CURRICULA, "after": last.name})


def curricula_after(token: str) -> str:
    """The name the page of `token` starts after; InvalidPageToken if it is not a token
    of the curricula listing."""
    return _name(_open(token, CURRICULA).get("after"))


def _instant(value: object) -> datetime:
    """A timezone-aware time written by `datetime.isoformat`."""
    if not isinstance(value, str):
        raise _invalid("is not a page token")
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid("is not a page token") from None
    if found.tzinfo is None:
        raise _invalid("is not a page token")
    return found


def runs_token(curriculum: str, created_at: datetime, last: RunRecord) -> str:
    """The token of the runs of `curriculum`, the one created at `created_at`, after
    `last`."""
    return _seal({"v": VERSION, "list": RUNS, "of": curriculum,
                  "created": created_at.isoformat(),
                  "after": [last.created_at.isoformat(), last.run_id]})


def runs_after(token: str, curriculum: str) -> tuple[RunKey, datetime | None]:
    """The key the page of `token` starts after, and the created_at of the curriculum it
    lists (None in a token made before tokens named it, during a rolling upgrade: that
    one continues unchecked, as it did); InvalidPageToken if it is not a token of the
    runs listing of `curriculum`."""
    document = _open(token, RUNS)
    if document.get("of") != curriculum:
        raise _invalid(f"continues the runs of another curriculum, not {curriculum!r}")
    after = document.get("after")
    if not (isinstance(after, list) and len(after) == 2):
        raise _invalid("is not a page token")
    created = document.get("created")
    return (RunKey(_instant(after[0]), _name(after[1])),
            None if created is None else _instant(created))

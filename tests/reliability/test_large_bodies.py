"""A large request body is decoded off the event loop: a 40 MB JSON report (malformed
at its last byte) held every request of its replica, /healthz included, while json's C
scanner parsed it (2-3 s for 60 MB on the audit's machine); now the body that large pays
for itself, and the others are answered meanwhile. The slower decoder reads exactly what
json.loads reads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from paceline_server.api.body import _parse_json
from paceline_server.domain.errors import MalformedBody
from support import SPEC, threaded_service


@pytest.mark.parametrize("text", [
    '{"a": [1, 2.5, -0.0, 1e308, 123456789012345678901234567890], "b": {"c": null}}',
    '[NaN, Infinity, -Infinity, true, false, "\\u00e9\\ud83d\\ude00", "\\ud800"]',
    '  {"nested": [[[[[]]]]], "s": "tab\\t newline\\n"}  ',
])
def test_the_yielding_decoder_reads_what_json_reads(text: str) -> None:
    for raw in (text.encode(), text.encode("utf-16"), text.encode("utf-32")):
        fast, slow = _parse_json(raw, False), _parse_json(raw, True)
        assert json.dumps(fast) == json.dumps(slow)


@pytest.mark.parametrize("raw", [b'{"a": 1', b"[1, 2,]", b"\xff\xfe\x00", b"[" * 100_000])
def test_and_refuses_what_json_refuses(raw: bytes) -> None:
    for yielding in (False, True):
        with pytest.raises(MalformedBody):
            _parse_json(raw, yielding)


def test_a_huge_body_does_not_hold_other_requests(tmp_path: Path) -> None:
    row = "[" + ", ".join(["0.3333333333333333"] * 1000) + "]"
    body = ('{"run_id": "r", "step": 0, "rewards": [' + ", ".join([row] * 2000) + "]").encode()
    assert len(body) > 30e6  # and it lacks its closing brace
    with threaded_service(f"sqlite:///{tmp_path / 'b.db'}") as url:
        assert httpx.post(f"{url}/v1/curricula", json=SPEC).status_code == 201
        done: dict[str, float] = {}
        answer: list[httpx.Response] = []

        def big() -> None:
            answer.append(httpx.post(f"{url}/v1/curricula/math/reports", content=body,
                                     headers={"Content-Type": "application/json"},
                                     timeout=120))
            done["big"] = time.monotonic()

        thread = threading.Thread(target=big)
        thread.start()
        time.sleep(0.5)  # the body is in; its decoding has begun
        assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
        done["health"] = time.monotonic()
        thread.join(120)
    assert answer[0].status_code == 400
    assert answer[0].json()["error"]["code"] == "MALFORMED_BODY"
    assert done["health"] < done["big"]  # answered while the big body was decoded

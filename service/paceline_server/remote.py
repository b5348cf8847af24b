"""The CLI's view of a running service: its REST API (`--url`, `--token`).

Requests go through the client package's retry policy (`paceline.RetryPolicy`: the same
statuses, backoff and `Retry-After` handling as a trainer's client), with one difference
the CLI needs: an export is streamed, never held whole in memory, so a response is
returned once its status line arrives and the caller reads the body.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from paceline import RetryPolicy
from paceline.client import base_url, default_headers, is_grpc
from paceline.errors import PacelineError, error_from_response
from paceline.models import CurriculumInfo, State
from paceline_server.app.transfer import MEDIA_TYPE

#: Import bodies above this size are sent gzip-compressed (the service inflates them).
COMPRESS_OVER = 64 * 1024


class RemoteService:
    """A Paceline service at `url` (a trailing `/v1` is accepted); `token` is a bearer
    token (None: `PACELINE_TOKEN`, if set)."""

    def __init__(self, url: str, token: str | None = None, *, retries: int = 4,
                 timeout: float = 60.0) -> None:
        root = base_url(url)
        if is_grpc(root):
            raise ValueError(f"the CLI speaks REST: give the service's http(s):// URL, "
                             f"not {root}")
        self.url = root
        self.policy = RetryPolicy.of(retries)
        self.http = httpx.Client(base_url=root, timeout=timeout,
                                 headers=default_headers(token, None))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> RemoteService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- calls
    def curriculum(self, name: str) -> CurriculumInfo:
        return CurriculumInfo.model_validate(self._json("GET", _path(name)))

    def state(self, name: str) -> State:
        return State.model_validate(self._json("GET", _path(name, "state")))

    def export(self, name: str) -> httpx.Response:
        """The export of `name`, streaming: the caller iterates the body
        (`iter_bytes`, `iter_lines`) and closes the response. Errors the service answers
        (a missing curriculum) are raised here, before any line is read."""
        return self._send("GET", _path(name, "export"), self.policy)

    def import_export(self, data: bytes, name: str | None = None,
                      merge: bool = False) -> dict[str, Any]:
        """POST an export to `/v1/imports`. Retried only with `merge`: a merge is
        idempotent, but a plain import whose answer was lost would be refused on the
        retry as CURRICULUM_EXISTS although it succeeded."""
        params = {"merge": "true" if merge else "false"}
        if name is not None:
            params["name"] = name
        headers = {"Content-Type": MEDIA_TYPE}
        if len(data) > COMPRESS_OVER:
            data = gzip.compress(data, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        policy = self.policy if merge else RetryPolicy.of(None)
        response = self._send("POST", "/v1/imports", policy, content=data,
                              params=params, headers=headers)
        try:
            response.read()
            body: dict[str, Any] = response.json()
            return body
        finally:
            response.close()

    # ---------------------------------------------------------------- plumbing
    def _json(self, method: str, path: str) -> Any:
        response = self._send(method, path, self.policy)
        try:
            response.read()
            return response.json()
        except ValueError:
            raise NotPaceline(_not_paceline(self.url, response)) from None
        finally:
            response.close()

    def _send(self, method: str, path: str, policy: RetryPolicy,
              **options: Any) -> httpx.Response:
        """Send until the policy stops retrying; a success is returned unread (streamed),
        an error response is raised as the client's `PacelineError`."""
        request = self.http.build_request(method, path, **options)
        state = policy.start()
        while True:
            try:
                response = self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                delay = state.after_error(exc)  # raises TransportError when it gives up
            else:
                if not response.is_success:
                    response.read()  # small; the policy reads a 503's code from it
                wait = state.after_response(response)
                if wait is None:
                    if response.is_success:
                        return response
                    raise _error(response)
                response.close()
                delay = wait
            time.sleep(delay)


def lines(response: httpx.Response) -> Iterator[bytes]:
    """The lines of a streamed export (closed at the end), split at b"\n" only, as an
    import splits them: `iter_lines` also splits at the line separators JSON writes
    raw inside strings (U+2028, U+2029, U+0085 in run metadata), cutting a line in two."""
    try:
        pending: list[bytes] = []
        for chunk in response.iter_bytes():
            *complete, rest = chunk.split(b"\n")
            if complete:
                complete[0] = b"".join((*pending, complete[0]))
                pending = []
                yield from complete
            if rest:
                pending.append(rest)
        if pending:
            yield b"".join(pending)
    finally:
        response.close()


def _path(name: str, *rest: str) -> str:
    return "/".join(("/v1/curricula", _segment(name), *rest))


def _segment(name: str) -> str:
    """`name` as one path segment: percent-encoded, dots too when it is all dots (an
    URL normalises a `.` or `..` segment away: /v1/curricula/.. is /v1)."""
    segment = quote(name, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _error(response: httpx.Response) -> PacelineError:
    try:
        response.read()
        body: Mapping[str, Any] | None = response.json()
    except (ValueError, httpx.HTTPError):
        body = None
    finally:
        response.close()
    if not isinstance(body, Mapping) or "error" not in body:  # a proxy's page, another app
        return error_from_response(response.status_code, None,
                                   _not_paceline(str(response.url), response))
    return error_from_response(response.status_code, body, response.text)


class NotPaceline(ValueError):
    """A success answer that is not the service's JSON: the URL is something else."""


def _not_paceline(url: str, response: httpx.Response) -> str:
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    return (f"{url} answered HTTP {response.status_code} ({kind}), not a Paceline answer: "
            "is --url the Paceline service's address?")

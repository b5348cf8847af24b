"""REST's side of request ids (transport/request_id.py): the outermost middleware takes
the caller's `x-request-id` (or makes one), keeps it for the call's log lines and names
it on every answer, refusals by the other middlewares included."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from paceline_server.api.middleware import HttpMiddleware
from paceline_server.transport.request_id import HEADER, accept, current


class RequestIds(HttpMiddleware):
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = accept(Headers(scope=scope).get(HEADER))

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        token = current.set(request_id)
        try:
            await self.app(scope, receive, named)
        finally:
            current.reset(token)

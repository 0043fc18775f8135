"""Pure-ASGI middleware: request ids and the request body limit.

Both wrap the raw ASGI callables instead of Starlette's ``BaseHTTPMiddleware``, which would
buffer streamed responses and cost a task per request.
"""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xpcs_io.errors import PayloadTooLargeError
from xpcs_io.server.problems import send_problem

__all__ = ["BodyLimitMiddleware", "RequestIdMiddleware"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Give every request an id (echoing a sane ``X-Request-ID``) in state and the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = given if given and _SAFE_ID.match(given) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id
        raw = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuse request bodies above ``limit`` bytes with 413, before reading them whole.

    A declared Content-Length above the limit is refused at once; a body that streams past
    the limit (chunked, or lying about its length) raises ``PayloadTooLargeError`` while it
    is read, which the error handlers turn into 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    await _reject(scope, send, self.limit)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLargeError(
                        f"request body exceeds the limit of {self.limit:,} bytes"
                    )
            return message

        await self.app(scope, counted, send)


async def _reject(scope: Scope, send: Send, limit: int) -> None:
    detail = f"request body exceeds the limit of {limit:,} bytes"
    await send_problem(scope, send, PayloadTooLargeError(detail))

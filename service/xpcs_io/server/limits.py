"""Bounds on what request bodies may hold: bytes in flight across requests, and time.

uvicorn reads a request body only as the app asks for it, and has no timeout of its own for
a body that stalls. Here, in the ASGI layer:

- every request with a body reserves its declared ``Content-Length`` from one budget of
  in-flight body bytes (``XPCS_IO_MAX_INFLIGHT_BODY_BYTES``) before a byte is read, and gives
  it back when its answer is sent; a request the budget cannot hold is answered 503
  (``ServerBusyError``, ``Retry-After``) at once, unread (a chunked body reserves as it
  arrives, 413 past the budget);
- each read of the body waits at most ``XPCS_IO_BODY_TIMEOUT`` seconds, and the whole body
  must arrive within that plus one second per MiB declared: a stalled or crawling body is
  answered 408 (``RequestTimeoutError``) and its connection closed;
- ``read_body`` collects the body as it arrives into the one buffer the decoder uses, so
  memory follows the bytes received, never the bytes announced.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xpcs_io.errors import PayloadTooLargeError, RequestTimeoutError, ServerBusyError
from xpcs_io.server.problems import send_problem

__all__ = ["BodyBudget", "ResourceGuardMiddleware", "read_body"]

_MIN_RATE = 1 << 20  # bytes per second a body may not fall below, on average
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))


class BodyBudget:
    """Bytes of request bodies the process holds at once, at most ``limit`` (event loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refused = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would pass the limit."""
        if self.used + n > self.limit:
            self.refused += 1
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give(self, n: int) -> None:
        """Return ``n`` reserved bytes."""
        self.used -= n


class ResourceGuardMiddleware:
    """The body budget and the body read timeout (see the module)."""

    def __init__(self, app: ASGIApp, *, budget: BodyBudget, body_timeout: float) -> None:
        self.app = app
        self.budget = budget
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                chunked = True
        if declared is None and not chunked:
            await self.app(scope, receive, send)  # no body at all
            return
        reserved = declared or 0
        if reserved and not self.budget.take(reserved):
            await send_problem(
                scope,
                send,
                ServerBusyError(
                    "the server holds too many request bodies right now "
                    f"({self.budget.used:,} of {self.budget.limit:,} bytes): retry shortly"
                ),
            )
            return
        deadline = time.monotonic() + self.body_timeout + (declared or 0) / _MIN_RATE
        done = False

        async def timed_receive() -> Message:
            nonlocal done, reserved
            if done:
                return await receive()  # after the body: waits for a disconnect
            wait = min(self.body_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body stalled: no complete body within {self.body_timeout:g} s "
                    "of silence (or at less than 1 MiB/s)"
                ) from None
            if message["type"] == "http.request":
                if declared is None:  # chunked: reserve as it arrives
                    n = len(message.get("body", b""))
                    if not self.budget.take(n):
                        raise PayloadTooLargeError(
                            "request bodies in flight exceed the server's budget of "
                            f"{self.budget.limit:,} bytes"
                        )
                    reserved += n
                done = not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not done:
                # Answered before the whole body came (408, 413, an early error): the rest
                # of it must not be read as the next request.
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        finally:
            self.budget.give(reserved)


async def read_body(request: Request) -> bytearray:
    """The request body in one writable buffer (arrays decode as zero-copy views of it),
    grown as bytes arrive: a declared length is never allocated before it is received.

    Raises:
        PayloadTooLargeError, RequestTimeoutError: from the guards above.
        starlette.requests.ClientDisconnect: the client went away mid-body.
    """
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk  # glibc grows large blocks with mremap: no copy of what came before
    return buf

"""uvicorn's HTTP protocol with the two bounds it lacks: a time limit on request heads, and a
cap on open connections enforced when they are accepted.

uvicorn times out idle keep-alive connections, but not a connection that has sent nothing
yet or half a request head: a few thousand such connections (which cost the client nothing)
hold every file descriptor of the process, and the server cannot accept anyone, ``/health``
included, for as long as the client likes. Here each connection must complete a request
head within ``header_timeout`` seconds of being opened or of starting that request (408 and
closed otherwise), and a connection accepted beyond ``limit_concurrency`` is answered 503
and closed at once, so descriptors stay below the process limit.

``serve_options`` builds the uvicorn options of ``xpcs-io serve`` (single process and
workers alike) from the settings.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from xpcs_io.server.settings import Settings

__all__ = [
    "GuardedHttpProtocol",
    "connection_limit",
    "event_loop",
    "serve_options",
    "set_header_timeout",
]

_header_timeout = 10.0
# Descriptors kept for everything but client connections: the listening socket, logs,
# HDF5 files of the pool (one each, more through external links) and lock files of writes.
_RESERVED_FDS = 96


def set_header_timeout(seconds: float) -> None:
    """Seconds a connection may take to send a request head, for this process."""
    global _header_timeout
    _header_timeout = seconds


def connection_limit(settings: Settings) -> int:
    """``settings.max_connections``, lowered to fit below this process's descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return settings.max_connections
    room = int(soft) - _RESERVED_FDS - 2 * settings.pool_size
    return max(8, min(settings.max_connections, room))


def accept_backlog(settings: Settings) -> int:
    """The listening socket's backlog: at most half the descriptors left above the connection
    cap (and at most uvicorn's default, 2048). The event loop accepts up to this many
    connections at once before any of them is seen and closed past the cap, so a burst of
    connections can never take the descriptors the server needs for files and its own work."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 2048
    return max(16, min(2048, (int(soft) - connection_limit(settings)) // 2))


def event_loop(settings: Settings) -> str:
    """uvicorn's ``loop`` option for ``settings.event_loop``.

    ``auto`` is the standard library's loop: uvloop's ``transport.write`` holds the GIL while
    the kernel copies a large answer into the socket, so the threads reading HDF5 wait for
    it; asyncio's writes release it. Measured, the two are within noise of each other for
    large q-maps, small reads and many viewers, and asyncio is as fast or faster for
    many-file answers.
    """
    return "asyncio" if settings.event_loop == "auto" else settings.event_loop


def serve_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of ``xpcs-io serve`` (without host and port)."""
    set_header_timeout(settings.header_timeout)
    return {
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": connection_limit(settings),
        "backlog": accept_backlog(settings),
        "http": GuardedHttpProtocol,
        "loop": event_loop(settings),
        "header_timeout": settings.header_timeout,  # taken out again by the worker
    }


_STATUS = {408: b"408 Request Timeout", 503: b"503 Service Unavailable"}


class GuardedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a request-head timeout and a connection cap at accept."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) > limit:
            self._answer(503, "too many open connections: retry shortly")
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(_header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its head came in time
        self._answer(408, f"no complete request head within {_header_timeout:g} s")

    def _answer(self, status: int, text: str) -> None:
        if self.transport.is_closing():
            return
        body = text.encode()
        head = [
            b"HTTP/1.1 " + _STATUS[status],
            b"content-type: text/plain; charset=utf-8",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        if status == 503:
            head.append(b"retry-after: 1")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()

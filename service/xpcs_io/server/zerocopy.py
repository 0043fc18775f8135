"""``os.sendfile`` for response bodies under uvicorn (httptools), as an ASGI extension.

uvicorn offers neither ``http.response.pathsend`` nor ``http.response.zerocopysend``. The
outermost user middleware ``SendfileMiddleware`` finds uvicorn's connection behind the server's
``send`` and, when it can take the socket over safely (uvicorn's httptools protocol, plain
TCP, no TLS), announces ``scope["extensions"][EXTENSION]`` and understands three more
messages on ``send``:

- ``{"type": SENDFILE, "fd": int, "offset": int, "count": int, "copy": bool}``: waits
  until uvicorn's write buffer is empty, then moves ``count`` bytes of the file to the
  socket on a worker thread (``poll`` for ``POLLOUT`` on the non-blocking socket): with
  ``os.sendfile`` straight from the page cache, or with ``copy`` through a private buffer
  (``pread`` then ``write``: bytes that a later change of the file cannot reach). The bytes
  count against the Content-Length uvicorn tracks, so its framing and keep-alive stay right.
  Only for a Content-Length response;
- ``{"type": DRAIN}``: waits until the peer has acknowledged every byte sent (``SIOCOUTQ``
  is 0);
- ``{"type": ABORT}``: resets the connection: the client sees it end early, never a
  complete answer.

Other servers (h11, hypercorn, TLS, Unix sockets) get no extension and the responses fall
back to ordinary body messages. No middleware of this app changes body bytes, which is what
lets body bytes bypass the inner ``send`` wrappers (their byte counters miss them).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import select
import socket
import termios
import threading
import time
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ABORT", "DRAIN", "EXTENSION", "SENDFILE", "STALL_SECONDS", "SendfileMiddleware"]

EXTENSION: Final = "xpcs_io.sendfile"
SENDFILE: Final = "xpcs_io.sendfile"
DRAIN: Final = "xpcs_io.drain"
ABORT: Final = "xpcs_io.abort"
#: A client that takes nothing for this long has its connection reset.
STALL_SECONDS: Final = 60.0
_HTTPTOOLS: Final = "uvicorn.protocols.http.httptools_impl"
_COPY_SLICE: Final = 1 << 20


# ``send`` wrappers known to pass every message on unchanged (Starlette's outermost one only
# notes whether the response started): the server's own ``send`` is found behind them.
_PASS_THROUGH: Final = frozenset({"ServerErrorMiddleware.__call__.<locals>._send"})


def _server_cycle(send: Any) -> Any:
    """The object whose bound ``send`` method the server handed to the app, or None."""
    for _ in range(4):
        owner = getattr(send, "__self__", None)
        if owner is not None:
            return owner
        if getattr(send, "__qualname__", None) not in _PASS_THROUGH:
            return None
        inner = [
            c.cell_contents
            for c in send.__closure__ or ()
            if getattr(c.cell_contents, "__name__", None) == "send"
        ]
        if len(inner) != 1:
            return None
        send = inner[0]
    return None


def _socket_fd(cycle: Any) -> int | None:
    """The TCP socket behind uvicorn's cycle, or None when it cannot be taken over."""
    if type(cycle).__module__ != _HTTPTOOLS or not hasattr(cycle, "expected_content_length"):
        return None
    transport = getattr(cycle, "transport", None)
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        family = sock.family
        fd = int(sock.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    if family not in (socket.AF_INET, socket.AF_INET6) or fd < 0:
        return None
    return fd


def _wait_writable(fd: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client took no bytes for too long")
        events = poller.poll(min(left, 1.0) * 1000)
        for _, mask in events:
            if mask & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                raise ConnectionResetError(errno.ECONNRESET, "client connection closed")
            return


def _sendfile_all(sock: int, fd: int, offset: int, count: int) -> None:
    """Move ``count`` bytes at ``offset`` of ``fd`` to the non-blocking socket ``sock``.

    Raises:
        OSError: the client went away, stalled past ``STALL_SECONDS``, or the file is
            shorter than ``offset + count`` (it was cut while sending).
    """
    deadline = time.monotonic() + STALL_SECONDS
    while count > 0:
        try:
            sent = os.sendfile(sock, fd, offset, count)
        except BlockingIOError:
            _wait_writable(sock, deadline)
            continue
        if sent == 0:
            raise OSError(errno.EIO, "the file ended before its bytes were sent")
        offset += sent
        count -= sent
        deadline = time.monotonic() + STALL_SECONDS


_BUFFERS = threading.local()


def _copy_all(sock: int, fd: int, offset: int, count: int) -> None:
    """Like ``_sendfile_all``, through a private buffer reused by this thread.

    Raises:
        OSError: as for ``_sendfile_all``.
    """
    buf: bytearray | None = getattr(_BUFFERS, "buf", None)
    if buf is None:
        buf = _BUFFERS.buf = bytearray(_COPY_SLICE)
    view = memoryview(buf)
    deadline = time.monotonic() + STALL_SECONDS
    while count > 0:
        want = min(count, _COPY_SLICE)
        got = os.preadv(fd, [view[:want]], offset)
        if got != want:
            raise OSError(errno.EIO, "the file ended before its bytes were sent")
        done = 0
        while done < got:
            try:
                done += os.write(sock, view[done:got])
                deadline = time.monotonic() + STALL_SECONDS
            except BlockingIOError:
                _wait_writable(sock, deadline)
        offset += got
        count -= got


def _drain(sock: int) -> None:
    """Wait until every byte written to ``sock`` is acknowledged by the peer.

    Raises:
        OSError: the peer stalled past ``STALL_SECONDS`` or the connection broke.
    """
    deadline = time.monotonic() + STALL_SECONDS
    last = -1
    pause = 0.0002
    while True:
        left = int.from_bytes(fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"), "little")
        if left == 0:
            return
        if left != last:
            last, deadline = left, time.monotonic() + STALL_SECONDS
        elif time.monotonic() > deadline:
            raise TimeoutError("the client took no bytes for too long")
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


class SendfileMiddleware:
    """Provide the ``EXTENSION`` messages on uvicorn's httptools connections (outermost)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cycle: Any = _server_cycle(send)
        sock = _socket_fd(cycle) if scope["type"] == "http" else None
        if sock is None or cycle is None:
            await self.app(scope, receive, send)
            return
        extensions = scope.get("extensions")
        scope["extensions"] = {**(extensions or {}), EXTENSION: {}}

        async def send_more(message: Message) -> None:
            kind = message["type"]
            if kind == SENDFILE:
                await _send_file(cycle, sock, message)
            elif kind == DRAIN:
                if not cycle.disconnected:
                    try:
                        await run_in_threadpool(_drain, sock)
                    except OSError:
                        _abort(cycle)
            elif kind == ABORT:
                _abort(cycle)
            else:
                await send(message)

        await self.app(scope, receive, send_more)


def _abort(cycle: Any) -> None:
    if not cycle.disconnected:
        cycle.disconnected = True  # uvicorn then ignores the rest of this response
        cycle.transport.abort()


async def _send_file(cycle: Any, sock: int, message: Message) -> None:
    if cycle.disconnected:
        return
    count = int(message["count"])
    if not cycle.response_started or cycle.chunked_encoding or cycle.response_complete:
        raise RuntimeError("sendfile needs a started Content-Length response")
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    transport = cycle.transport
    deadline = time.monotonic() + STALL_SECONDS
    while transport.get_write_buffer_size() and not cycle.disconnected:
        # uvicorn's own bytes first; the thread writes only to an empty buffer.
        if time.monotonic() > deadline:
            _abort(cycle)
        await asyncio.sleep(0.0005)
    if cycle.disconnected:
        return
    move = _copy_all if message.get("copy") else _sendfile_all
    try:
        await run_in_threadpool(move, sock, int(message["fd"]), int(message["offset"]), count)
    except OSError:
        _abort(cycle)
        return
    cycle.expected_content_length -= count

"""``os.sendfile`` for response bodies under uvicorn (httptools), as an ASGI extension.

uvicorn offers neither ``http.response.pathsend`` nor ``http.response.zerocopysend``. The
outermost user middleware ``SendfileMiddleware`` finds uvicorn's connection behind the
server's ``send`` and, when it can take the socket over safely (uvicorn's httptools protocol,
plain TCP, no TLS), announces ``scope["extensions"][EXTENSION]`` and understands two more
messages on ``send``:

- ``{"type": SENDFILE, "fd": int, "parts": [...], "count": int, "check": callable or
  None}`` (``count``: the bytes of all parts, for byte counters on the way) writes the
  parts in order, on one worker thread, once uvicorn's own write buffer is empty (``poll``
  for ``POLLOUT`` on the non-blocking socket): a ``bytes`` part as it is, an
  ``(offset, count, private)`` part from the file ``fd``, with ``os.sendfile`` straight from
  the page cache, or with ``private`` through a buffer of the thread's own (``pread`` then
  ``write``: bytes that a later change of the file cannot reach). With ``check``, the last
  part waits until the peer has acknowledged every byte before it (``SIOCOUTQ`` is 0) and
  ``check()`` returned True; else the connection is reset and the last part never sent.
  The bytes count against the Content-Length uvicorn tracks, so its framing and keep-alive
  stay right (Content-Length responses only);
- ``{"type": ABORT}`` resets the connection: the client sees it end early, never a
  complete answer.

After either, uvicorn ignores the rest of an aborted response. Other servers (h11,
hypercorn, TLS, Unix sockets) get no extension, and responses fall back to ordinary body
messages. No middleware of this app changes body bytes, which is what lets body bytes
bypass the inner ``send`` wrappers (their byte counters miss them).
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
from collections.abc import Callable
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ABORT", "EXTENSION", "SENDFILE", "STALL_SECONDS", "SendfileMiddleware"]

EXTENSION: Final = "xpcs_io.sendfile"
SENDFILE: Final = "xpcs_io.sendfile"
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
    pause = 0.00005
    while True:
        left = int.from_bytes(fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"), "little")
        if left == 0:
            return
        if left != last:
            last, deadline = left, time.monotonic() + STALL_SECONDS
        elif time.monotonic() > deadline:
            raise TimeoutError("the client took no bytes for too long")
        time.sleep(pause)
        pause = min(pause * 2, 0.002)


def _write_all(sock: int, data: bytes | memoryview, deadline: float) -> None:
    view = memoryview(data)
    done = 0
    while done < view.nbytes:
        try:
            done += os.write(sock, view[done:])
        except BlockingIOError:
            _wait_writable(sock, deadline)


#: Buffers per ``writev`` call (Linux's IOV_MAX is 1024).
_IOV_MAX: Final = 1024


def _writev_all(sock: int, pieces: list[memoryview]) -> None:
    """Write ``pieces`` in order with as few ``writev`` calls as the socket takes.

    Raises:
        OSError: the client went away or stalled past ``STALL_SECONDS``.
    """
    deadline = time.monotonic() + STALL_SECONDS
    first = 0
    while first < len(pieces):
        batch = pieces[first : first + _IOV_MAX]
        try:
            done = os.writev(sock, batch)
        except BlockingIOError:
            _wait_writable(sock, deadline)
            continue
        deadline = time.monotonic() + STALL_SECONDS
        for piece in batch:  # skip what went out; the first piece left keeps its rest
            if done < piece.nbytes:
                pieces[first] = piece[done:]
                break
            done -= piece.nbytes
            first += 1


def _transfer(sock: int, fd: int, parts: list[Any], check: Callable[[], bool] | None) -> bool:
    """Write ``parts`` (see the module docstring) to ``sock``; False when ``check`` failed.

    Raises:
        OSError: the client went away or stalled, or the file was cut while sending.
    """
    *body, last = parts
    used_sendfile = False
    run: list[memoryview] = []  # consecutive bytes parts: one writev
    for part in body:
        if isinstance(part, bytes | memoryview):
            view = memoryview(part).cast("B")
            if view.nbytes:
                run.append(view)
            continue
        if run:
            _writev_all(sock, run)
            run = []
        if part[2]:
            _copy_all(sock, fd, part[0], part[1])
        else:
            _sendfile_all(sock, fd, part[0], part[1])
            used_sendfile = True
    if run:
        _writev_all(sock, run)
    if check is not None:
        if used_sendfile:
            _drain(sock)
        if not check():
            return False
    if isinstance(last, bytes | memoryview):
        _write_all(sock, last, time.monotonic() + STALL_SECONDS)
    else:
        _copy_all(sock, fd, last[0], last[1])
    return True


def _part_size(part: Any) -> int:
    return memoryview(part).nbytes if isinstance(part, bytes | memoryview) else int(part[1])


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
    parts = list(message["parts"])
    count = sum(_part_size(p) for p in parts)
    if not cycle.response_started or cycle.chunked_encoding or cycle.response_complete:
        raise RuntimeError("sendfile needs a started Content-Length response")
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    if not parts:
        return
    transport = cycle.transport
    deadline = time.monotonic() + STALL_SECONDS
    while transport.get_write_buffer_size() and not cycle.disconnected:
        # uvicorn's own bytes first; the thread writes only to an empty buffer.
        if time.monotonic() > deadline:
            _abort(cycle)
        await asyncio.sleep(0.0005)
    if cycle.disconnected:
        return
    try:
        done = await run_in_threadpool(
            _transfer, sock, int(message["fd"]), parts, message.get("check")
        )
    except OSError:
        done = False
    if not done:
        _abort(cycle)
        return
    cycle.expected_content_length -= count

"""``os.sendfile`` for response bodies under uvicorn (httptools), as an ASGI extension.

uvicorn offers neither ``http.response.pathsend`` nor ``http.response.zerocopysend``. The
outermost user middleware ``SendfileMiddleware`` finds uvicorn's connection behind the
server's ``send`` and, when it can take the socket over safely (uvicorn's httptools protocol,
plain TCP, no TLS), announces ``scope["extensions"][EXTENSION]`` and understands two more
messages on ``send``:

- ``{"type": SENDFILE, "fd": int, "parts": [...], "count": int, "check": callable or
  None}`` (``count``: the bytes of all parts, for byte counters on the way) writes the
  parts in order, on worker threads while the client takes bytes (the event loop waits
  for one that does not, holding no thread), once uvicorn's own write buffer is empty: a
  ``bytes`` part as it is, an ``(offset, count, private)`` part from the file ``fd``, with
  ``os.sendfile`` straight from
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
#: Seconds a worker thread waits for a connection that takes no bytes before the event loop
#: waits for it instead: a client that reads keeps its thread, one that stops costs none.
_THREAD_WAIT: Final = 0.005
#: Buffers per ``writev`` call (Linux's IOV_MAX is 1024).
_IOV_MAX: Final = 1024


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


class _WouldBlockError(Exception):
    """The peer took no bytes for ``_THREAD_WAIT``: the event loop waits for it instead."""


def _unacknowledged(sock: int) -> int:
    """Bytes written to ``sock`` that the peer has not acknowledged yet."""
    return int.from_bytes(fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0\0\0\0"), "little")


_BUFFERS = threading.local()


class _Transfer:
    """The parts of one ``SENDFILE`` message (see the module docstring) and how far they
    have been written to ``sock``.

    ``run`` writes on a worker thread while the peer takes bytes, and hands the connection
    back as soon as it does not for ``_THREAD_WAIT``: the event loop then waits for it
    without holding a thread, so clients that stop reading cannot take every worker thread
    (``_send_file``). Parts are written in order; with ``check``, the last one waits until
    every byte before it is acknowledged and ``check()`` returned True.
    """

    def __init__(
        self, sock: int, fd: int, parts: list[Any], check: Callable[[], bool] | None
    ) -> None:
        self.sock, self.fd, self.parts, self.check = sock, fd, parts, check
        self.index = 0  # the part being written
        self.done = 0  # its bytes written
        self.used_sendfile = False

    def run(self) -> str:
        """Write on: ``"done"``; ``"blocked"`` (the peer takes nothing for now);
        ``"unacknowledged"`` (the check waits for the peer to acknowledge what was sent);
        ``"changed"`` (the check failed: the last part is never sent).

        Raises:
            OSError: the client went away, or the file was cut while sending.
        """
        last = len(self.parts) - 1
        try:
            while self.index <= last:
                if self.index == last and self.check is not None and self.done == 0:
                    if self.used_sendfile and not self._acknowledged():
                        return "unacknowledged"
                    if not self.check():
                        return "changed"
                    self.check = None
                part = self.parts[self.index]
                if isinstance(part, bytes | memoryview):
                    self._writev(last if self.check is not None else last + 1)
                elif part[2]:
                    self._copy(part[0], part[1])
                else:
                    self._sendfile(part[0], part[1])
        except _WouldBlockError:
            return "blocked"
        return "done"

    def _next(self) -> None:
        self.index += 1
        self.done = 0

    def _wait(self) -> None:
        """Wait briefly for room in the socket's buffer.

        Raises:
            _WouldBlockError: none came within ``_THREAD_WAIT``.
        """
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        if not poller.poll(_THREAD_WAIT * 1000):
            raise _WouldBlockError
        # An error or hang-up shows as the next write's OSError.

    def _acknowledged(self) -> bool:
        """Whether the peer acknowledged every byte sent, waiting ``_THREAD_WAIT`` at most."""
        deadline = time.monotonic() + _THREAD_WAIT
        pause = 0.00005
        while _unacknowledged(self.sock):
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.001)
        return True

    def _writev(self, stop: int) -> None:
        """Write the run of bytes parts from the current one, before part ``stop``."""
        while self.index < stop:
            views: list[memoryview] = []
            for part in self.parts[self.index : min(stop, self.index + _IOV_MAX)]:
                if not isinstance(part, bytes | memoryview):
                    break
                views.append(memoryview(part).cast("B"))
            if not views:
                return
            views[0] = views[0][self.done :]
            try:
                written = os.writev(self.sock, views)
            except BlockingIOError:
                self._wait()
                continue
            for view in views:  # skip what went out; the part left keeps its place
                if written < view.nbytes:
                    self.done += written
                    break
                written -= view.nbytes
                self._next()

    def _sendfile(self, offset: int, count: int) -> None:
        """Move the file's bytes straight from the page cache to the socket."""
        while self.done < count:
            try:
                sent = os.sendfile(self.sock, self.fd, offset + self.done, count - self.done)
            except BlockingIOError:
                self._wait()
                continue
            if sent == 0:
                raise OSError(errno.EIO, "the file ended before its bytes were sent")
            self.done += sent
            self.used_sendfile = True
        self._next()

    def _copy(self, offset: int, count: int) -> None:
        """Like ``_sendfile``, through a buffer of this thread's own (``pread``, ``write``):
        bytes a later change of the file cannot reach. What a pause leaves unwritten of
        the buffer is read again when writing goes on."""
        buf: bytearray | None = getattr(_BUFFERS, "buf", None)
        if buf is None:
            buf = _BUFFERS.buf = bytearray(_COPY_SLICE)
        view = memoryview(buf)
        while self.done < count:
            want = min(count - self.done, _COPY_SLICE)
            if os.preadv(self.fd, [view[:want]], offset + self.done) != want:
                raise OSError(errno.EIO, "the file ended before its bytes were sent")
            pos = 0
            while pos < want:
                try:
                    n = os.write(self.sock, view[pos:want])
                except BlockingIOError:
                    self._wait()
                    continue
                pos += n
                self.done += n
        self._next()


async def _writable(sock: int) -> None:
    """Wait, on the event loop, until ``sock`` takes bytes again.

    Raises:
        TimeoutError: it took none for ``STALL_SECONDS``.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock, wake)
    try:
        async with asyncio.timeout(STALL_SECONDS):
            await ready
    finally:
        loop.remove_writer(sock)


async def _acknowledged(sock: int) -> None:
    """Wait, on the event loop, until the peer acknowledged every byte sent to ``sock``.

    Raises:
        TimeoutError: the count of unacknowledged bytes stayed put for ``STALL_SECONDS``.
        OSError: the connection broke.
    """
    deadline = time.monotonic() + STALL_SECONDS
    last = -1
    pause = 0.0005
    while left := _unacknowledged(sock):
        if left != last:
            last, deadline = left, time.monotonic() + STALL_SECONDS
        elif time.monotonic() > deadline:
            raise TimeoutError("the client took no bytes for too long")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.01)


async def _transfer(sock: int, fd: int, parts: list[Any], check: Callable[[], bool] | None) -> bool:
    """Write ``parts`` to ``sock`` (see ``_Transfer``); False when ``check`` failed.

    Raises:
        OSError: the client went away or stalled past ``STALL_SECONDS``, or the file was cut
            while sending.
    """
    transfer = _Transfer(sock, fd, parts, check)
    while True:
        status = await run_in_threadpool(transfer.run)
        if status == "done":
            return True
        if status == "changed":
            return False
        if status == "blocked":
            await _writable(sock)
        else:
            await _acknowledged(sock)


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
                await _send_file(cycle, message)
            elif kind == ABORT:
                _abort(cycle)
            else:
                await send(message)

        await self.app(scope, receive, send_more)


def _abort(cycle: Any) -> None:
    if not cycle.disconnected:
        cycle.disconnected = True  # uvicorn then ignores the rest of this response
        cycle.transport.abort()


async def _send_file(cycle: Any, message: Message) -> None:
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
    live = None if cycle.disconnected else _socket_fd(cycle)
    if live is None:
        return
    # The thread writes through a duplicate of the socket's descriptor, taken here on the
    # event loop while the connection is open. A client that goes away meanwhile makes
    # uvicorn close its own descriptor, whose number the next connection may be given at
    # once: the number alone could then lead this answer to another client. The duplicate
    # keeps naming this connection (writes to it fail once the peer is gone).
    sock = os.dup(live)
    try:
        done = await _transfer(sock, int(message["fd"]), parts, message.get("check"))
    except OSError:
        done = False
    finally:
        os.close(sock)
    if not done:
        _abort(cycle)
        return
    cycle.expected_content_length -= count

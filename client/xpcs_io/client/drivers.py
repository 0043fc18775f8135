"""The two drivers: they move the bytes of an ``Attempt`` (see ``core``) and nothing else.

``Sockets`` (blocking) and ``AsyncSockets`` (asyncio) speak plain HTTP/1.1 on their own
keep-alive sockets and receive every byte straight into the ``ResponseReader``'s buffer
(``recv_into``), so a Content-Length body lands in the numpy buffer its arrays will view.
``Httpx`` and ``AsyncHttpx`` serve TLS, proxies and an ``httpx`` client given by the caller:
they send the same ``Request`` and feed the raw body into the same reader. Failures become
``TransportError`` with what the core needs to decide on a retry.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from xpcs_io.client.core import Attempt
from xpcs_io.client.transport import Origin, TransportError

__all__ = ["AsyncHttpx", "AsyncSockets", "Httpx", "Sockets"]


def alive(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket is still open (the server may have timed it out):
    a non-blocking peek sees end-of-file on a closed one."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
    except OSError:
        return False


def _failure(exc: BaseException, attempt: Attempt | None, reused: bool = False) -> TransportError:
    """A socket error as a ``TransportError`` (``attempt`` None: it failed to connect).
    Stale: a reused connection that failed before any byte of an answer."""
    sent = attempt is not None
    stale = reused and attempt is not None and not attempt.reader.started
    if isinstance(exc, TransportError):
        exc.stale = exc.stale and stale
        return exc
    if isinstance(exc, TimeoutError | socket.timeout):
        return TransportError("timed out", sent=sent)
    what = "the connection failed" if sent else "cannot connect"
    stale = stale and isinstance(exc, ConnectionResetError | BrokenPipeError)
    return TransportError(f"{what}: {exc!r}", sent=sent, stale=stale)


class _Pool:
    """Idle keep-alive sockets to one origin, for both socket drivers (thread-safe); at most
    ``max_idle`` are kept."""

    max_idle = 8

    def __init__(self, origin: Origin, timeout: float | None) -> None:
        self.origin = origin
        self.timeout = timeout
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def _reuse(self) -> socket.socket | None:
        """An idle socket the server has not closed (left non-blocking), or None."""
        while True:
            with self._lock:
                sock = self._idle.pop() if self._idle else None
            if sock is None or alive(sock):
                return sock
            sock.close()

    def _done(self, sock: socket.socket, keep: bool) -> None:
        """Keep ``sock`` for the next request, or close it."""
        with self._lock:
            if keep and len(self._idle) < self.max_idle:
                self._idle.append(sock)
                return
        sock.close()

    def _lost(self, sock: socket.socket, reused: bool) -> None:
        """Close a socket that failed; when it had idled, the others probably died too."""
        sock.close()
        if reused:
            self.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


class Sockets(_Pool):
    """Blocking plain HTTP/1.1 to one origin on keep-alive sockets; the timeout bounds each
    wait for the peer."""

    def _take(self) -> tuple[socket.socket, bool]:
        sock = self._reuse()
        if sock is not None:
            sock.settimeout(self.timeout)
            return sock, True
        try:
            sock = socket.create_connection((self.origin.host, self.origin.port), self.timeout)
        except OSError as exc:
            raise _failure(exc, None) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    def move(self, attempt: Attempt) -> None:
        """Send the request and receive its whole answer into the reader.

        Raises:
            TransportError: no complete answer.
        """
        sock, reused = self._take()
        reader = attempt.reader
        try:
            try:
                for data in attempt.request.encode(self.origin.authority):
                    sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                if not attempt.request.body:
                    raise
                # The server may have answered early (413) and closed: read that answer.
            while not reader.done:
                reader.received(sock.recv_into(reader.buffer()))
        except (OSError, TransportError) as exc:
            self._lost(sock, reused)
            raise _failure(exc, attempt, reused) from exc
        self._done(sock, reader.keep_alive)


class AsyncSockets(_Pool):
    """Plain HTTP/1.1 to one origin on non-blocking keep-alive sockets of the running event
    loop; the timeout bounds each wait for the peer (it restarts whenever bytes move)."""

    max_idle = 16  # one event loop may run many calls at once

    async def _take(self, loop: asyncio.AbstractEventLoop) -> tuple[socket.socket, bool]:
        sock = self._reuse()
        if sock is not None:
            return sock, True
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(
                    self.origin.host, self.origin.port, type=socket.SOCK_STREAM
                )
                family, kind, proto, _, address = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
        except OSError as exc:  # TimeoutError is one
            if sock is not None:
                sock.close()
            raise _failure(exc, None) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    async def move(self, attempt: Attempt) -> None:
        """Send the request and receive its whole answer into the reader.

        Raises:
            TransportError: no complete answer.
        """
        loop = asyncio.get_running_loop()
        sock, reused = await self._take(loop)
        reader = attempt.reader
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                try:
                    for data in attempt.request.encode(self.origin.authority):
                        await loop.sock_sendall(sock, data)
                except (BrokenPipeError, ConnectionResetError):
                    if not attempt.request.body:
                        raise
                while not reader.done:
                    reader.received(await loop.sock_recv_into(sock, reader.buffer()))
                    if self.timeout is not None:
                        deadline.reschedule(loop.time() + self.timeout)
        except (OSError, TransportError) as exc:
            self._lost(sock, reused)
            raise _failure(exc, attempt, reused) from exc
        except BaseException:  # cancelled: the socket is mid-answer, never reuse it
            sock.close()
            raise
        self._done(sock, reader.keep_alive)


def _tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _httpx_failure(exc: httpx.TransportError) -> TransportError:
    """An httpx error as a ``TransportError`` (TLS failures and unsupported URLs are
    permanent; a connection that never opened was not sent)."""
    if isinstance(exc, TransportError):
        return exc
    if _tls(exc) or isinstance(exc, httpx.UnsupportedProtocol):
        return TransportError(f"{exc!r}", sent=False, transient=False)
    if isinstance(exc, httpx.RemoteProtocolError):
        closed = "without sending" in str(exc) or "disconnected" in str(exc).lower()
        return TransportError(f"{exc!r}", transient=closed)
    return TransportError(f"{exc!r}", sent=not isinstance(exc, httpx.ConnectError))


def _headers(response: httpx.Response) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _stream(client: httpx.Client | httpx.AsyncClient, attempt: Attempt) -> Any:
    request = attempt.request
    return client.stream(
        request.method, request.url, headers=request.headers, content=request.content()
    )


class Httpx:
    """Blocking exchanges through an httpx client (TLS, proxies, or one given by the caller);
    the raw body goes into the reader (its Content-Encoding is undone by the core)."""

    def __init__(self, client: httpx.Client, owned: bool) -> None:
        self.client = client
        self.owned = owned

    def move(self, attempt: Attempt) -> None:
        """Send the request and receive its whole answer into the reader.

        Raises:
            TransportError: no complete answer.
        """
        try:
            with _stream(self.client, attempt) as response:
                attempt.reader.start(response.status_code, _headers(response))
                chunks: Iterator[bytes] = response.iter_raw()
                for chunk in chunks:
                    attempt.reader.feed(chunk)
                attempt.reader.received(0)
        except httpx.TransportError as exc:
            raise _httpx_failure(exc) from exc

    def close(self) -> None:
        """Close the client if this driver made it."""
        if self.owned:
            self.client.close()


class AsyncHttpx:
    """``Httpx`` for asyncio."""

    def __init__(self, client: httpx.AsyncClient, owned: bool) -> None:
        self.client = client
        self.owned = owned

    async def move(self, attempt: Attempt) -> None:
        """Send the request and receive its whole answer into the reader.

        Raises:
            TransportError: no complete answer.
        """
        try:
            async with _stream(self.client, attempt) as response:
                attempt.reader.start(response.status_code, _headers(response))
                async for chunk in response.aiter_raw():
                    attempt.reader.feed(chunk)
                attempt.reader.received(0)
        except httpx.TransportError as exc:
            raise _httpx_failure(exc) from exc

    async def aclose(self) -> None:
        """Close the client if this driver made it."""
        if self.owned:
            await self.client.aclose()

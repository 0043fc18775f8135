"""The asyncio twin of ``FastHTTPTransport``: plain HTTP/1.1 on non-blocking sockets, bodies
received straight into one numpy buffer with ``loop.sock_recv_into``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np

from xpcs_io.client.fasthttp import FastHTTPTransport, alive, chunk_size, parse_head
from xpcs_io.client.transport import DEFAULT_MAX_RESPONSE_BYTES, check_length

__all__ = ["AsyncFastHTTPTransport"]

_MAX_HEAD = 64 * 1024


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, data: Any) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if len(self.data):
            yield self.data.data if isinstance(self.data, np.ndarray) else self.data  # type: ignore[misc]


class AsyncFastHTTPTransport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 with keep-alive sockets per host, for one event loop; response bodies
    above ``max_body`` bytes are refused before they are allocated."""

    def __init__(self, max_idle: int = 16, *, max_body: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.max_idle = max_idle
        self.max_body = max_body
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}

    async def _take(
        self, key: tuple[str, int], timeout: float | None, fresh: bool = False
    ) -> tuple[socket.socket, bool]:
        idle = self._idle.get(key)
        while idle and not fresh:
            pooled = idle.pop()
            if alive(pooled):
                pooled.setblocking(False)
                return pooled, True
            pooled.close()
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            infos = await loop.getaddrinfo(*key, type=socket.SOCK_STREAM)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
        except (TimeoutError, OSError) as exc:
            if sock is not None:
                sock.close()
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc!r}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    async def aclose(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
        self._idle.clear()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole response (one retry on a stale connection)."""
        url = request.url
        key = (url.host, url.port or 80)
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("read") or timeouts.get("connect")
        head = FastHTTPTransport._head(request)
        body = await request.aread()
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            sock, reused = await self._take(key, timeout, fresh=attempt > 0)
            try:
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, head + body), timeout)
                except (BrokenPipeError, ConnectionResetError):
                    if not body:
                        raise
                    response, _ = await asyncio.wait_for(
                        self._receive(loop, sock, request.method), timeout
                    )
                    sock.close()
                    return response
                response, keep = await asyncio.wait_for(
                    self._receive(loop, sock, request.method), timeout
                )
            except (TimeoutError, OSError, httpx.RemoteProtocolError) as exc:
                sock.close()
                timed_out = isinstance(exc, asyncio.TimeoutError | socket.timeout)
                if reused and attempt == 0 and not timed_out:
                    continue
                if timed_out:
                    raise httpx.ReadTimeout("timed out") from exc
                if isinstance(exc, httpx.RemoteProtocolError):
                    raise
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            if keep and len(self._idle.setdefault(key, [])) < self.max_idle:
                self._idle[key].append(sock)
            else:
                sock.close()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _receive(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, method: str
    ) -> tuple[httpx.Response, bool]:
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            if len(buf) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too large")
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise httpx.RemoteProtocolError("server closed the connection without answering")
            buf += chunk
        head = parse_head(buf, method)
        data: Any
        if head.framing == "none":
            data = b""
        elif head.framing == "length":
            check_length(head.length, self.max_body)
            out = np.empty(head.length, dtype=np.uint8)
            view = out.data
            got = min(len(head.rest), head.length)
            view[:got] = head.rest[:got]
            while got < head.length:
                n = await loop.sock_recv_into(sock, view[got:])
                if n == 0:
                    raise httpx.RemoteProtocolError(
                        f"body ended after {got} of {head.length} bytes"
                    )
                got += n
            data = out
        else:
            # Rare here (the service always sends Content-Length).
            rest = bytearray(head.rest)
            while (data := _dechunk(rest) if head.framing == "chunked" else None) is None:
                chunk = await loop.sock_recv(sock, 1 << 20)
                if not chunk:
                    if head.framing == "chunked":
                        raise httpx.RemoteProtocolError("chunked body ended early")
                    data = bytes(rest)
                    break
                rest += chunk
                check_length(len(rest), self.max_body)
        response = httpx.Response(head.status, headers=head.headers, stream=_AsyncBody(data))
        return response, head.keep_alive


def _dechunk(buf: bytearray) -> bytes | None:
    """The body of a complete chunked message in ``buf``, or None while it is incomplete.

    Raises:
        httpx.RemoteProtocolError: a malformed chunk size line.
    """
    out = bytearray()
    pos = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            if len(buf) - pos > 1024:
                raise httpx.RemoteProtocolError("chunk-size line too long")
            return None
        size = chunk_size(bytes(buf[pos:line_end]))
        pos = line_end + 2
        if len(buf) < pos + size + 2:
            return None
        if size == 0:
            return bytes(out)
        out += buf[pos : pos + size]
        pos += size + 2

"""A lean HTTP/1.1 transport for httpx that reads large bodies straight into numpy memory.

httpx's own transport hands a 50 MB q-map to Python in 64 KiB pieces, each parsed by h11 and
copied again; on loopback that costs the client three times more CPU than the bytes
themselves. This transport speaks plain HTTP/1.1 (keep-alive, Content-Length or chunked
bodies) on a socket and ``recv_into``\\s a Content-Length body into one preallocated buffer,
which becomes the decoded arrays' memory. It is used for ``http://`` servers when no proxy is
configured; everything else (TLS, proxies) goes through httpx's standard transport.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from xpcs_io.client.transport import DEFAULT_MAX_RESPONSE_BYTES, check_length, parse_length

__all__ = [
    "FastHTTPTransport",
    "Head",
    "alive",
    "chunk_size",
    "parse_head",
    "usable_for",
]

_MAX_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 1024
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def usable_for(base_url: str) -> bool:
    """Whether the fast transport can serve ``base_url`` (plain http, no proxy set)."""
    return base_url.startswith("http://") and not any(os.environ.get(v) for v in _PROXY_VARS)


@dataclass
class Head:
    """A parsed response head and how its body is framed."""

    status: int
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    framing: str  # "none", "length", "chunked" or "close"
    length: int
    rest: memoryview  # body bytes received with the head


def parse_head(buf: bytearray, method: str) -> Head:
    """Parse the status line and headers at the start of ``buf`` (which holds the blank line).

    Raises:
        httpx.RemoteProtocolError: a malformed status line or header.
    """
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    try:
        version, status_text = lines[0].split(b" ", 2)[:2]
        if not (len(status_text) == 3 and status_text.isdigit()):
            raise ValueError(status_text)
        status = int(status_text)
    except ValueError:
        raise httpx.RemoteProtocolError(f"bad status line {lines[0][:80]!r}") from None
    if not 100 <= status <= 599:
        raise httpx.RemoteProtocolError(f"bad status {status}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"bad header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    lookup = {n.lower(): v for n, v in headers}
    keep = version == b"HTTP/1.1" and lookup.get(b"connection", b"").lower() != b"close"
    length = 0
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        framing = "none"
    elif b"content-length" in lookup:
        framing = "length"
        length = parse_length(lookup[b"content-length"])
    elif lookup.get(b"transfer-encoding", b"").lower() == b"chunked":
        framing = "chunked"
    else:
        framing, keep = "close", False
    return Head(status, headers, keep, framing, length, memoryview(buf)[end + 4 :])


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line of a chunked body (extensions after ';' ignored).

    Raises:
        httpx.RemoteProtocolError: not a hexadecimal number of at most 16 digits.
    """
    text = line.split(b";", 1)[0].strip()
    if not text or len(text) > 16 or text.strip(b"0123456789abcdefABCDEF"):
        raise httpx.RemoteProtocolError(f"bad chunk size {line[:40]!r}")
    return int(text, 16)


def alive(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket is still open (the server may have timed it out):
    a non-blocking peek sees end-of-file on a closed one."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        finally:
            sock.setblocking(True)
    except OSError:
        return False


class _Body(httpx.SyncByteStream):
    def __init__(self, data: Any) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        if len(self.data):
            # A writable view of the preallocated buffer: BodyBuffer adopts it without a copy.
            yield self.data.data if isinstance(self.data, np.ndarray) else self.data  # type: ignore[misc]


class FastHTTPTransport(httpx.BaseTransport):
    """Plain HTTP/1.1 with a small pool of keep-alive sockets per host (thread-safe);
    response bodies above ``max_body`` bytes are refused before they are allocated."""

    def __init__(self, max_idle: int = 8, *, max_body: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.max_idle = max_idle
        self.max_body = max_body
        self._idle: dict[tuple[str, int], list[socket.socket]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connections

    def _take(
        self, key: tuple[str, int], timeout: float | None, fresh: bool = False
    ) -> tuple[socket.socket, bool]:
        while not fresh:
            with self._lock:
                idle = self._idle.get(key)
                sock = idle.pop() if idle else None
            if sock is None:
                break
            if alive(sock):
                sock.settimeout(timeout)
                return sock, True
            sock.close()
        try:
            sock = socket.create_connection(key, timeout=timeout)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    def _give_back(self, key: tuple[str, int], sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            for idle in self._idle.values():
                for sock in idle:
                    sock.close()
            self._idle.clear()

    # ------------------------------------------------------------------ one exchange

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole response (retrying once on a keep-alive
        connection the server had closed meanwhile)."""
        url = request.url
        key = (url.host, url.port or 80)
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("read") or timeouts.get("connect")
        head = self._head(request)
        body = request.read()
        for attempt in (0, 1):
            sock, reused = self._take(key, timeout, fresh=attempt > 0)
            try:
                try:
                    sock.sendall(head + body if len(body) < 65536 else head)
                    if len(body) >= 65536:
                        sock.sendall(body)
                except (BrokenPipeError, ConnectionResetError):
                    if not body:
                        raise
                    # The server may have answered early (413) and closed: read that answer.
                    response, _ = self._receive(sock, request.method)
                    sock.close()
                    return response
                response, keep = self._receive(sock, request.method)
            except (OSError, httpx.RemoteProtocolError) as exc:
                sock.close()
                if reused and attempt == 0 and not isinstance(exc, socket.timeout):
                    continue  # a stale keep-alive connection: one fresh try
                if isinstance(exc, socket.timeout):
                    raise httpx.ReadTimeout(str(exc) or "timed out") from exc
                if isinstance(exc, httpx.RemoteProtocolError):
                    raise
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            if keep:
                self._give_back(key, sock)
            else:
                sock.close()
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _head(request: httpx.Request) -> bytes:
        target = request.url.raw_path.decode("ascii")
        lines = [f"{request.method} {target} HTTP/1.1"]
        has_length = False
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower == b"content-length":
                has_length = True
            if lower == b"transfer-encoding":
                continue  # the body is sent whole, with its length
            lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        if not has_length and request.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(request.read())}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _receive(self, sock: socket.socket, method: str) -> tuple[httpx.Response, bool]:
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            if len(buf) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("response head too large")
            chunk = sock.recv(65536)
            if not chunk:
                raise httpx.RemoteProtocolError("server closed the connection without answering")
            buf += chunk
        head = parse_head(buf, method)
        limit = self.max_body
        if head.framing == "none":
            data: Any = b""
        elif head.framing == "length":
            check_length(head.length, limit)
            data = self._read_exact(sock, head.length, head.rest)
        elif head.framing == "chunked":
            data = self._read_chunked(sock, bytearray(head.rest), limit)
        else:
            data = self._read_to_close(sock, bytearray(head.rest), limit)
        response = httpx.Response(head.status, headers=head.headers, stream=_Body(data))
        return response, head.keep_alive

    @staticmethod
    def _read_exact(sock: socket.socket, n: int, first: memoryview) -> Any:
        out = np.empty(n, dtype=np.uint8)
        view = out.data
        got = min(len(first), n)
        view[:got] = first[:got]
        while got < n:
            r = sock.recv_into(view[got:], n - got)
            if r == 0:
                raise httpx.RemoteProtocolError(f"body ended after {got} of {n} bytes")
            got += r
        return out

    @staticmethod
    def _read_chunked(sock: socket.socket, buf: bytearray, limit: int) -> bytes:
        out = bytearray()
        pos = 0

        def need(k: int) -> None:
            while len(buf) - pos < k:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise httpx.RemoteProtocolError("chunked body ended early")
                buf.extend(chunk)

        while True:
            while (line_end := buf.find(b"\r\n", pos)) < 0:
                if len(buf) - pos > _MAX_CHUNK_LINE:
                    raise httpx.RemoteProtocolError("chunk-size line too long")
                need(len(buf) - pos + 1)
            size = chunk_size(bytes(buf[pos:line_end]))
            check_length(len(out) + size, limit)
            pos = line_end + 2
            need(size + 2)
            out += buf[pos : pos + size]
            pos += size + 2
            del buf[:pos]  # what is consumed is not kept twice
            pos = 0
            if size == 0:
                return bytes(out)

    @staticmethod
    def _read_to_close(sock: socket.socket, buf: bytearray, limit: int) -> bytes:
        check_length(len(buf), limit)
        while chunk := sock.recv(1 << 20):
            buf += chunk
            check_length(len(buf), limit)
        return bytes(buf)

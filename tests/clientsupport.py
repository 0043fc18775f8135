"""What the client's tests share: a raw-socket HTTP server on 127.0.0.1 answering each
request with bytes chosen by the test (malformed, truncated and hostile answers, closed and
reset connections, error statuses: real bytes on a real socket; it counts connections and
requests, so attempts), and ``run`` to use either client the same way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade


class _Reset(bytes):
    """The type of ``RESET``."""


#: A reply that resets the connection instead of answering.
RESET = _Reset()
CLIENTS = ["sync", "async"]


def run(client: str, url: str, use: Callable[[Any], Any], **kwargs: Any) -> Any:
    """``use(api)`` on a fresh client of kind ``client`` ("sync" or "async"); on the async
    one, what ``use`` returns is awaited (each item of a list in turn)."""
    if client == "sync":
        with RemoteHDF5Facade(url, **kwargs) as api:
            return use(api)

    async def go() -> Any:
        async with AsyncRemoteHDF5Facade(url, **kwargs) as api:
            out = use(api)
            return [await x for x in out] if isinstance(out, list) else await out

    return asyncio.run(go())


class RawServer:
    """Answers request number ``n`` (0-based) with ``reply(n)``; ``None`` closes the
    connection without an answer, ``RESET`` resets it (RST). With ``keep_alive`` a connection serves requests until
    the client closes it, else it is closed after one answer. With ``first`` the answer is
    sent as soon as a connection opens (a server that does not speak the client's protocol)."""

    def __init__(
        self,
        reply: Callable[[int], bytes | None] | bytes,
        *,
        keep_alive: bool = False,
        first: bool = False,
    ) -> None:
        self.reply = reply
        self.served = 0
        self.keep_alive = keep_alive
        self.first = first
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _request(self, conn: socket.socket, data: bytes) -> tuple[bytes, bytes] | None:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            rest += chunk
        return head + b"\r\n\r\n" + rest[:length], rest[length:]

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(10)
            if self.first:
                conn.sendall(self.reply if isinstance(self.reply, bytes) else b"")
                return
            pending = b""
            while True:
                got = self._request(conn, pending)
                if got is None:
                    return
                request, pending = got
                with self._lock:
                    n = len(self.requests)
                    self.requests.append(request)
                answer = self.reply if isinstance(self.reply, bytes) else self.reply(n)
                self.served += 1
                if answer is None:
                    return
                if isinstance(answer, _Reset):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(answer)
                if not self.keep_alive:
                    conn.shutdown(socket.SHUT_RDWR)
                    return

    def close(self) -> None:
        self.sock.close()


def answer(body: bytes, status: str = "200 OK", headers: bytes = b"") -> bytes:
    """A well-formed HTTP/1.1 answer with a Content-Length."""
    return (
        f"HTTP/1.1 {status}\r\n".encode()
        + headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )

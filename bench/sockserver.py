"""The raw-TCP floor: a tiny server that sends N bytes on request, and its client.

Protocol: the client sends an 8-byte big-endian length, the server answers with that many
bytes from one preallocated buffer, on a kept-alive connection (like HTTP keep-alive, minus
HTTP). Run as ``python -m bench.sockserver --port P --size BYTES``.
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading

import numpy as np

_LEN = struct.Struct(">Q")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _serve_one(conn: socket.socket, payload: memoryview) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                (n,) = _LEN.unpack(_recv_exact(conn, _LEN.size))
                conn.sendall(payload[: min(n, len(payload))])
        except (ConnectionError, OSError):
            return


def serve(port: int, size: int) -> None:
    """Serve forever on 127.0.0.1:``port`` from a ``size``-byte buffer."""
    payload = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8).data
    with socket.create_server(("127.0.0.1", port)) as srv:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=_serve_one, args=(conn, payload), daemon=True).start()


class SocketClient:
    """Receives N bytes per request into one preallocated buffer (reused across requests)."""

    def __init__(self, port: int, max_size: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = np.empty(max_size, dtype=np.uint8)
        self.view = self.buf.data

    def fetch(self, n: int) -> int:
        """Ask for ``n`` bytes and receive them all; returns ``n``."""
        self.sock.sendall(_LEN.pack(n))
        got = 0
        while got < n:
            k = self.sock.recv_into(self.view[got:n], n - got)
            if not k:
                raise ConnectionError("socket server closed the connection")
            got += k
        return n

    def close(self) -> None:
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    args = parser.parse_args()
    serve(args.port, args.size)


if __name__ == "__main__":
    main()

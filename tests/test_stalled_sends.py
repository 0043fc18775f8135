"""Answers written by worker threads (``zerocopy``: many-file answers, answers sent from a
file's plan) against clients that read slowly or not at all, on a real server: every byte
arrives as the HDF5 read gives it, and clients that stop reading hold no worker thread, so
more of them than the server has threads cannot stop it from answering others."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server
from xpcs_io import wire
from xpcs_io.demo import DemoSpec, write_native_file
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool

# Answers of ~17 MB: far more than a loopback connection's buffers hold.
SHAPE = (1024, 1024)
#: More stalled readers than the worker threads the server runs reads on (anyio's 40).
STALLED = 48
MANY = json.dumps({"file_paths": ["q.h5"]}).encode()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stalled")
    write_native_file(root / "q.h5", DemoSpec(shape=SHAPE, n_delay=4, n_q=6))
    write_native_file(root / "small.h5", DemoSpec(shape=(32, 32), n_delay=4, n_q=6))
    return root


@pytest.fixture(scope="module", params=["cached", "cache off"])
def srv(
    request: pytest.FixtureRequest, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {"XPCS_IO_CACHE_BYTES": "0"} if request.param == "cache off" else {}
    server = start_server(root, tmp_path_factory.mktemp("logs") / "s.log", env=env)
    yield server
    server.stop()


def _request(host: str, kind: str) -> bytes:
    if kind == "many":
        return (
            f"POST /v1/qmap/many HTTP/1.1\r\nHost: {host}\r\nAccept: application/msgpack\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(MANY)}\r\n\r\n"
        ).encode() + MANY
    return (
        f"GET /v1/qmap?file_path=q.h5 HTTP/1.1\r\nHost: {host}\r\n"
        "Accept: application/msgpack\r\n\r\n"
    ).encode()


def _connect(url: str, kind: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.sendall(_request(host, kind))
    return sock


def _slow_read(sock: socket.socket) -> bytes:
    """A whole answer's body, read in small bites with pauses longer than a worker thread
    waits for a connection (so the server hands it back and forth)."""
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    head, body = head.split(b"\r\n\r\n", 1)
    length = int(next(v for k, v in _headers(head) if k == "content-length"))
    parts = [body]
    got, bites = len(body), 0
    while got < length:
        chunk = sock.recv(min(1 << 20, length - got))
        assert chunk, "the answer ended early"
        parts.append(chunk)
        got += len(chunk)
        bites += 1
        if bites % 8 == 0:
            time.sleep(0.02)
    return b"".join(parts)


def _headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]


@pytest.mark.parametrize("kind", ["many", "single"])
def test_a_slow_reader_gets_every_byte(srv: Server, root: Path, kind: str) -> None:
    pool = HDF5ConnectionPool(max_size=2)
    try:
        qmap = HDF5Facade(pool, root=root).read_qmap("q.h5")
    finally:
        pool.shutdown()
    for _ in range(3):  # the first cold read teaches the file's plan; then sent from it
        with _connect(srv.url, kind) as sock:
            body = _slow_read(sock)
        got = wire.unpack(body)
        item = got[0]["result"] if kind == "many" else got
        for name in ("sqmap", "dqmap", "phis", "mask", "partition_map"):
            assert (item[name] == getattr(qmap, name)).all()


@pytest.mark.parametrize("kind", ["many", "single"])
def test_readers_that_stop_reading_hold_no_worker_thread(srv: Server, kind: str) -> None:
    for _ in range(2):  # cached, or the file's plan learnt: the next answers come whole
        with _connect(srv.url, kind) as sock:
            _slow_read(sock)
    stalled = [_connect(srv.url, kind, rcvbuf=4096) for _ in range(STALLED)]
    try:
        for sock in stalled:  # each answer has begun (or was refused): the server is stuck
            assert sock.recv(1)
        for _ in range(5):
            r = httpx.get(f"{srv.url}/v1/geometry", params={"file_path": "small.h5"}, timeout=30)
            assert r.status_code == 200
    finally:
        for sock in stalled:
            sock.close()

"""The client's lean HTTP/1.1 transport against real servers: keep-alive reuse, a server
that closed an idle connection, chunked and close-delimited bodies, bodies adopted without a
copy, and errors as httpx raises them (so the client's retry rules apply unchanged)."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from xpcs_io.client import RemoteConnectionError, RemoteHDF5Facade, RetryPolicy
from xpcs_io.client.fasthttp import Dechunker, FastHTTPTransport, usable_for
from xpcs_io.client.transport import BodyBuffer

from .conftest import Server, free_port


def test_used_for_plain_http_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    assert usable_for("http://127.0.0.1:8000")
    assert not usable_for("https://example.org")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not usable_for("http://127.0.0.1:8000")


def test_keep_alive_reuses_one_connection(server: Server, native_file: Path) -> None:
    transport = FastHTTPTransport()
    rel = native_file.relative_to(server.root).as_posix()
    with httpx.Client(transport=transport) as http:
        api = RemoteHDF5Facade(server.url, http=http)
        for _ in range(5):
            api.read_geometry_metadata(rel)
        assert sum(len(v) for v in transport._idle.values()) == 1
        api.read_qmap(rel)
    transport.close()


def test_large_body_lands_in_one_buffer(server: Server, workdir: Path) -> None:
    from xpcs_io.tools.demo import DemoSpec, write_native_file

    path = write_native_file(workdir / "big.hdf5", DemoSpec(shape=(700, 600), n_delay=4, n_q=2))
    with RemoteHDF5Facade(server.url) as api:
        q = api.read_qmap(path.relative_to(server.root).as_posix())
    arrays = [q.sqmap, q.dqmap, q.phis, q.mask, q.partition_map]
    starts = [a.__array_interface__["data"][0] for a in arrays if a is not None]
    ends = [a.__array_interface__["data"][0] + a.nbytes for a in arrays if a is not None]
    # Views into the one body buffer: laid out back to back, a few header bytes apart.
    assert max(ends) - min(starts) < sum(a.nbytes for a in arrays if a is not None) + 4096
    assert all(a is not None and a.flags.writeable for a in arrays)


def test_body_buffer_adopts_a_whole_writable_body() -> None:
    source = np.arange(1000, dtype=np.uint8)
    buf = BodyBuffer(1000)
    buf.add(source.data)  # type: ignore[arg-type]
    assert np.shares_memory(buf.result(), source)
    copied = BodyBuffer(1000)
    copied.add(source.tobytes())
    assert not np.shares_memory(copied.result(), source)
    np.testing.assert_array_equal(copied.result(), source)


class _Scripted:
    """A tiny server answering each connection from a script, to reach the edge cases."""

    def __init__(self, answers: list[bytes], close_after: bool = False) -> None:
        self.answers = answers
        self.close_after = close_after
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for answer in self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests.append(data)
                conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[list[_Scripted]]:
    made: list[_Scripted] = []
    yield made
    for s in made:
        s.close()


def test_chunked_and_close_delimited_bodies(scripted: list[_Scripted]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    to_close = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    srv = _Scripted([chunked, to_close])
    scripted.append(srv)
    with httpx.Client(transport=FastHTTPTransport()) as http:
        assert http.get(f"http://127.0.0.1:{srv.port}/a").content == b"hello world"
        assert http.get(f"http://127.0.0.1:{srv.port}/b").content == b"until the end"
    assert srv.requests[0].startswith(b"GET /a HTTP/1.1\r\n")


def test_stale_keep_alive_connection_is_retried_once(scripted: list[_Scripted]) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    srv = _Scripted([ok, ok])  # the server closes each connection after one answer
    scripted.append(srv)
    with httpx.Client(transport=FastHTTPTransport()) as http:
        assert http.get(f"http://127.0.0.1:{srv.port}/1").content == b"ok"
        # The pooled socket is dead now; the transport notices and reconnects.
        assert http.get(f"http://127.0.0.1:{srv.port}/2").content == b"ok"


def test_truncated_body_is_a_protocol_error(scripted: list[_Scripted]) -> None:
    srv = _Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"])
    scripted.append(srv)
    with (
        httpx.Client(transport=FastHTTPTransport()) as http,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        http.get(f"http://127.0.0.1:{srv.port}/x")


def test_garbage_status_line_is_a_protocol_error(scripted: list[_Scripted]) -> None:
    srv = _Scripted([b"NONSENSE\r\n\r\n"])
    scripted.append(srv)
    with (
        httpx.Client(transport=FastHTTPTransport()) as http,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        http.get(f"http://127.0.0.1:{srv.port}/x")


def test_refused_connection_becomes_remote_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    retry = RetryPolicy(attempts=2, base=0.01)
    with RemoteHDF5Facade(url, retry=retry) as api, pytest.raises(RemoteConnectionError) as info:
        api.read_geometry_metadata("x.hdf5")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_same_results_as_the_standard_transport(server: Server, native_file: Path) -> None:
    rel = native_file.relative_to(server.root).as_posix()
    with RemoteHDF5Facade(server.url) as fast, httpx.Client() as plain_http:
        plain = RemoteHDF5Facade(server.url, http=plain_http)
        assert fast.read_qmap(rel) == plain.read_qmap(rel)
        assert fast.read_g2_data(rel, q_idx=2) == plain.read_g2_data(rel, q_idx=2)
        with pytest.raises(FileNotFoundError):
            fast.read_qmap("missing.hdf5")


def test_async_transport_edge_cases(scripted: list[_Scripted]) -> None:
    import asyncio

    from xpcs_io.client.afasthttp import AsyncFastHTTPTransport

    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    srv = _Scripted([chunked, ok, ok, short])
    scripted.append(srv)

    async def run() -> None:
        async with httpx.AsyncClient(transport=AsyncFastHTTPTransport()) as http:
            base = f"http://127.0.0.1:{srv.port}"
            assert (await http.get(f"{base}/c")).content == b"hello"  # chunked, kept alive
            assert (await http.get(f"{base}/1")).content == b"ok"  # stale socket: reconnect
            assert (await http.get(f"{base}/2")).content == b"ok"
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(f"{base}/3")
        async with httpx.AsyncClient(transport=AsyncFastHTTPTransport()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{free_port()}/")

    asyncio.run(run())


def test_dechunker_reassembles_many_chunks_split_anywhere() -> None:
    rng = random.Random(3)
    pieces = [bytes([i % 251]) * rng.randint(1, 3000) for i in range(2000)]
    wire = b"".join(b"%x;ext=1\r\n" % len(p) + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    body = Dechunker()
    pos, done = 0, False
    while not done:
        step = rng.randint(1, 70_000)
        done = body.feed(wire[pos : pos + step])
        pos += step
    assert pos >= len(wire)
    assert body.result().tobytes() == b"".join(pieces)
    # The last chunk is complete only with its CRLF (else it would be left in the socket).
    partial = Dechunker()
    assert not partial.feed(b"3\r\nabc\r\n0\r\n")
    assert partial.feed(b"\r\n")
    assert partial.result().tobytes() == b"abc"
    with pytest.raises(httpx.RemoteProtocolError, match="bad chunk size"):
        Dechunker().feed(b"zz\r\n")

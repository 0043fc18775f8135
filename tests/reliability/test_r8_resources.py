"""R8: resources stay bounded and are given back.

- Many distinct files (200 bounded, 1,000 in the soak) read twice through a server with
  ``--pool-size 32``: its open file descriptors grow by about the pool size, not the file
  count, do not grow on the second pass, and fall back once the pool is cleared.
- Clients that disconnect in the middle of downloading a large q-map leave no descriptor and
  no checked-out handle behind.
- SIGTERM while large downloads are in flight (read slowly, so the server must wait): every
  response completes in full, then the server exits and logs that the pool was shut down.
"""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io import wire
from xpcs_io.tools.demo import DemoSpec, write_native_file

from ..conftest import Server, start_server
from .support import (
    Figure,
    fd_count,
    port_of,
    rss_bytes,
    scale,
    server_5xx,
    serving,
    sha256_of,
    stop,
)

POOL = 32
N_FILES = scale(200, 1000)
BIG = scale((1000, 1000), (2162, 2068))  # a q-map response of ~15 MB / ~67 MB
DISCONNECTS = scale(5, 50)
IN_FLIGHT = scale(1, 4)


def _pool_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = wire.unpack(httpx.get(f"{url}/v1/pool/stats", timeout=30).content)
    return stats


def _in_use(stats: dict[str, Any]) -> int:
    return sum(int(f["in_use"]) for f in stats.get("open_files", []))


def _settle(pid: int, want: int, seconds: float = 5.0) -> int:
    """The fd count of ``pid`` once it drops to ``want`` or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    n = fd_count(pid)
    while n > want and time.monotonic() < deadline:
        time.sleep(0.05)
        n = fd_count(pid)
    return n


@pytest.mark.slow
@pytest.mark.timeout(scale(240, 900))
def test_many_files_keep_descriptors_bounded(tmp_path: Path) -> None:
    fig = Figure("R8", "many-files", f"{N_FILES} distinct files through a pool of {POOL}")
    root = tmp_path / "root"
    for i in range(N_FILES):
        folder = root / f"d{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        write_native_file(folder / f"f{i:04d}.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.hdf5"))
    with serving(root, tmp_path / "server.log", args=("--pool-size", str(POOL))) as srv:
        pid = srv.process.pid
        http = httpx.Client(base_url=srv.url, timeout=30)
        http.get("/health")
        fd0, rss0 = fd_count(pid), rss_bytes(pid)

        after: list[int] = []
        failures = 0
        for _ in range(2):
            for rel in files:
                failures += http.get("/v1/geometry", params={"file_path": rel}).status_code != 200
            after.append(_settle(pid, fd0 + POOL))
        stats = _pool_stats(srv.url)
        rss1 = rss_bytes(pid)
        http.post("/v1/pool/clear")
        cleared = _settle(pid, fd0)
        http.close()
        n5xx = server_5xx(srv.url)
    fig["files read (x2 passes)"] = len(files)
    fig["fds before"] = fd0
    fig["fds after pass 1 / pass 2"] = f"{after[0]} / {after[1]}"
    fig["fds after pool clear"] = cleared
    fig["pool size / max"] = f"{stats['pool_size']} / {stats['max_pool_size']}"
    fig["RSS growth (MB)"] = round((rss1 - rss0) / 1e6, 1)
    growth = max(after) - fd0
    fig.target("fd growth", growth, f"<= {POOL} + 8", growth <= POOL + 8)
    fig.target(
        "fd growth on the second pass", after[1] - after[0], "<= 2", after[1] - after[0] <= 2
    )
    fig.target("fds after pool clear", cleared - fd0, "<= 2 over the start", cleared - fd0 <= 2)
    fig.target("pool size", stats["pool_size"], f"<= {POOL}", stats["pool_size"] <= POOL)
    fig.target("handles checked out when idle", _in_use(stats), "0", _in_use(stats) == 0)
    fig.target("failed reads", failures, "0", failures == 0)
    fig.target("5xx responses", n5xx, "0", n5xx == 0)
    fig.target("RSS growth (MB)", fig["RSS growth (MB)"], "< 300", rss1 - rss0 < 300e6)
    fig.check()


@pytest.fixture(scope="module")
def big_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("r8-big")
    write_native_file(root / "big.hdf5", DemoSpec(shape=BIG, n_delay=8, n_q=4))
    write_native_file(root / "small.hdf5", DemoSpec(shape=(8, 8), n_delay=4, n_q=2))
    return root


def _get_head(port: int, path: str) -> tuple[socket.socket, int, bytes]:
    """Send a GET on a raw socket; return it, the Content-Length and the body bytes read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/msgpack\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "connection closed before the headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return s, length, body


def test_disconnects_mid_download_leak_nothing(big_root: Path, tmp_path: Path) -> None:
    fig = Figure("R8", "disconnects", "Clients dropping out of large downloads")
    with serving(big_root, tmp_path / "server.log") as srv:
        pid, port = srv.process.pid, port_of(srv)
        with httpx.Client(base_url=srv.url, timeout=60) as http:
            full = http.get("/v1/qmap", params={"file_path": "big.hdf5"})  # warm the pool
            size = len(full.content)
            fd0 = fd_count(pid)
            for i in range(DISCONNECTS):
                s, _, body = _get_head(port, "/v1/qmap?file_path=big.hdf5")
                while len(body) < 4096 * (1 + i % 4):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    body += chunk
                s.close()
            time.sleep(0.5)
            fd1 = _settle(pid, fd0)
            stats = _pool_stats(srv.url)
            healthy = http.get("/health").status_code == 200
            again = http.get("/v1/qmap", params={"file_path": "big.hdf5"})
            complete = again.status_code == 200 and again.content == full.content
        n5xx = server_5xx(srv.url)
    fig["response size (MB)"] = round(size / 1e6, 1)
    fig["disconnects"] = DISCONNECTS
    fig["fds before / after"] = f"{fd0} / {fd1}"
    fig.target("fd growth", fd1 - fd0, "<= 1", fd1 - fd0 <= 1)
    fig.target("handles checked out afterwards", _in_use(stats), "0", _in_use(stats) == 0)
    fig.target("/health afterwards", healthy, "True", healthy)
    fig.target("a full download afterwards is complete", complete, "True", complete)
    fig.target("5xx responses", n5xx, "0", n5xx == 0)
    fig.check()


def test_sigterm_lets_in_flight_downloads_finish(big_root: Path, tmp_path: Path) -> None:
    fig = Figure("R8", "graceful-shutdown", "SIGTERM with large downloads in flight")
    log = tmp_path / "server.log"
    with h5py.File(big_root / "big.hdf5", "r", locking=False) as f:
        want = sha256_of(f["/xpcs/qmap/sqmap"][()])
    srv: Server = start_server(big_root, log, args=("--log-level", "info"))
    try:
        port = port_of(srv)
        sockets = [_get_head(port, "/v1/qmap?file_path=big.hdf5") for _ in range(IN_FLIGHT)]
        t_term = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 5
        while not refused and time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                httpx.get(f"{srv.url}/health", timeout=2)
            except httpx.TransportError:
                refused = True

        def drain(item: tuple[socket.socket, int, bytes]) -> bytes:
            s, length, body = item
            parts = [body]
            got = len(body)
            with s:
                while got < length:
                    chunk = s.recv(256 * 1024)  # slow reader: the server has to wait for us
                    if not chunk:
                        break
                    parts.append(chunk)
                    got += len(chunk)
                    time.sleep(0.004)
            return b"".join(parts)[:length] if got >= length else b"".join(parts)

        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            bodies = list(pool.map(drain, sockets))
        t_done = time.monotonic()
        code = srv.process.wait(timeout=60)
        t_exit = time.monotonic()
    finally:
        stop(srv)
    complete = 0
    for (_, length, _), body in zip(sockets, bodies, strict=True):
        if len(body) == length:
            sq = wire.unpack(bytearray(body))["sqmap"]
            complete += sha256_of(np.asarray(sq)) == want
    text = log.read_text()
    fig["downloads in flight at SIGTERM"] = IN_FLIGHT
    fig["response size (MB)"] = round(sockets[0][1] / 1e6, 1)
    fig["download time after SIGTERM (s)"] = round(t_done - t_term, 2)
    fig["exit after the last byte (s)"] = round(t_exit - t_done, 2)
    fig["exit status"] = code
    fig.target(
        "complete, correct downloads", f"{complete}/{IN_FLIGHT}", "all", complete == IN_FLIGHT
    )
    fig.target("new connections refused while draining", refused, "True", refused)
    fig.target("clean exit", code, "0 or -SIGTERM", code in (0, -signal.SIGTERM))
    fig.target(
        "log says 'pool shut down'", "pool shut down" in text, "True", "pool shut down" in text
    )
    fig.check()

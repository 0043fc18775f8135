"""deploy/nginx.conf finds the replicas by name at request time: a replica that comes back
with a new address (a restarted container) gets requests again, without restarting nginx.

Real nginx, real ``xpcs-io serve`` replicas on loopback addresses, and a tiny DNS server on
127.0.0.1 standing in for Docker's (it answers the name ``replica`` with whichever address
the test sets)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import free_port
from .nginxsupport import running_nginx, shipped_conf


class NameServer:
    """Answers A queries for ``replica`` with ``self.address`` (TTL 1 s); counts queries."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.address = "127.0.0.1"
        self.queries = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            self.queries += 1
            self.sock.sendto(self._answer(query), peer)

    def _answer(self, query: bytes) -> bytes:
        (ident,) = struct.unpack(">H", query[:2])
        end = 12
        labels = []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += query[end] + 1
        question = query[12 : end + 5]
        qtype = struct.unpack(">H", query[end + 1 : end + 3])[0]
        found = ".".join(labels) == "replica" and qtype == 1
        header = struct.pack(">HHHHHH", ident, 0x8180 if found else 0x8183, 1, int(found), 0, 0)
        if not found:
            return header + question
        record = struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(self.address)
        return header + question + record

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


def _replica(root: Path, host: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPCS_IO_")}
    cmd = [sys.executable, "-m", "xpcs_io.tools.cli", "serve", "--root", str(root)]
    cmd += ["--host", host, "--port", str(port), "--log-level", "warning"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    for _ in range(300):  # up to ~30 s
        assert proc.poll() is None, log.read_text()[-2000:]
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://{host}:{port}/health", timeout=1).status_code == 200:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"replica on {host}:{port} did not start: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def names() -> Iterator[NameServer]:
    server = NameServer()
    yield server
    server.close()


@pytest.mark.slow
def test_a_replica_back_at_a_new_address_rejoins(tmp_path: Path, names: NameServer) -> None:
    replica_port = free_port()
    names.address = "127.0.0.2"
    first = _replica(tmp_path, "127.0.0.2", replica_port, tmp_path / "first.log")
    conf = shipped_conf()
    assert "resolver 127.0.0.11 valid=5s" in conf
    conf = conf.replace("resolver 127.0.0.11 valid=5s", f"resolver 127.0.0.1:{names.port} valid=1s")
    conf = conf.replace("replica:8000", f"replica:{replica_port}")
    second = None
    try:
        with running_nginx(tmp_path, conf, wait_healthy=False) as nginx:

            def served_by() -> str | None:
                with contextlib.suppress(httpx.TransportError):
                    r = httpx.get(f"{nginx.url}/health", timeout=5)
                    if r.status_code == 200:
                        return r.headers["x-served-by"]
                return None

            for _ in range(200):
                if served_by() == f"127.0.0.2:{replica_port}":
                    break
                nginx.check_alive()
                time.sleep(0.1)
            else:
                raise AssertionError("nginx never reached the first replica")
            asked = names.queries
            _stop(first)  # the container restarts, and comes back elsewhere
            names.address = "127.0.0.3"
            second = _replica(tmp_path, "127.0.0.3", replica_port, tmp_path / "second.log")
            seen = []
            for _ in range(100):  # the answer is valid for 1 s: a few tries are enough
                seen.append(served_by())
                if seen[-1] == f"127.0.0.3:{replica_port}":
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"the replica never rejoined; nginx answered via {seen[-5:]}")
            assert names.queries > asked  # nginx asked again, it did not cache forever
    finally:
        _stop(first)
        if second is not None:
            _stop(second)

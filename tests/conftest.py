"""Shared fixtures: real HDF5 files in a per-test folder under one session data root, and
the facade under test on each side (local ``HDF5Facade``; remote client against a real
uvicorn server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from xpcs_io.api import FacadeAPI
from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .clientsupport import RawServer


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data root every side sees (the remote server serves this folder)."""
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture
def workdir(data_root: Path) -> Path:
    """A fresh folder under the data root for one test."""
    d = data_root / uuid.uuid4().hex[:12]
    d.mkdir()
    return d


@pytest.fixture
def native_file(workdir: Path) -> Path:
    """A small real file in the facade's layout."""
    return write_native_file(workdir / "result.hdf5", DemoSpec(shape=(48, 40), n_delay=20, n_q=12))


@dataclass
class Side:
    """One way of reaching the facade: ``path()`` maps a file to what this side takes."""

    name: str
    api: FacadeAPI
    root: Path
    make: Callable[..., FacadeAPI]  # another facade on this side, e.g. make(validate=False)

    def path(self, p: Path) -> Any:
        if self.name == "local":
            return p
        return p.relative_to(self.root).as_posix()


SIDES = ["local", "remote"]
#: The contract files also hold the async client to every assertion.
CONTRACT_SIDES = [*SIDES, "async"]


class BlockingAsync:
    """An ``AsyncRemoteHDF5Facade`` behind blocking calls, so the contract's assertions run
    on it unchanged: every coroutine method runs to completion on one private event loop."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = AsyncRemoteHDF5Facade(url, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if not inspect.iscoroutinefunction(value):
            return value

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(value(*args, **kwargs))

        return blocking

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A real ``xpcs-io serve`` process on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    url: str
    root: Path
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    root: Path,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    port: int | None = None,
) -> Server:
    """Start ``xpcs-io serve`` on ``port`` (default: a free one) and wait until /ready
    answers 200: the pool is up and the root is watched (a file created from then on is
    an event)."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "xpcs_io.tools.cli",
        "serve",
        "--root",
        str(root),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("XPCS_IO_")}
    full_env.update(env or {})
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return Server(proc, url, root, log)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def server(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One open (no API keys, loopback) server over the session data root."""
    srv = start_server(data_root, tmp_path_factory.mktemp("logs") / "server.log")
    yield srv
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean exit.
    assert srv.stop() in (0, -signal.SIGTERM), srv.log.read_text()[-2000:]


def open_side(request: pytest.FixtureRequest, data_root: Path) -> Iterator[Side]:
    """The facade API on side ``request.param``: "local" (``HDF5Facade``), "remote"
    (``RemoteHDF5Facade``) or "async" (``AsyncRemoteHDF5Facade`` through ``BlockingAsync``),
    the remote ones against the session's server."""
    if request.param == "local":
        pool = HDF5ConnectionPool(max_size=8)

        def make(**kwargs: Any) -> FacadeAPI:
            return HDF5Facade(pool=pool, **kwargs)

        yield Side("local", make(), data_root, make)
        pool.shutdown()
        return
    srv: Server = request.getfixturevalue("server")
    clients: list[Any] = []

    def make_remote(**kwargs: Any) -> FacadeAPI:
        client: Any = (
            RemoteHDF5Facade(srv.url, **kwargs)
            if request.param == "remote"
            else BlockingAsync(srv.url, **kwargs)
        )
        clients.append(client)
        made: FacadeAPI = client
        return made

    yield Side(request.param, make_remote(), data_root, make_remote)
    for client in clients:
        client.close()


@pytest.fixture
def raw() -> Iterator[list[RawServer]]:
    """Raw-socket servers a client test starts (closed after it)."""
    made: list[RawServer] = []
    yield made
    for srv in made:
        srv.close()


@pytest.fixture(params=SIDES)
def side(request: pytest.FixtureRequest, data_root: Path) -> Iterator[Side]:
    """The facade API on each side: the same assertions must hold on both."""
    yield from open_side(request, data_root)

"""What a workload gets: the configuration, the files, the running servers, a local facade
with a warm pool and one asyncio loop (kept for the whole run, so async clients stay bound
to it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import Config
from bench.data import Files
from bench.servers import Server
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool

# Peers get the bytes as they are on disk: no content coding, so every system moves the same
# number of bytes over loopback.
IDENTITY = {"accept-encoding": "identity"}
TIMEOUT = 300.0


@dataclass
class Env:
    cfg: Config
    files: Files
    servers: dict[str, Server]
    runner: asyncio.Runner
    logdir: Path
    pool: HDF5ConnectionPool = field(default_factory=lambda: HDF5ConnectionPool(max_size=16))
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it is missing
    startup_rss: dict[str, int] = field(default_factory=dict)  # server -> RSS when ready

    def __post_init__(self) -> None:
        self.facade = HDF5Facade(pool=self.pool)
        self._clients: list[httpx.Client] = []

    def has(self, name: str) -> bool:
        return name in self.servers

    def url(self, name: str) -> str:
        return self.servers[name].url

    def pid(self, name: str) -> int:
        return self.servers[name].pid

    def http(self, name: str) -> httpx.Client:
        """A kept-alive blocking client for a server, closed by ``close_http``."""
        client = httpx.Client(base_url=self.url(name), headers=IDENTITY, timeout=TIMEOUT)
        self._clients.append(client)
        return client

    def close_http(self) -> None:
        """Close the clients ``http`` made (after each workload)."""
        while self._clients:
            self._clients.pop().close()

    def ahttp(self, name: str) -> httpx.AsyncClient:
        """A kept-alive asyncio client for a peer server (create it inside ``runner``)."""
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        return httpx.AsyncClient(
            base_url=self.url(name), headers=IDENTITY, timeout=TIMEOUT, limits=limits
        )

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)


def checked(response: httpx.Response) -> httpx.Response:
    """``response`` after raising on a non-2xx status."""
    response.raise_for_status()
    return response

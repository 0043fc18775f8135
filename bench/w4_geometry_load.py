"""w4: geometry under load, 8 concurrent clients for a fixed time, requests per second.

Ours answers the whole GeometryMetadata in one request (decoded by our async client); the
peers have no geometry call, so each gets its cheapest single request that returns part of
it: h5grove one scalar (``/data?path=/xpcs/metadata/bcx&format=json``), tiled the metadata
node of the group (``/api/v1/metadata/<file>/xpcs/metadata``). That favours the peers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

from bench.common import Result, Row, cpu_note, cpu_seconds, run_for
from bench.data import GEOMETRY, TILED_NODE
from bench.env import Env, checked
from xpcs_io.client import AsyncRemoteHDF5Facade

NAME = "w4"
NEEDS = {"ours", "h5grove", "tiled"}

Load = Callable[[], Awaitable[int]]
Closable = httpx.AsyncClient | AsyncRemoteHDF5Facade


async def _setup(env: Env) -> tuple[dict[str, Load], list[Closable]]:
    files = env.files
    api = AsyncRemoteHDF5Facade(env.url("ours"), timeout=60)
    loads: dict[str, Load] = {}
    closers: list[Closable] = [api]

    async def ours() -> int:
        await api.read_geometry_metadata(files.main)
        return 0

    loads["ours"] = ours
    if env.has("h5grove"):
        grove = env.ahttp("h5grove")
        closers.append(grove)
        params = {"file": files.main, "path": f"{GEOMETRY}/bcx", "format": "json"}

        async def h5grove() -> int:
            return len(checked(await grove.get("/data", params=params)).content)

        loads["h5grove"] = h5grove
    if env.has("tiled"):
        tiled = env.ahttp("tiled")
        closers.append(tiled)
        url = f"/api/v1/metadata/{TILED_NODE}{GEOMETRY}"

        async def tiled_meta() -> int:
            return len(checked(await tiled.get(url)).content)

        loads["tiled"] = tiled_meta
    for fn in loads.values():  # warm connections, pools and caches
        for _ in range(3):
            await fn()
    return loads, closers


async def _close(closers: list[Closable]) -> None:
    for c in closers:
        await c.aclose()


def run(env: Env) -> Result:
    cfg = env.cfg
    res = Result(
        NAME,
        f"Geometry, {cfg.clients} concurrent clients, {cfg.load_seconds:g} s windows",
        "One request per geometry on ours vs the cheapest single request on each peer "
        "(h5grove: one scalar dataset as JSON; tiled: the group's metadata node). "
        f"{cfg.load_rounds} rounds, systems rotated each round; asyncio clients in the bench "
        "process (they share the 2 cores with the server).",
    )
    loads, closers = env.run(_setup(env))
    samples: dict[str, list[float]] = {k: [] for k in loads}
    client_cpu: dict[str, list[float]] = {k: [] for k in loads}
    server_cpu: dict[str, list[float]] = {k: [] for k in loads}
    keys = list(loads)
    for r in range(cfg.load_rounds):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            pid = env.pid(key)
            s0, c0 = cpu_seconds(pid), time.process_time()
            done, _, wall = env.run(run_for(loads[key], cfg.clients, cfg.load_seconds))
            server_cpu[key].append((cpu_seconds(pid) - s0) / done)
            client_cpu[key].append((time.process_time() - c0) / done)
            samples[key].append(done / wall)
    labels = {
        "ours": ("ours: AsyncRemoteHDF5Facade", "read_geometry_metadata (whole geometry)"),
        "h5grove": ("h5grove + httpx", "GET /data path=/xpcs/metadata/bcx format=json"),
        "tiled": ("tiled + httpx", f"GET /api/v1/metadata/{TILED_NODE}{GEOMETRY}"),
    }
    for key in keys:
        row = Row(key, *labels[key], samples[key], unit="req/s")
        client = statistics.fmean(client_cpu[key])
        server = statistics.fmean(server_cpu[key])
        row.extra = {"client_cpu_s": client, "server_cpu_s": server}
        row.note = cpu_note(client, server)
        res.rows.append(row)
    env.run(_close(closers))
    return res

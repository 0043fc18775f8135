"""w6: 16 concurrent full-map readers (throughput, server peak RSS), and RSS growth over many
small reads (ours).

Server RSS is the server process plus its children, sampled every 20 ms with psutil; idle is
the median of a few samples just before the readers start.
"""

from __future__ import annotations

import time

import httpx

from bench.common import MB, Config, Result, Row, RssSampler, idle_rss, nbytes, run_count
from bench.data import QMAP
from bench.env import Env, checked
from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade

NAME = "w6"
NEEDS = {"ours", "h5grove"}


async def _make(url: str) -> AsyncRemoteHDF5Facade:
    return AsyncRemoteHDF5Facade(url, timeout=300)


def copies_needed(cfg: Config) -> int:
    """Never-read copies of the main file this workload takes."""
    return cfg.load_rounds


def _rss_growth(env: Env, res: Result) -> None:
    """P5b: RSS before and after many geometry + small read_qmap pairs (sequential)."""
    files, n = env.files, env.cfg.rss_reads
    pid = env.pid("ours")
    with RemoteHDF5Facade(env.url("ours"), timeout=60) as api:
        for _ in range(50):
            api.read_geometry_metadata(files.small)
            api.read_qmap(files.small)
        before = idle_rss(pid)
        t0 = time.perf_counter()
        for _ in range(n):
            api.read_geometry_metadata(files.small)
            api.read_qmap(files.small)
        wall = time.perf_counter() - t0
        after = idle_rss(pid)
    growth = 100.0 * (after - before) / before
    row = Row(
        "rss_growth",
        "ours: xpcs-io serve",
        f"RSS growth over {n} geometry+small qmap pairs",
        [growth],
        unit="%",
    )
    row.extra = {"rss_before": before, "rss_after": after, "pairs": n, "seconds": wall}
    row.note = f"{before / MB:.0f} MB -> {after / MB:.0f} MB ({2 * n / wall:.0f} req/s)"
    res.rows.append(row)


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    res = Result(
        NAME,
        f"{cfg.readers} concurrent full-map readers: throughput and server peak RSS",
        f"{cfg.readers} asyncio readers x {cfg.reads_per_reader} reads each, "
        f"{cfg.load_rounds} rounds alternating systems. Ours reads read_qmap (all maps), "
        "h5grove one map (format=bin). Ours reads a never-read byte copy of the file each "
        "round, so its result cache (if any) starts cold. 'payload' is one response's bytes; "
        "P5 compares the peak above the idle just before the round with 4x that.",
    )
    _rss_growth(env, res)
    aapi = env.run(_make(env.url("ours")))
    payload = {"ours": nbytes(env.run(aapi.read_qmap(files.main)))}
    target = {"ours": files.main}  # a never-read copy each round, so no cache has it yet

    async def ours(_: int) -> int:
        return nbytes(await aapi.read_qmap(target["ours"]))

    readers = {"ours": ours}
    grove: httpx.AsyncClient | None = None
    if env.has("h5grove"):

        async def _grove() -> httpx.AsyncClient:
            return env.ahttp("h5grove")

        grove = env.run(_grove())
        params = {"file": files.main, "path": f"{QMAP}/sqmap", "format": "bin"}

        async def h5grove(_: int) -> int:
            return len(checked(await grove.get("/data", params=params)).content)

        readers["h5grove"] = h5grove
        payload["h5grove"] = env.run(h5grove(0))
    server = {"ours": "ours", "h5grove": "h5grove"}
    thr: dict[str, list[float]] = {k: [] for k in readers}
    peak: dict[str, list[float]] = {k: [] for k in readers}
    idle: dict[str, list[float]] = {k: [] for k in readers}
    keys = list(readers)
    for r in range(cfg.load_rounds):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            pid = env.pid(server[key])
            if key == "ours":
                target["ours"] = files.take_fresh()
            time.sleep(0.3)
            base = idle_rss(pid)
            with RssSampler(pid) as sampler:
                got, wall = env.run(run_count(readers[key], cfg.readers, cfg.reads_per_reader))
            thr[key].append(got / MB / wall)
            peak[key].append(sampler.peak / MB)
            idle[key].append(base / MB)
    names = {"ours": "ours: AsyncRemoteHDF5Facade", "h5grove": "h5grove + httpx"}
    for key in keys:
        what = "read_qmap" if key == "ours" else "one map"
        res.rows.append(Row(f"{key}_mbs", names[key], what, thr[key], "MB/s", payload[key]))
        over = [p - b for p, b in zip(peak[key], idle[key], strict=True)]
        row = Row(f"{key}_peak_over_idle", names[key], "server peak RSS above idle", over, "MB")
        row.payload = payload[key]
        row.extra = {"peak_mb": peak[key], "idle_mb": idle[key]}
        start = env.startup_rss.get(server[key], 0) / MB
        row.note = (
            f"RSS at start {start:.0f} MB, idle before rounds {min(idle[key]):.0f}-"
            f"{max(idle[key]):.0f} MB, peak {max(peak[key]):.0f} MB; "
            f"4x payload = {4 * payload[key] / MB:.0f} MB"
        )
        res.rows.append(row)
    env.run(aapi.aclose())
    if grove is not None:
        env.run(grove.aclose())
    return res

"""w7: gzip-4 chunked q-maps, 8 concurrent viewers vs one reader (ours).

Each viewer reads its own copy of the file (byte copies: same content, different inodes,
so no cache shares work between them); the single reader cycles over the same copies.
"""

from __future__ import annotations

import itertools
import statistics

from bench.common import MB, Result, Row, cpu_seconds, interleave, nbytes, run_count
from bench.env import Env
from xpcs_io.client import AsyncRemoteHDF5Facade

NAME = "w7"
NEEDS = {"ours"}


async def _make(url: str) -> AsyncRemoteHDF5Facade:
    return AsyncRemoteHDF5Facade(url, timeout=300)


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    res = Result(
        NAME,
        f"gzip-4 chunked q-maps: {cfg.viewers} concurrent viewers vs one reader",
        f"read_qmap over HTTP (async client). One reader: {cfg.gz_single_reads} reads in a "
        f"row; {cfg.viewers} viewers: {cfg.gz_reads_per_viewer} read(s) each, each its own "
        f"copy. {cfg.load_rounds} rounds alternating; throughput = bytes / wall time.",
    )
    aapi = env.run(_make(env.url("ours")))
    gz = files.gz[: cfg.viewers]
    cycle = itertools.cycle(gz)
    for rel in gz:  # open every copy once: warm pool and validation on both sides alike
        env.run(aapi.read_qmap(rel))

    async def single(_: int) -> int:
        return nbytes(await aapi.read_qmap(next(cycle)))

    async def viewer(i: int) -> int:
        return nbytes(await aapi.read_qmap(gz[i]))

    loads = {
        "single": (single, 1, cfg.gz_single_reads),
        "viewers": (viewer, len(gz), cfg.gz_reads_per_viewer),
    }
    samples: dict[str, list[float]] = {k: [] for k in loads}
    busy: dict[str, list[float]] = {k: [] for k in loads}  # server CPU seconds per second
    pid = env.pid("ours")
    keys = list(loads)
    for r in range(cfg.load_rounds):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            fn, conc, per = loads[key]
            s0 = cpu_seconds(pid)
            got, wall = env.run(run_count(fn, conc, per))
            samples[key].append(got / MB / wall)
            busy[key].append((cpu_seconds(pid) - s0) / wall)
    payload = nbytes(env.run(aapi.read_qmap(gz[0])))
    whats = {"single": "1 reader", "viewers": f"{len(gz)} concurrent viewers"}
    for key in keys:
        row = Row(key, "ours: AsyncRemoteHDF5Facade", whats[key], samples[key], "MB/s", payload)
        row.extra["server_cores_busy"] = busy[key]
        row.note = f"server busy {statistics.median(busy[key]):.2f} cores"
        res.rows.append(row)
    local = files.abs(gz[0])
    timing = interleave([("local", lambda: nbytes(env.facade.read_qmap(local)))], 3)
    res.rows.append(timing.row("local", "local HDF5Facade", "one gzip read_qmap, in-process"))
    env.run(aapi.aclose())
    return res

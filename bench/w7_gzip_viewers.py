"""w7: gzip-4 chunked q-maps, 8 concurrent viewers vs one reader (ours).

Each viewer reads its own copy of the file (byte copies: same content, different inodes,
so no cache shares work between them); the single reader cycles over the same copies.
"""

from __future__ import annotations

import itertools

from bench.common import MB, Result, Row, interleave, nbytes, run_count
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
    keys = list(loads)
    for r in range(cfg.load_rounds):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            fn, conc, per = loads[key]
            got, wall = env.run(run_count(fn, conc, per))
            samples[key].append(got / MB / wall)
    payload = nbytes(env.run(aapi.read_qmap(gz[0])))
    res.rows.append(
        Row("single", "ours: AsyncRemoteHDF5Facade", "1 reader", samples["single"], "MB/s", payload)
    )
    res.rows.append(
        Row(
            "viewers",
            "ours: AsyncRemoteHDF5Facade",
            f"{len(gz)} concurrent viewers",
            samples["viewers"],
            "MB/s",
            payload,
        )
    )
    local = files.abs(gz[0])
    times, _ = interleave([("local", lambda: nbytes(env.facade.read_qmap(local)))], 3)
    res.rows.append(
        Row(
            "local",
            "local HDF5Facade",
            "one gzip read_qmap (decompression cost)",
            times["local"],
            payload=payload,
        )
    )
    env.run(aapi.aclose())
    return res

"""w7: gzip-4 chunked q-maps, 8 concurrent viewers vs one reader (ours).

Each viewer reads its own copy of the file (byte copies: same content, different inodes);
the single reader cycles over the same copies. The server runs with its result cache off
(when it has one), so every read decompresses: this measures the read path, not the cache.
It runs with one process (the default) and, when ``xpcs-io serve`` has ``--workers``, with
one worker per core, as the README recommends for compressed data and many viewers.
"""

from __future__ import annotations

import itertools
import os
import resource
import statistics
from collections.abc import Awaitable, Callable

from bench import servers
from bench.common import MB, Result, Row, cpu_seconds, interleave, nbytes, run_count
from bench.env import Env
from xpcs_io.client import AsyncRemoteHDF5Facade

NAME = "w7"
NEEDS = {"ours", "ours_nocache"}
WORKERS_KEY = "ours_workers"


async def _make(url: str) -> AsyncRemoteHDF5Facade:
    return AsyncRemoteHDF5Facade(url, timeout=300)


def _start_workers(env: Env, n: int) -> str | None:
    """Start a ``--workers n`` server (result cache off) registered in ``env.servers`` so it
    is stopped whatever happens; returns its key, or None when unsupported."""
    if not servers.ours_supports("workers"):
        env.skipped[WORKERS_KEY] = "xpcs-io serve has no --workers option"
        return None
    extra_env = servers.NO_CACHE_ENV if servers.ours_supports("cache_bytes") else {}
    srv = servers.start_ours(
        env.files.root, env.logdir, "xpcs-io-workers", ["--workers", str(n)], extra_env
    )
    env.servers[WORKERS_KEY] = srv
    srv.wait_ready(timeout=60)
    return WORKERS_KEY


def _own_cpu_seconds() -> float:
    """User + system CPU seconds of this (client) process so far, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(env: Env) -> Result:
    cfg, files = env.cfg, env.files
    cores = os.cpu_count() or 2
    res = Result(
        NAME,
        f"gzip-4 chunked q-maps: {cfg.viewers} concurrent viewers vs one reader",
        f"read_qmap over HTTP (async client), server result cache off. One reader: "
        f"{cfg.gz_single_reads} reads in a row; {cfg.viewers} viewers: "
        f"{cfg.gz_reads_per_viewer} read(s) each, each its own copy. {cfg.gz_rounds} "
        "rounds, configurations and modes alternating, after one untimed round of each "
        "(steady state: pools, caches and memory warm); throughput = bytes / wall time; "
        "'server busy' = server CPU seconds per wall second (all its processes); 'client' = "
        "the same for this bench process, whose one event loop runs every viewer.",
    )
    configs = {"1": "ours_nocache" if env.has("ours_nocache") else "ours"}
    if configs["1"] == "ours":
        res.notes.append("the server has no result cache switch: repeated reads may be cached")
    key = _start_workers(env, cores)
    if key is not None:
        configs[str(cores)] = key
    gz = files.gz[: cfg.viewers]
    clients = {c: env.run(_make(env.url(s))) for c, s in configs.items()}
    cycle = itertools.cycle(gz)

    def loads(
        api: AsyncRemoteHDF5Facade,
    ) -> dict[str, tuple[Callable[[int], Awaitable[int]], int, int]]:
        async def single(_: int) -> int:
            return nbytes(await api.read_qmap(next(cycle)))

        async def viewer(i: int) -> int:
            return nbytes(await api.read_qmap(gz[i]))

        return {
            "single": (single, 1, cfg.gz_single_reads),
            "viewers": (viewer, len(gz), cfg.gz_reads_per_viewer),
        }

    runs = [(c, m) for c in configs for m in ("single", "viewers")]
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    busy: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    client: dict[tuple[str, str], list[float]] = {k: [] for k in runs}
    for config, mode in runs:  # untimed: opens every copy, warms every side alike
        fn, conc, per = loads(clients[config])[mode]
        env.run(run_count(fn, conc, per))
    for r in range(cfg.gz_rounds):
        for i in range(len(runs)):
            config, mode = runs[(r + i) % len(runs)]
            fn, conc, per = loads(clients[config])[mode]
            pid = env.pid(configs[config])
            s0, c0 = cpu_seconds(pid), _own_cpu_seconds()
            got, wall = env.run(run_count(fn, conc, per))
            samples[config, mode].append(got / MB / wall)
            busy[config, mode].append((cpu_seconds(pid) - s0) / wall)
            client[config, mode].append((_own_cpu_seconds() - c0) / wall)
    payload = nbytes(env.run(clients["1"].read_qmap(gz[0])))
    whats = {"single": "1 reader", "viewers": f"{len(gz)} concurrent viewers"}
    for config, mode in runs:
        procs = "1 process" if config == "1" else f"--workers {config}"
        row = Row(
            f"{mode}_{config}",
            f"ours ({procs}), async client",
            whats[mode],
            samples[config, mode],
            "MB/s",
            payload,
        )
        row.extra["server_cores_busy"] = busy[config, mode]
        row.extra["client_cores_busy"] = client[config, mode]
        row.note = (
            f"server busy {statistics.median(busy[config, mode]):.2f} cores, "
            f"client {statistics.median(client[config, mode]):.2f}"
        )
        res.rows.append(row)
    local = files.abs(gz[0])
    timing = interleave([("local", lambda: nbytes(env.facade.read_qmap(local)))], 3)
    res.rows.append(timing.row("local", "local HDF5Facade", "one gzip read_qmap, in-process"))
    for api in clients.values():
        env.run(api.aclose())
    if key is not None:
        env.servers.pop(key).stop()
    return res

"""The server's shared result cache: bounded in bytes, keyed by file identity, coalescing
concurrent identical reads, never serving a file version that is gone."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.server.results import ResultCache, result_nbytes
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_sixteen_concurrent_readers_cause_one_read(server: Server, workdir: Path) -> None:
    path = write_native_file(workdir / "hot.hdf5", DemoSpec(shape=(600, 500), n_delay=4, n_q=2))
    rel = path.relative_to(server.root).as_posix()
    misses = _metric(server, "xpcs_io_result_cache_misses_total")
    barrier = threading.Barrier(16)

    def viewer(_: int) -> float:
        with RemoteHDF5Facade(server.url) as api:
            barrier.wait()
            return float(api.read_qmap(rel).sqmap.sum())

    with ThreadPoolExecutor(16) as pool:
        sums = list(pool.map(viewer, range(16)))
    assert len(set(sums)) == 1
    assert _metric(server, "xpcs_io_result_cache_misses_total") - misses == 1


def test_rewritten_file_is_never_served_from_cache(server: Server, workdir: Path) -> None:
    path = write_native_file(workdir / "w.hdf5", DemoSpec(shape=(30, 20), n_delay=4, n_q=2))
    rel = path.relative_to(server.root).as_posix()
    with RemoteHDF5Facade(server.url) as api:
        for value in (11.0, 12.0, 13.0):
            api.read_qmap(rel)
            read = path.stat()  # what the server saw
            with h5py.File(path, "a", locking=False) as f:
                f["/xpcs/qmap/sqmap"][0, 0] = value
            # Before Linux 6.13 mtime and ctime move once per clock tick: a rewrite within
            # the tick of the last change could keep both. Touch until the ctime moved, so
            # the file's identity surely changed (bounded).
            for _ in range(1000):
                if path.stat().st_ctime_ns != read.st_ctime_ns:
                    break
                time.sleep(0.001)
                os.utime(path)
            assert path.stat().st_ctime_ns != read.st_ctime_ns
            assert api.read_qmap(rel).sqmap[0, 0] == value


def test_cached_results_are_read_only_on_the_server_but_clients_get_writable_arrays(
    server: Server, native_file: Path
) -> None:
    rel = native_file.relative_to(server.root).as_posix()
    with RemoteHDF5Facade(server.url) as api:
        a = api.read_qmap(rel)
        b = api.read_qmap(rel)
    a.sqmap[0, 0] = -7.0
    assert b.sqmap[0, 0] != -7.0
    assert b.sqmap.flags.writeable


def test_cache_is_bounded_and_skips_huge_results() -> None:
    cache = ResultCache(max_bytes=20_000)  # keeps results up to 5,000 bytes

    async def fill() -> None:
        for i in range(10):
            await cache.get(("k", i), "/f", 1, lambda: np.zeros(400, np.float64))  # 3.2 kB
        await cache.get("huge", "/g", 1, lambda: np.zeros(5_000, np.uint8))

    asyncio.run(fill())
    stats = cache.stats()
    assert stats["bytes"] <= 20_000
    assert stats["entries"] == 5  # 5 x 3,712 bytes fit; the 5,512-byte result was not kept
    assert stats["misses"] == 11
    assert result_nbytes(np.zeros(400)) == 3200 + 512


def test_new_file_version_drops_old_entries() -> None:
    cache = ResultCache(max_bytes=1 << 20)

    async def scenario() -> None:
        await cache.get(("a", 1), "/f", "v1", lambda: np.ones(10))
        await cache.get(("b", 1), "/f", "v1", lambda: np.ones(10))
        assert cache.stats()["entries"] == 2
        await cache.get(("a", 2), "/f", "v2", lambda: np.ones(10))
        assert cache.stats()["entries"] == 1
        cache.drop_file("/f")
        assert cache.stats()["entries"] == 0

    asyncio.run(scenario())


def test_errors_reach_every_waiter_and_are_not_cached() -> None:
    cache = ResultCache(max_bytes=1 << 20)
    calls = []

    def boom() -> object:
        calls.append(1)
        raise KeyError("/xpcs/qmap not found")

    async def scenario() -> list[object]:
        return await asyncio.gather(  # type: ignore[no-any-return]
            *(cache.get("k", "/f", 1, boom) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(scenario())
    assert all(isinstance(r, KeyError) for r in results)
    assert len(calls) == 1  # coalesced
    with pytest.raises(KeyError):
        asyncio.run(cache.get("k", "/f", 1, boom))
    assert len(calls) == 2  # not cached

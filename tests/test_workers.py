"""``xpcs-io serve --workers 2``: two processes, one logical pool and one set of statistics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np
import pytest

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.schemas import MaskSchema
from xpcs_io.server.workers import merge_stats
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server, start_server


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("workers-root")
    for i in range(4):
        write_native_file(root / f"f{i}.hdf5", DemoSpec(shape=(64, 64), compression="gzip", seed=i))
    # No result cache: every read must reach a pool, so the merged pool counters can be checked.
    srv = start_server(
        root,
        tmp_path_factory.mktemp("workers-log") / "log",
        args=("--workers", "2"),
        env={"XPCS_IO_CACHE_BYTES": "0"},
    )
    yield srv
    srv.stop()


def _both_workers_seen(api: RemoteHDF5Facade, reads: int = 0) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        stats = api.get_pool_stats()
        if stats["workers"] == 2 and (reads == 0 or stats["hits"] + stats["misses"] >= reads):
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)


def test_reads_from_many_viewers_are_served_and_counted_once(two_workers: Server) -> None:
    def viewer(i: int) -> bool:
        with RemoteHDF5Facade(two_workers.url) as api:
            for r in range(5):
                name = f"f{(i + r) % 4}.hdf5"
                got = api.read_qmap(name)
                with h5py.File(two_workers.root / name, "r") as f:
                    np.testing.assert_array_equal(got.sqmap, f["/xpcs/qmap/sqmap"][()])
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(viewer, range(8)))
    with RemoteHDF5Facade(two_workers.url) as api:
        stats = _both_workers_seen(api, reads=40)
    assert stats["workers"] == 2
    assert stats["max_pool_size"] == 64  # two pools of 32 make one logical pool
    assert stats["hits"] + stats["misses"] >= 40
    # Which process accepts a connection is the kernel's choice, so the split is not asserted.
    assert {f["worker"] for f in stats["open_files"]}


def test_clear_reaches_every_worker(two_workers: Server) -> None:
    with RemoteHDF5Facade(two_workers.url) as api:
        for _ in range(10):
            api.read_geometry_metadata("f0.hdf5")
        _both_workers_seen(api)
        api.clear_pool()
        stats = api.get_pool_stats()
    assert stats["pool_size"] == 0
    assert stats["open_files"] == []


def test_writes_through_both_workers_lose_nothing(two_workers: Server) -> None:
    def writer(name: str) -> None:
        with RemoteHDF5Facade(two_workers.url) as api:
            geo = api.read_geometry_metadata("f1.hdf5")
            for i in range(5):
                api.write_mask(
                    "f1.hdf5",
                    MaskSchema(
                        mask=np.ones(geo.shape, np.uint8), metadata=geo, description=f"{name}{i}"
                    ),
                )

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(writer, "abc"))
    with RemoteHDF5Facade(two_workers.url) as api:
        versions = api.list_mask_versions("f1.hdf5")
    assert [v["version"] for v in versions] == list(range(1, 16))
    assert sorted(v["description"] for v in versions) == sorted(
        f"{n}{i}" for n in "abc" for i in range(5)
    )


def test_merge_stats_sums_counters() -> None:
    a = {
        "hits": 3,
        "misses": 1,
        "opens": 1,
        "evictions": 0,
        "reopens_on_change": 0,
        "closes": 0,
        "pool_size": 1,
        "max_pool_size": 32,
        "open_files": [{"path": "x", "accesses": 4, "in_use": 0}],
        "worker": 10,
    }
    b = {**a, "hits": 1, "misses": 3, "worker": 11}
    merged = merge_stats([a, b])
    assert (merged["hits"], merged["misses"], merged["pool_size"], merged["max_pool_size"]) == (
        4,
        4,
        2,
        64,
    )
    assert merged["hit_ratio"] == 0.5
    assert [f["worker"] for f in merged["open_files"]] == [10, 11]

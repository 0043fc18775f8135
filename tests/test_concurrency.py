"""Many viewers at once through one server: 32 threads and 32 asyncio tasks read q-maps, G2
and geometry from 4 files while another client writes masks into the same files."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from xpcs_io.client import AsyncRemoteHDF5Facade, RemoteHDF5Facade
from xpcs_io.schemas import GeometryMetadata, MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server

N_FILES = 4
ROUNDS = 6


def _expected(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r", locking=False) as f:
        return {
            "sqmap": f["/xpcs/qmap/sqmap"][()],
            "g2": f["/xpcs/g2/g2"][()],
            "bcx": float(f["/xpcs/metadata/bcx"][()]),
        }


@pytest.fixture
def files(server: Server, workdir: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(N_FILES):
        path = write_native_file(
            workdir / f"f{i}.hdf5", DemoSpec(shape=(64, 48 + i), n_delay=16, n_q=8, seed=i)
        )
        out.append((path.relative_to(server.root).as_posix(), _expected(path)))
    return out


def _writer(server: Server, files: list[tuple[str, dict[str, Any]]], stop: threading.Event) -> int:
    written = 0
    with RemoteHDF5Facade(server.url) as api:
        # At least one write per file (so every file has versions to count), at most 40.
        while (not stop.is_set() or written < N_FILES) and written < 40:
            rel, _ = files[written % N_FILES]
            shape = api.read_geometry_metadata(rel).shape
            geo = GeometryMetadata(bcx=1, bcy=1, det_dist=1, lambda_=1, pix_dim=1, shape=shape)
            api.write_mask(
                rel,
                MaskSchema(mask=np.ones(shape, np.uint8), metadata=geo, description=str(written)),
            )
            written += 1
    return written


def _check(kind: str, got: Any, exp: dict[str, Any]) -> None:
    if kind == "qmap":
        np.testing.assert_array_equal(got.sqmap, exp["sqmap"])
    elif kind == "g2":
        np.testing.assert_array_equal(got.g2, exp["g2"])
    else:
        assert got.bcx == exp["bcx"]


def test_32_threads_and_a_writer(server: Server, files: list[tuple[str, dict[str, Any]]]) -> None:
    stop = threading.Event()
    with RemoteHDF5Facade(server.url) as api:
        before = api.get_pool_stats()

    def reader(i: int) -> int:
        done = 0
        with RemoteHDF5Facade(server.url) as api:
            for r in range(ROUNDS):
                rel, exp = files[(i + r) % N_FILES]
                kind = ("qmap", "g2", "geometry")[(i + r) % 3]
                call: dict[str, Any] = {
                    "qmap": api.read_qmap,
                    "g2": api.read_g2_data,
                    "geometry": api.read_geometry_metadata,
                }
                _check(kind, call[kind](rel), exp)
                done += 1
        return done

    with ThreadPoolExecutor(33) as pool:
        writer = pool.submit(_writer, server, files, stop)
        results = list(pool.map(reader, range(32)))
        stop.set()
        n_written = writer.result()
    assert sum(results) == 32 * ROUNDS
    assert n_written >= 1
    with RemoteHDF5Facade(server.url) as api:
        versions = sum(len(api.list_mask_versions(rel)) for rel, _ in files)
        assert versions == n_written
        stats = api.get_pool_stats()
    assert stats["hits"] - before["hits"] > stats["opens"] - before["opens"]


def test_32_async_tasks_and_a_writer(
    server: Server, files: list[tuple[str, dict[str, Any]]]
) -> None:
    stop = threading.Event()

    async def main() -> int:
        async with AsyncRemoteHDF5Facade(server.url) as api:

            async def task(i: int) -> int:
                for r in range(ROUNDS):
                    rel, exp = files[(i + r) % N_FILES]
                    kind = ("qmap", "g2", "geometry")[(i + r) % 3]
                    if kind == "qmap":
                        got: Any = await api.read_qmap(rel)
                    elif kind == "g2":
                        got = await api.read_g2_data(rel)
                    else:
                        got = await api.read_geometry_metadata(rel)
                    _check(kind, got, exp)
                return ROUNDS

            return sum(await asyncio.gather(*(task(i) for i in range(32))))

    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(_writer, server, files, stop)
        total = asyncio.run(main())
        stop.set()
        assert writer.result() >= 1
    assert total == 32 * ROUNDS

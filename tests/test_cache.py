"""ETags and the client's revalidating cache: unchanged files answer 304, changed files never
return old data, and the cache stays within its byte budget."""

from __future__ import annotations

from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io.client import RemoteHDF5Facade
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Server


@pytest.fixture
def rel(server: Server, workdir: Path) -> str:
    path = write_native_file(workdir / "c.hdf5", DemoSpec(shape=(40, 30), n_delay=10, n_q=6))
    return path.relative_to(server.root).as_posix()


def test_etag_and_304(server: Server, rel: str) -> None:
    url = f"{server.url}/v1/qmap"
    first = httpx.get(url, params={"file_path": rel})
    etag = first.headers["etag"]
    again = httpx.get(url, params={"file_path": rel}, headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other_group = httpx.get(url, params={"file_path": rel, "group": "/xpcs/qmap/"})
    assert other_group.headers["etag"] != etag
    as_json = httpx.get(
        f"{server.url}/v1/geometry",
        params={"file_path": rel},
        headers={"accept": "application/json"},
    )
    as_msgpack = httpx.get(f"{server.url}/v1/geometry", params={"file_path": rel})
    assert as_json.headers["etag"] != as_msgpack.headers["etag"]


def test_changed_file_gets_new_etag_and_new_data(server: Server, rel: str) -> None:
    url = f"{server.url}/v1/qmap"
    etag = httpx.get(url, params={"file_path": rel}).headers["etag"]
    with h5py.File(server.root / rel, "a", locking=False) as f:
        f["/xpcs/qmap/sqmap"][0, 0] = 123.0
    r = httpx.get(url, params={"file_path": rel}, headers={"if-none-match": etag})
    assert r.status_code == 200
    assert r.headers["etag"] != etag


def test_client_cache_returns_same_object_until_the_file_changes(server: Server, rel: str) -> None:
    with RemoteHDF5Facade(server.url, cache_bytes=64 << 20) as api:
        a = api.read_qmap(rel)
        b = api.read_qmap(rel)
        assert b is a
        assert not a.sqmap.flags.writeable
        assert api.cache.stats()["hits"] == 1
        geo = api.read_geometry_metadata(rel)
        mask = MaskSchema(mask=np.zeros(geo.shape, np.uint8), metadata=geo, description="v1")
        api.write_mask(rel, mask)  # replaces the file: a new identity, so a new ETag
        assert api.read_mask(rel).description == "v1"
        c = api.read_qmap(rel)
        assert c is not a
        np.testing.assert_array_equal(c.sqmap, a.sqmap)
        api.write_mask(
            rel, MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo, description="v2")
        )
        assert api.read_mask(rel).description == "v2"
        assert [v["description"] for v in api.list_mask_versions(rel)] == ["v1", "v2"]


def test_client_cache_is_bounded(server: Server, workdir: Path) -> None:
    rels = []
    for i in range(4):
        p = write_native_file(
            workdir / f"b{i}.hdf5", DemoSpec(shape=(64, 64), n_delay=4, n_q=2, seed=i)
        )
        rels.append(p.relative_to(server.root).as_posix())
    budget = 64 * 64 * 4 * 3 * 2 + 64 * 64 * 3  # about two q-maps
    with RemoteHDF5Facade(server.url, cache_bytes=budget) as api:
        for r in rels:
            api.read_qmap(r)
        stats = api.cache.stats()
        assert stats["bytes"] <= budget
        assert 1 <= stats["entries"] < 4


def test_cache_off_by_default_returns_writable_arrays(server: Server, rel: str) -> None:
    with RemoteHDF5Facade(server.url) as api:
        a = api.read_qmap(rel)
        b = api.read_qmap(rel)
    assert a is not b
    assert a.sqmap.flags.writeable
    a.sqmap[0, 0] = -1.0
    assert b.sqmap[0, 0] != -1.0

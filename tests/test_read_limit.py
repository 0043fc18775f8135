"""Datasets declared larger than the read limit: refused before anything is allocated, with
``DatasetTooLargeError`` (HTTP 422) naming the dataset and its size, on every read path and
on both sides; a small file declaring 149 GiB costs the server nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from xpcs_io.errors import DatasetTooLargeError, HDF5ValidationError, status_for
from xpcs_io.facade import HDF5Facade
from xpcs_io.h5access import (
    DEFAULT_MAX_READ_BYTES,
    check_read_size,
    read_dataset,
    read_limit,
    selection_shape,
    set_read_limit,
)
from xpcs_io.schemas import MaskSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from .conftest import Side
from .reliability.support import geometry, rss_bytes, serving

HUGE = (200_000, 200_000)  # float32: 149 GiB declared, chunked, never written


def _declare(path: Path, hdf5_path: str, shape: tuple[int, ...], dtype: str = "f4") -> None:
    with h5py.File(path, "a") as f:
        del f[hdf5_path]
        chunks = (1,) * (len(shape) - 1) + (min(shape[-1], 1024),)
        f.create_dataset(hdf5_path, shape=shape, dtype=dtype, chunks=chunks)


@pytest.fixture
def limit() -> Iterator[None]:
    yield
    set_read_limit(DEFAULT_MAX_READ_BYTES)


def test_declared_qmap_is_refused_on_both_sides(side: Side, workdir: Path) -> None:
    path = write_native_file(workdir / "bomb.hdf5", DemoSpec(shape=(16, 16), n_delay=6, n_q=3))
    _declare(path, "/xpcs/qmap/sqmap", HUGE)
    assert path.stat().st_size < 100_000
    with pytest.raises(DatasetTooLargeError) as info:
        side.api.read_qmap(side.path(path))
    text = str(info.value)
    assert "/xpcs/qmap/sqmap" in text
    assert "200000 x 200000" in text
    assert "149.0 GiB" in text
    assert isinstance(info.value, HDF5ValidationError)


@pytest.mark.parametrize("q_idx", [None, 0])
def test_declared_g2_is_refused_whole_and_by_column(
    side: Side, workdir: Path, q_idx: int | None
) -> None:
    path = write_native_file(workdir / "g2.hdf5", DemoSpec(shape=(16, 16), n_delay=6, n_q=3))
    # 2**31 delays x 3 bins of float64: one column alone is 16 GiB.
    _declare(path, "/xpcs/g2/g2", (1 << 31, 3), "f8")
    with pytest.raises(DatasetTooLargeError, match="/xpcs/g2/g2"):
        side.api.read_g2_data(side.path(path), q_idx=q_idx)


def test_declared_mask_version_is_refused(side: Side, workdir: Path) -> None:
    path = write_native_file(workdir / "m.hdf5", DemoSpec(shape=(16, 16), n_delay=6, n_q=3))
    HDF5Facade().write_mask(
        path, MaskSchema(mask=np.ones((16, 16), np.uint8), metadata=geometry((16, 16)))
    )
    _declare(path, "/simplemask/mask/versions/v000001/mask", HUGE, "u1")
    with pytest.raises(DatasetTooLargeError, match="v000001/mask"):
        side.api.read_mask(side.path(path), version=1)


def test_declared_two_time_map_is_refused_whole_and_decimated(tmp_path: Path) -> None:
    path = write_aps8idi_file(tmp_path / "c2.hdf5", n_frames=32)
    _declare(path, "/xpcs/twotime/correlation_map/c2_00001", HUGE)
    facade = HDF5Facade()
    with pytest.raises(DatasetTooLargeError, match="c2_00001"):
        facade.read_c2(path, 0)
    with pytest.raises(DatasetTooLargeError, match="block means"):
        facade.read_c2(path, 0, max_size=100)
    # The other, real map of the file still reads.
    assert facade.read_c2(path, 3).shape == (32, 32)


def test_limit_is_a_setting(workdir: Path, limit: None) -> None:
    path = write_native_file(workdir / "s.hdf5", DemoSpec(shape=(64, 64), n_delay=6, n_q=3))
    facade = HDF5Facade()
    assert facade.read_qmap(path).sqmap.shape == (64, 64)
    set_read_limit(64 * 64 * 4 - 1)  # one byte short of a float32 map
    with pytest.raises(DatasetTooLargeError, match=r"16\.0 KiB to read"):
        facade.read_qmap(path)
    assert read_limit() == 64 * 64 * 4 - 1
    with pytest.raises(ValueError, match="at least 1 byte"):
        set_read_limit(0)


def test_server_answers_422_and_keeps_its_memory(tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "bomb.hdf5", DemoSpec(shape=(16, 16), n_delay=6, n_q=3))
    _declare(path, "/xpcs/qmap/sqmap", HUGE)
    small = write_native_file(tmp_path / "small.hdf5", DemoSpec(shape=(64, 64), n_delay=6, n_q=3))
    env = {"XPCS_IO_MAX_READ_BYTES": str(8 << 10)}
    with serving(tmp_path, tmp_path / "server.log", env=env) as srv:
        rss0 = rss_bytes(srv.process.pid)
        for _ in range(5):
            r = httpx.get(f"{srv.url}/v1/qmap", params={"file_path": path.name}, timeout=30)
            assert r.status_code == 422
            problem = r.json()
            assert problem["error"] == "DatasetTooLargeError"
            assert problem["field"] == "sqmap"
            assert "/xpcs/qmap/sqmap" in problem["detail"]
        # The configured limit (8 KiB) applies: a 64 x 64 float32 map is 16 KiB.
        r = httpx.get(f"{srv.url}/v1/qmap", params={"file_path": small.name}, timeout=30)
        assert r.status_code == 422
        assert "8.0 KiB" in r.json()["detail"]
        assert rss_bytes(srv.process.pid) - rss0 < 50e6
        assert httpx.get(f"{srv.url}/health").status_code == 200
    assert status_for(DatasetTooLargeError("x")) == 422


@pytest.mark.parametrize(
    ("shape", "selection", "want"),
    [
        ((5, 6), (), (5, 6)),
        ((5, 6), np.s_[:, 2:3], (5, 1)),
        ((5, 6), np.s_[3], (6,)),
        ((5, 6), np.s_[..., 1], (5,)),
        ((5, 6), np.s_[::2], (3, 6)),
        ((5, 6), np.s_[[0, 1]], (5, 6)),  # fancy: counted whole (an upper bound)
        ((), (), ()),
        ((10,), np.s_[8:20], (2,)),
    ],
)
def test_selection_shape(shape: tuple[int, ...], selection: object, want: tuple[int, ...]) -> None:
    assert selection_shape(shape, selection) == want


def test_read_dataset_checks_before_reading(tmp_path: Path, limit: None) -> None:
    with h5py.File(tmp_path / "d.h5", "w") as f:
        ds = f.create_dataset("x", data=np.arange(100, dtype="f8"))
        set_read_limit(80)
        assert read_dataset(ds, np.s_[:10], display="d.h5", path="/x").shape == (10,)
        with pytest.raises(DatasetTooLargeError, match="/x declares 100 float64"):
            check_read_size(ds, (), display="d.h5", path="/x")

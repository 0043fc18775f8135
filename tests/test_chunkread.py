"""Raw-chunk decoding equals h5py's read for every pipeline it takes, and declines the rest."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest

from xpcs_io.chunkread import MIN_BYTES, read_whole
from xpcs_io.facade import HDF5Facade
from xpcs_io.tools.demo import DemoSpec, write_native_file

SHAPE = (1100, 530)  # > MIN_BYTES as float32; edge chunks are partial with the chunks below


def _data(dtype: str) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(7)
    return (rng.random(SHAPE) * 1000).astype(dtype)


TAKEN: dict[str, tuple[str, dict[str, Any]]] = {
    "gzip": ("<f4", {"compression": "gzip", "compression_opts": 4, "chunks": (128, 128)}),
    "shuffle+gzip": ("<f4", {"compression": "gzip", "shuffle": True, "chunks": (100, 333)}),
    "shuffle+gzip big-endian f8": (">f8", {"compression": "gzip", "shuffle": True}),
    "gzip int16": ("<i2", {"compression": "gzip", "chunks": (64, 530)}),
    "shuffle uint32 no gzip": ("<u4", {"shuffle": True, "chunks": (50, 50)}),
}
DECLINED: dict[str, tuple[str, dict[str, Any]]] = {
    "lzf": ("<f4", {"compression": "lzf"}),
    "fletcher32": ("<f4", {"compression": "gzip", "fletcher32": True}),
    "zstd (hdf5plugin)": ("<f4", dict(hdf5plugin.Zstd())),
    "blosc2 (hdf5plugin)": ("<f4", dict(hdf5plugin.Blosc2())),
    "contiguous": ("<f4", {}),
}


@pytest.mark.parametrize("name", sorted(TAKEN))
def test_decoded_chunks_equal_h5py(tmp_path: Path, name: str) -> None:
    dtype, kw = TAKEN[name]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("d", data=_data(dtype), **kw)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        got = read_whole(f["d"])
        want = f["d"][()]
    assert got is not None
    assert got.dtype == want.dtype
    assert got.dtype.str == dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_other_pipelines_are_left_to_hdf5(tmp_path: Path, name: str) -> None:
    dtype, kw = DECLINED[name]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("d", data=_data(dtype), **kw)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert read_whole(f["d"]) is None


def test_unwritten_chunks_and_small_datasets_are_left_to_hdf5(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("d", shape=SHAPE, dtype="<f4", chunks=(100, 100), compression="gzip")
        ds[:100, :100] = 1.0  # one chunk of 66 written; the rest is the fill value
        f.create_dataset("s", data=np.ones((10, 10), "<f4"), compression="gzip")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["s"].size * 4 < MIN_BYTES
        assert read_whole(f["d"]) is None
        assert read_whole(f["s"]) is None


def test_a_skipped_filter_in_one_chunk_is_honoured(tmp_path: Path) -> None:
    data = _data("<f4")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=(550, 265), compression="gzip")
        # Store chunk (0, 0) raw with the deflate filter marked as skipped (mask bit 0).
        ds.id.write_direct_chunk((0, 0), np.ascontiguousarray(data[:550, :265]).tobytes(), 1)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        got = read_whole(f["d"])
        assert got is not None
        np.testing.assert_array_equal(got, f["d"][()])


def test_facade_reads_gzip_maps_equal_from_many_threads(tmp_path: Path) -> None:
    path = write_native_file(
        tmp_path / "gz.hdf5", DemoSpec(shape=(600, 500), n_delay=4, n_q=6, compression="gzip")
    )
    with h5py.File(path, "r") as f:
        assert f["/xpcs/qmap/sqmap"].compression == "gzip"
        want = {n: f[f"/xpcs/qmap/{n}"][()] for n in ("sqmap", "dqmap", "phis")}
    facade = HDF5Facade(root=tmp_path)
    results: list[Any] = []

    def read() -> None:
        results.append(facade.read_qmap(path.name))

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    for q in results:
        for name, value in want.items():
            np.testing.assert_array_equal(getattr(q, name), value)


def test_a_damaged_chunk_is_an_error_not_a_wrong_array(tmp_path: Path) -> None:
    data = _data("<f4")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=(550, 265), compression="gzip")
        ds.id.write_direct_chunk((0, 0), zlib.compress(b"\x01" * 1001), 0)  # too short
        ds.id.write_direct_chunk((550, 0), b"not deflate at all", 0)
    with h5py.File(tmp_path / "f.h5", "r") as f, pytest.raises((OSError, zlib.error)):
        read_whole(f["d"])

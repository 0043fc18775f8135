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

from xpcs_io import chunkread, inflate
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


def test_user_block_interleaved_chunks_and_3d_equal_h5py(tmp_path: Path) -> None:
    """Chunks read by offset: a file with a user block (HDF5 reads its chunks), two datasets
    written chunk by chunk in turn (gaps between one dataset's chunks), and a 3-D dataset
    with edge chunks in every dimension."""
    data = _data("<f4")
    with h5py.File(tmp_path / "ub.h5", "w", userblock_size=1024) as f:
        f.create_dataset("d", data=data, chunks=(128, 128), compression="gzip")
    with h5py.File(tmp_path / "gaps.h5", "w") as f:
        a = f.create_dataset("a", shape=SHAPE, dtype="<f4", chunks=(275, 265), compression="gzip")
        b = f.create_dataset("b", shape=SHAPE, dtype="<f4", chunks=(275, 265), compression="gzip")
        for i in range(0, SHAPE[0], 275):
            for j in range(0, SHAPE[1], 265):
                block = np.ascontiguousarray(data[i : i + 275, j : j + 265])
                a.id.write_direct_chunk((i, j), zlib.compress(block.tobytes()), 0)
                b.id.write_direct_chunk((i, j), zlib.compress((-block).tobytes()), 0)
        cube = np.arange(70 * 90 * 50, dtype=">i8").reshape(70, 90, 50)
        f.create_dataset("c", data=cube, chunks=(16, 40, 17), compression="gzip", shuffle=True)
    with h5py.File(tmp_path / "ub.h5", "r") as f:
        got = read_whole(f["d"])
        assert got is not None
        np.testing.assert_array_equal(got, data)
    with h5py.File(tmp_path / "gaps.h5", "r") as f:
        starts = []
        f["a"].id.chunk_iter(lambda info: starts.append(info.byte_offset))
        ends = []
        f["b"].id.chunk_iter(lambda info: ends.append(info.byte_offset))
        assert min(ends) < max(starts)  # the two datasets' chunks interleave in the file
        for name in ("a", "b", "c"):
            got = read_whole(f[name])
            assert got is not None
            want = f[name][()]
            assert got.dtype.str == want.dtype.str
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, want)


def test_a_truncated_file_is_an_error_not_a_short_array(tmp_path: Path) -> None:
    data = _data("<f4")
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=data, chunks=(128, 128), compression="gzip")
    with h5py.File(path, "r") as f:
        ends = []
        f["d"].id.chunk_iter(lambda info: ends.append(info.byte_offset + info.size))
    with h5py.File(path, "r") as f:
        f["d"].id.get_num_chunks()  # the chunk index is read while the file is whole
        # Cut the file inside the last chunk while it is open (HDF5 refuses to open it so).
        with path.open("r+b") as fh:
            fh.truncate(max(ends) - 10)
        with pytest.raises(OSError, match=r"truncated|ends"):
            read_whole(f["d"])


def test_at_most_decode_slots_datasets_decode_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More concurrent readers than cores: every read equals h5py's, and no more than
    ``DECODE_SLOTS`` of them are decoding chunks at any moment."""
    readers = chunkread.DECODE_SLOTS + 3
    paths = []
    for i in range(readers):
        with h5py.File(tmp_path / f"f{i}.h5", "w") as f:
            f.create_dataset("d", data=_data("<f4") + i, chunks=(64, 128), compression="gzip")
        paths.append(tmp_path / f"f{i}.h5")
    lock = threading.Lock()
    active = [0]
    peak = [0]
    decode = inflate.inflate

    def counted(data: Any, size: int) -> Any:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return decode(data, size)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(chunkread, "inflate", counted)
    files = [h5py.File(p, "r") for p in paths]
    got: dict[int, Any] = {}
    start = threading.Barrier(readers)

    def read(i: int) -> None:
        start.wait()
        got[i] = read_whole(files[i]["d"])

    try:
        threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, f in enumerate(files):
            np.testing.assert_array_equal(got[i], f["d"][()])
    finally:
        for f in files:
            f.close()
    assert 1 <= peak[0] <= chunkread.DECODE_SLOTS


def test_chunks_larger_than_a_read_run_and_many_runs_equal_h5py(tmp_path: Path) -> None:
    """Stored chunks are read run by run into one reused buffer: a chunk larger than a run,
    and a dataset of many runs (each run's bytes overwritten by the next), decode exactly."""
    rng = np.random.default_rng(3)
    big = rng.random((1100, 2100)).astype("<f4")  # random floats: chunks stay ~2 MB stored
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("big", data=big, chunks=(512, 1024), compression="gzip")
        f.create_dataset("many", data=big, chunks=(64, 128), compression="gzip", shuffle=True)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        sizes: list[int] = []
        f["big"].id.chunk_iter(lambda info: sizes.append(info.size))
        assert max(sizes) > chunkread._RUN_BYTES
        stored = f["many"].id.get_storage_size()
        assert stored > 4 * chunkread._RUN_BYTES
        for name in ("big", "many"):
            got = read_whole(f[name])
            assert got is not None
            np.testing.assert_array_equal(got, big)


def test_run_reads_cover_every_chunk_even_overlapping_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stored chunk is the file's bytes at its address, whatever the runs: adjacent
    chunks, a gap, a chunk ending after the next one starts (only in a damaged file), and
    more bytes than one run holds."""
    blob = np.random.default_rng(5).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(blob)
    index = [
        ((0,), 0, 100, 5000),
        ((1,), 0, 150, 40),  # inside the chunk before it, and last of its run
        ((2,), 0, 20_000, 700),  # after a gap: a new run
        ((3,), 0, 20_700, 100),
        ((4,), 0, 1 << 20, 1 << 20),  # a whole run by itself
        ((5,), 0, (2 << 20) + 10, 900_000),
    ]
    with path.open("rb") as fh:
        monkeypatch.setattr(chunkread, "_plain_descriptor", lambda ds: fh.fileno())
        got = {o: bytes(raw) for o, raw, _ in chunkread._stored(None, list(index))}
    for o, _, a, n in index:
        assert got[o] == blob[a : a + n], o

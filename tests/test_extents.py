"""Dataset extents: which datasets' file bytes are their array bytes, checked on real files."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from xpcs_io.extents import dataset_extents, note, recording


def _file_bytes(path: Path, spans: tuple[tuple[int, int], ...]) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return b"".join(os.pread(fd, n, off) for off, n in spans)
    finally:
        os.close(fd)


LAYOUTS = {
    "contiguous <f4": ({"data": np.arange(600, dtype="<f4").reshape(20, 30)}, True),
    "contiguous >f8": ({"data": np.linspace(0, 1, 600, dtype=">f8").reshape(20, 30)}, True),
    "contiguous uint16": ({"data": np.arange(600, dtype=np.uint16).reshape(20, 30)}, True),
    "bool": ({"data": np.arange(600).reshape(20, 30) % 3 == 0}, True),
    "row chunks, last cut": (
        {"data": np.arange(600, dtype="<f4").reshape(20, 30), "chunks": (7, 30)},
        True,
    ),
    "3-d row chunks": (
        {"data": np.arange(2 * 20 * 30, dtype="<i4").reshape(20, 2, 30), "chunks": (3, 2, 30)},
        True,
    ),
    "square chunks": (
        {"data": np.arange(600, dtype="<f4").reshape(20, 30), "chunks": (8, 8)},
        False,
    ),
    "gzip": ({"data": np.arange(600, dtype="<f4").reshape(20, 30), "compression": "gzip"}, False),
    "shuffle": ({"data": np.arange(600, dtype="<f4").reshape(20, 30), "shuffle": True}, False),
    "fletcher32": (
        {"data": np.arange(600, dtype="<f4").reshape(20, 30), "fletcher32": True},
        False,
    ),
    "compound": (
        {"data": np.zeros(20, dtype=[("a", "<f4"), ("b", "<i2")])},
        False,
    ),
    "never written": ({"shape": (20, 30), "dtype": "<f4"}, False),
    "row chunks, one missing": ({"shape": (20, 30), "dtype": "<f4", "chunks": (10, 30)}, False),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_extents_are_the_array_bytes_or_none(tmp_path: Path, name: str) -> None:
    kwargs, sendable = LAYOUTS[name]
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("d", **kwargs)
        if name == "row chunks, one missing":
            ds[:10] = 1.0
    with h5py.File(path, "r") as f:
        ds = f["d"]
        ext = dataset_extents(ds)
        if not sendable:
            assert ext is None
            return
        assert ext is not None
        expected = ds[()]
        assert ext.dtype == expected.dtype.str
        assert ext.shape == expected.shape
        assert ext.nbytes == expected.nbytes
    assert _file_bytes(path, ext.spans) == expected.tobytes()


def test_external_storage_is_not_sent(tmp_path: Path) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.arange(600, dtype="<f4").tobytes())
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("d", shape=(20, 30), dtype="<f4", external=[(str(raw), 0, 2400)])
    with h5py.File(path, "r") as f:
        assert dataset_extents(f["d"]) is None
        assert float(f["d"][19, 29]) == 599.0


def test_recording_notes_only_whole_reads_of_the_recording_thread(tmp_path: Path) -> None:
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["d"] = np.arange(600, dtype="<f4").reshape(20, 30)
    with h5py.File(path, "r") as f:
        whole, part, copy = f["d"][()], f["d"][:5], f["d"][()].copy()
        note(whole, f["d"])  # not recording: nothing kept
        with recording() as found:
            note(whole, f["d"])
            note(part, f["d"])
        assert found.extents_of(whole) is not None
        assert found.extents_of(part) is None
        assert found.extents_of(copy) is None

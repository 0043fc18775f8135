"""Datasets compressed with HDF5 filter plugins read in every layout, locally, in a fresh
process that imports only the facade, remotely, and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest

from xpcs_io.filters import FILTERS, available_filters
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file
from xpcs_io.tools.demo_legacy8idi import write_eigen_file

from .conftest import Side

# hdf5plugin's lossless filters; ids as HDF5 registers them.
FILTER_ARGS: dict[str, Callable[[], Any]] = {
    "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
    "lz4": lambda: hdf5plugin.LZ4(),
    "blosc-lz4": lambda: hdf5plugin.Blosc(cname="lz4"),
    "blosc-zstd": lambda: hdf5plugin.Blosc(cname="zstd"),
    "blosc2": lambda: hdf5plugin.Blosc2(),
    "zstd": lambda: hdf5plugin.Zstd(),
    "bzip2": lambda: hdf5plugin.BZip2(),
}
FILTER_IDS = {
    "bitshuffle-lz4": FILTERS["bshuf"],
    "lz4": FILTERS["lz4"],
    "blosc-lz4": FILTERS["blosc"],
    "blosc-zstd": FILTERS["blosc"],
    "blosc2": FILTERS["blosc2"],
    "zstd": FILTERS["zstd"],
    "bzip2": FILTERS["bzip2"],
}
LAYOUT_DATASETS = {
    "native": ["/xpcs/qmap/sqmap", "/xpcs/qmap/partition_map", "/xpcs/g2/g2"],
    "aps8idi": [
        "/xpcs/qmap/dynamic_roi_map",
        "/xpcs/qmap/mask",
        "/xpcs/multitau/normalized_g2",
        "/xpcs/twotime/correlation_map/c2_00002",
    ],
    "aps8idi-legacy": [
        "/xpcs/dqmap",
        "/xpcs/mask",
        "/exchange/norm-0-g2",
        "/exchange/C2T_all/g2_00002",
    ],
}


def _recompress(path: Path, names: list[str], name: str) -> None:
    """Rewrite ``names`` in ``path`` through the filter ``name`` (whole-dataset chunks)."""
    with h5py.File(path, "a") as f:
        for ds_path in names:
            data = f[ds_path][()]
            del f[ds_path]
            f.create_dataset(ds_path, data=data, chunks=data.shape, **FILTER_ARGS[name]())


def _write(path: Path, layout: str) -> Path:
    if layout == "native":
        return write_native_file(path, DemoSpec(shape=(40, 36), n_delay=12, n_q=6))
    if layout == "aps8idi":
        return write_aps8idi_file(path, shape=(48, 60), n_q=6, n_phi=2, n_frames=24)
    return write_eigen_file(path)[0]


@pytest.fixture(scope="module")
def filtered(data_root: Path) -> dict[tuple[str, str], Path]:
    """One file per (filter, layout) under the data root, its big datasets filtered."""
    folder = data_root / "filters"
    folder.mkdir(exist_ok=True)
    out: dict[tuple[str, str], Path] = {}
    for name in FILTER_ARGS:
        for layout, names in LAYOUT_DATASETS.items():
            path = _write(folder / f"{name}-{layout}.hdf5", layout)
            _recompress(path, names, name)
            out[name, layout] = path
    return out


def _stored(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()])


def _mirrored(upper: np.ndarray) -> np.ndarray:
    u = np.triu(upper)
    return np.asarray(u + np.triu(u, 1).T, dtype=np.float32)


def test_every_filter_is_registered() -> None:
    avail = available_filters()
    assert {"bshuf", "lz4", "blosc", "blosc2", "zstd", "bzip2"} <= set(avail)
    assert all(avail.values()), avail


@pytest.mark.parametrize("name", list(FILTER_ARGS))
def test_files_really_use_the_filter(filtered: dict[tuple[str, str], Path], name: str) -> None:
    for layout, names in LAYOUT_DATASETS.items():
        with h5py.File(filtered[name, layout], "r") as f:
            for ds_path in names:
                plist = f[ds_path].id.get_create_plist()
                ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
                assert FILTER_IDS[name] in ids, (name, layout, ds_path, ids)


def _check(side: Side, path: Path, layout: str) -> None:
    """q-map, G2 and (8-ID-I layouts) C2 equal what the file stores."""
    p = side.path(path)
    qmap = side.api.read_qmap(p)
    g2 = side.api.read_g2_data(p)
    if layout == "native":
        np.testing.assert_array_equal(qmap.sqmap, _stored(path, "/xpcs/qmap/sqmap"))
        np.testing.assert_array_equal(qmap.partition_map, _stored(path, "/xpcs/qmap/partition_map"))
        np.testing.assert_array_equal(g2.g2, _stored(path, "/xpcs/g2/g2"))
        return
    if layout == "aps8idi":
        labels, mask, g2_path = "dynamic_roi_map", "mask", "/xpcs/multitau/normalized_g2"
        c2_name, k = "/xpcs/twotime/correlation_map/c2_00002", 3  # processed_bins[1] = 4
        qgroup = "/xpcs/qmap"
    else:
        labels, mask, g2_path = "dqmap", "mask", "/exchange/norm-0-g2"
        c2_name, k = "/exchange/C2T_all/g2_00002", 1  # named by label 2
        qgroup = "/xpcs"
    np.testing.assert_array_equal(qmap.partition_map, _stored(path, f"{qgroup}/{labels}"))
    np.testing.assert_array_equal(qmap.mask, _stored(path, f"{qgroup}/{mask}"))
    np.testing.assert_array_equal(g2.g2, _stored(path, g2_path)[:, : g2.g2.shape[1]])
    np.testing.assert_array_equal(side.api.read_c2(p, k), _mirrored(_stored(path, c2_name)))


@pytest.mark.parametrize("layout", list(LAYOUT_DATASETS))
@pytest.mark.parametrize("name", list(FILTER_ARGS))
def test_filtered_reads(
    side: Side, filtered: dict[tuple[str, str], Path], name: str, layout: str
) -> None:
    _check(side, filtered[name, layout], layout)


_FRESH = """
import json, sys, zlib
from xpcs_io.facade import HDF5Facade
f = HDF5Facade()
out = {}
for path, layout in json.loads(sys.argv[1]):
    q = f.read_qmap(path)
    g = f.read_g2_data(path)
    c = f.read_c2(path, 3 if layout == "aps8idi" else 1).tobytes() if layout != "native" else b""
    out[path] = [zlib.crc32(q.partition_map.tobytes()), zlib.crc32(g.g2.tobytes()), zlib.crc32(c)]
assert "hdf5plugin" in sys.modules
print(json.dumps(out))
"""


def test_fresh_process_reads_every_filter(filtered: dict[tuple[str, str], Path]) -> None:
    """A new interpreter that imports only the facade (no hdf5plugin of its own)."""
    import zlib

    jobs = [(str(path), layout) for (_, layout), path in filtered.items()]
    r = subprocess.run(
        [sys.executable, "-c", _FRESH, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert len(got) == len(FILTER_ARGS) * len(LAYOUT_DATASETS)
    for path_s, layout in jobs:
        path = Path(path_s)
        if layout == "native":
            labels, g2 = "/xpcs/qmap/partition_map", _stored(path, "/xpcs/g2/g2")
            c2 = b""
        elif layout == "aps8idi":
            labels, g2 = "/xpcs/qmap/dynamic_roi_map", _stored(path, "/xpcs/multitau/normalized_g2")
            c2 = _mirrored(_stored(path, "/xpcs/twotime/correlation_map/c2_00002")).tobytes()
        else:
            labels = "/xpcs/dqmap"
            g2 = _stored(path, "/exchange/norm-0-g2")
            c2 = _mirrored(_stored(path, "/exchange/C2T_all/g2_00002")).tobytes()
        want = [
            zlib.crc32(_stored(path, labels).tobytes()),
            zlib.crc32(np.ascontiguousarray(g2).tobytes()),
            zlib.crc32(c2),
        ]
        assert got[path_s] == want, (path.name, got[path_s], want)


def test_cli_validates_a_filtered_file(filtered: dict[tuple[str, str], Path]) -> None:
    path = filtered["bitshuffle-lz4", "aps8idi"]
    r = subprocess.run(
        [sys.executable, "-m", "xpcs_io.tools.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "layout aps8idi" in r.stdout
    for check in ("q-map (aps8idi)", "G2 (aps8idi)", "two-time q_idx 3"):
        assert f"OK    {check}" in r.stdout


def test_every_server_worker_reads_filtered_files(
    filtered: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """``serve --workers 2``: each connection lands on either worker (the kernel spreads
    them), and every read of a filtered file succeeds."""
    from xpcs_io.client import RemoteHDF5Facade

    from .conftest import start_server

    path = filtered["bitshuffle-lz4", "aps8idi-legacy"]
    want = _stored(path, "/exchange/norm-0-g2")
    srv = start_server(
        path.parent,
        tmp_path / "log",
        args=("--workers", "2"),
        env={"XPCS_IO_CACHE_BYTES": "0"},
    )
    try:
        for _ in range(16):  # a fresh connection each time
            with RemoteHDF5Facade(srv.url) as api:
                np.testing.assert_array_equal(api.read_g2_data(path.name).g2, want)
    finally:
        srv.stop()

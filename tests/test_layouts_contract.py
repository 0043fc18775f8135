"""The facade contract on every layout read, local and remote alike: legacy 8-ID-I files of
each era, pySimpleMask q-partitions, NeXus files missing optional pieces, files of no known
layout and stored arrays of the wrong shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io.client import calls
from xpcs_io.errors import HDF5ValidationError
from xpcs_io.facade import LAYOUTS
from xpcs_io.layouts import registry
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file, write_pysimplemask_file
from xpcs_io.tools.demo_legacy8idi import (
    LegacyTruth,
    write_boost_file,
    write_eigen_file,
    write_hadoop_file,
    write_matlab_file,
)

from .conftest import CONTRACT_SIDES, Server, Side, open_side


@pytest.fixture(params=CONTRACT_SIDES)
def side(request: pytest.FixtureRequest, data_root: Path) -> Iterator[Side]:
    """Every side, the async client included."""
    yield from open_side(request, data_root)


ERAS: dict[str, Callable[[Path], tuple[Path, LegacyTruth]]] = {
    "hadoop": lambda d: write_hadoop_file(d / "hadoop.hdf"),
    "matlab": lambda d: write_matlab_file(d / "matlab.hdf", second_analysis=True),
    "eigen-transposed": lambda d: write_eigen_file(d / "eigen.hdf", transposed=True),
    "eigen-single-q": lambda d: write_eigen_file(d / "one.hdf", single_q=True),
    "boost": lambda d: write_boost_file(d / "boost.hdf"),
}


def _stored(path: Path, name: str) -> npt.NDArray[Any]:
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()])


def test_client_accepts_every_layout() -> None:
    assert calls._LAYOUTS == LAYOUTS


@pytest.mark.parametrize("era", list(ERAS))
def test_legacy_reads(side: Side, workdir: Path, era: str) -> None:
    path, truth = ERAS[era](workdir)
    p = side.path(path)
    qmap = side.api.read_qmap(p)
    assert qmap.phis_unit == "deg"
    np.testing.assert_array_equal(qmap.partition_map, truth.labels)
    assert qmap.mask is not None
    np.testing.assert_array_equal(qmap.mask.astype(np.uint8), truth.mask)
    geo = side.api.read_geometry_metadata(p)
    assert geo.shape == truth.shape
    assert (geo.bcx, geo.bcy) == pytest.approx((truth.bcx, truth.bcy), rel=1e-9)
    g2 = side.api.read_g2_data(p)
    stored = _stored(path, "/exchange/norm-0-g2")
    k = len(truth.q_bins)
    np.testing.assert_array_equal(g2.g2, stored.reshape(stored.shape[:2])[:, :k])
    np.testing.assert_allclose(g2.q_values, truth.q_bins, rtol=1e-12)
    np.testing.assert_allclose(g2.delay_times, truth.delay_s, rtol=1e-12)
    last = side.api.read_g2_data(p, q_idx=k - 1)
    np.testing.assert_array_equal(last.g2, g2.g2[:, k - 1 :])
    with pytest.raises(IndexError):
        side.api.read_g2_data(p, q_idx=k)
    forced = side.api.read_qmap(p, layout="aps8idi-legacy")
    np.testing.assert_array_equal(forced.sqmap, qmap.sqmap)


def test_legacy_two_time(side: Side, workdir: Path) -> None:
    path, truth = write_boost_file(workdir / "B_Twotime.hdf", twotime=True)
    for k in (1, 4):  # stored as g2_00001, g2_00002 over labels 2 and 5
        np.testing.assert_allclose(side.api.read_c2(side.path(path), k), truth.c2[k], rtol=1e-6)
    with pytest.raises(KeyError, match="norm-0-g2"):
        side.api.read_g2_data(side.path(path))
    with pytest.raises(KeyError, match=r"available q_idx: \[1, 4\]"):
        side.api.read_c2(side.path(path), 0)


def test_unknown_layout_is_named(side: Side) -> None:
    with pytest.raises(ValueError, match="aps8idi-legacy"):
        side.api.read_qmap("anything.hdf", layout="legacy")


def test_no_known_layout(side: Side, workdir: Path) -> None:
    path = workdir / "other.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data"] = np.zeros(3)
    with pytest.raises(KeyError) as exc:
        side.api.read_g2_data(side.path(path))
    message = str(exc.value)
    assert "no known layout" in message
    for name, what in registry.looks_for().items():
        assert f"{name} (looked for {what})" in message


def test_stored_array_of_wrong_shape(side: Side, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "m.hdf", shape=(48, 60), n_q=4, n_phi=1)
    with h5py.File(path, "a") as f:
        mask = f["/xpcs/qmap/mask"][()]
        del f["/xpcs/qmap/mask"]
        f["/xpcs/qmap/mask"] = np.stack([mask, mask])
    with pytest.raises(HDF5ValidationError) as exc:
        side.api.read_qmap(side.path(path))
    message = str(exc.value)
    for part in ("m.hdf", "/xpcs/qmap/mask", "(48, 60)", "(2, 48, 60)"):
        assert part in message


def test_pysimplemask_partition_file(side: Side, workdir: Path) -> None:
    path = write_pysimplemask_file(workdir / "qmap.hdf", shape=(40, 50), n_q=5, n_phi=2)
    labels = _stored(path, "/qmap/dynamic_roi_map")
    for kwargs in ({}, {"group": "/qmap"}, {"layout": "pysimplemask"}):
        qmap = side.api.read_qmap(side.path(path), **kwargs)
        np.testing.assert_array_equal(qmap.partition_map, labels)
    geo = side.api.read_geometry_metadata(side.path(path))
    assert geo.det_dist == pytest.approx(float(_stored(path, "/qmap/detector_distance")) * 1e3)
    with pytest.raises(KeyError, match="holds no G2"):
        side.api.read_g2_data(side.path(path))


def test_nexus_optional_and_essential_pieces(side: Side, workdir: Path) -> None:
    def nexus(name: str, *drop: str) -> Path:
        path = write_aps8idi_file(workdir / name, shape=(64, 80), n_q=6, n_phi=2)
        with h5py.File(path, "a") as f:
            for dataset in drop:
                del f[dataset]
        return path

    whole = nexus("whole.hdf")
    lean = nexus("lean.hdf", "/xpcs/qmap/dynamic_index_mapping", "/xpcs/qmap/dynamic_num_pts")
    broken = nexus("broken.hdf", "/entry/instrument/detector_1/frame_time")
    before = side.api.read_g2_data(side.path(whole))
    after = side.api.read_g2_data(side.path(lean))
    np.testing.assert_array_equal(after.q_values, before.q_values)
    np.testing.assert_array_equal(after.g2, before.g2)
    with pytest.raises(KeyError) as exc:
        side.api.read_g2_data(side.path(broken))
    assert "/entry/instrument/detector_1/frame_time" in str(exc.value)
    assert "layout aps8idi" in str(exc.value)


def test_no_known_layout_is_404_on_the_wire(server: Server, workdir: Path) -> None:
    path = workdir / "other.h5"
    with h5py.File(path, "w") as f:
        f["/entry/data"] = np.zeros(3)
    rel = path.relative_to(server.root).as_posix()
    for route in ("qmap", "g2", "geometry"):
        r = httpx.get(
            f"{server.url}/v1/{route}",
            params={"file_path": rel},
            headers={"Accept": "application/json"},
            timeout=30,
        )
        assert r.status_code == 404, r.text
        body = r.json()
        assert body["error"] == "KeyError"
        assert "no known layout" in body["detail"]
        assert "aps8idi-legacy (looked for /xpcs/Version" in body["detail"]

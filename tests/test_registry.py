"""Layout detection and its errors; NeXus files missing optional pieces; stand-alone
pySimpleMask q-partition files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from xpcs_io.facade import LAYOUTS, HDF5Facade
from xpcs_io.h5access import Locator
from xpcs_io.layouts import aps8idi, registry
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file, write_pysimplemask_file

QMAP = "/xpcs/qmap"


@pytest.fixture
def facade() -> Iterator[HDF5Facade]:
    f = HDF5Facade(pool=HDF5ConnectionPool(max_size=4))
    yield f
    f.pool.shutdown()


@pytest.fixture
def nexus(tmp_path: Path) -> Path:
    return write_aps8idi_file(tmp_path / "nx.hdf5", shape=(96, 120), n_q=8, n_phi=2)


def _read_all(facade: HDF5Facade, path: Path) -> None:
    facade.read_geometry_metadata(path)
    facade.read_g2_data(path)


def _edit(path: Path, fn: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


def test_layout_names() -> None:
    assert LAYOUTS == ("native", "aps8idi", "aps8idi-legacy", "pysimplemask")
    assert set(registry.looks_for()) == set(LAYOUTS)


def test_no_known_layout_is_one_key_error_naming_every_layout(
    facade: HDF5Facade, tmp_path: Path
) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["/data/image"] = np.zeros((4, 4))
    for read in (facade.read_qmap, facade.read_g2_data, facade.read_geometry_metadata):
        with pytest.raises(KeyError) as exc:
            read(path)
        message = str(exc.value)
        assert "no known layout" in message
        for name, what in registry.looks_for().items():
            assert f"{name} (looked for {what})" in message
    with pytest.raises(KeyError, match="no known layout"):
        facade.read_c2(path, 0)


def test_native_file_missing_a_group_names_it(facade: HDF5Facade, tmp_path: Path) -> None:
    path = write_native_file(tmp_path / "n.hdf5", DemoSpec(shape=(16, 12), n_delay=6, n_q=3))
    _edit(path, lambda f: f.__delitem__("/xpcs/g2"))
    with pytest.raises(KeyError, match=r"/xpcs/g2.*layout native"):
        facade.read_g2_data(path)
    with pytest.raises(KeyError, match="native file holds no two-time maps"):
        facade.read_c2(path, 0)
    assert facade.read_qmap(path).sqmap.shape == (16, 12)


# ---------------------------------------------------------------- NeXus optional pieces


def _drop(*names: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        for name in names:
            del f[name]

    return edit


def _drop_units(f: h5py.File) -> None:
    for name in (f"{QMAP}/dynamic_v_list_dim0", "/entry/instrument/detector_1/frame_time"):
        del f[name].attrs["unit"]


OPTIONAL = {
    "index_mapping": _drop(f"{QMAP}/dynamic_index_mapping"),
    "num_pts": _drop(f"{QMAP}/dynamic_num_pts"),
    "v_list_dim1": _drop(f"{QMAP}/dynamic_v_list_dim1"),
    "num_pts_and_mapping": _drop(f"{QMAP}/dynamic_num_pts", f"{QMAP}/dynamic_index_mapping"),
    "config": _drop("/xpcs/multitau/config"),
    "unit_attributes": _drop_units,
    "static_pieces": _drop(f"{QMAP}/static_roi_map", f"{QMAP}/static_index_mapping"),
}


@pytest.mark.parametrize("piece", list(OPTIONAL))
def test_nexus_without_optional_piece(
    facade: HDF5Facade, nexus: Path, tmp_path: Path, piece: str
) -> None:
    before = (
        facade.read_qmap(nexus),
        facade.read_g2_data(nexus),
        facade.read_geometry_metadata(nexus),
    )
    facade.clear_pool()  # the pool holds the file open read-only
    _edit(nexus, OPTIONAL[piece])
    qmap, g2, geo = (
        facade.read_qmap(nexus),
        facade.read_g2_data(nexus),
        facade.read_geometry_metadata(nexus),
    )
    assert qmap == before[0]
    assert geo == before[2]
    np.testing.assert_array_equal(g2.g2, before[1].g2)
    np.testing.assert_array_equal(g2.q_values, before[1].q_values)
    if piece == "config":  # stride_frame and avg_frame count as 1
        with h5py.File(tmp_path / "nx.hdf5", "r") as f:
            frame = float(f["/entry/instrument/detector_1/frame_time"][()])
            frames = f["/xpcs/multitau/delay_list"][()]
        np.testing.assert_allclose(g2.delay_times, frames * frame)
    else:
        np.testing.assert_array_equal(g2.delay_times, before[1].delay_times)


def test_nexus_without_q_centres_uses_each_labels_mean_pixel_q(
    facade: HDF5Facade, nexus: Path
) -> None:
    with h5py.File(nexus, "r") as f:
        mapping = f[f"{QMAP}/dynamic_index_mapping"][()]
        v0 = f[f"{QMAP}/dynamic_v_list_dim0"][()]
        labels = f[f"{QMAP}/dynamic_roi_map"][()]
    _edit(nexus, _drop(f"{QMAP}/dynamic_v_list_dim0"))
    g2 = facade.read_g2_data(nexus)
    q = facade.read_qmap(nexus).sqmap.astype(np.float64)
    want = [q[labels == lb].mean() for lb in range(1, g2.g2.shape[1] + 1)]
    np.testing.assert_allclose(g2.q_values, want, rtol=1e-6)
    half_bin = (v0[1] - v0[0]) / 2
    assert np.all(np.abs(g2.q_values - v0[mapping // 2]) <= half_bin)


@pytest.mark.parametrize(
    "name",
    [
        "/xpcs/multitau/normalized_g2",
        "/xpcs/multitau/delay_list",
        "/entry/instrument/detector_1/frame_time",
        f"{QMAP}/beam_center_x",
        f"{QMAP}/detector_distance",
    ],
)
def test_nexus_missing_essential_dataset_names_it_and_the_layout(
    facade: HDF5Facade, nexus: Path, name: str
) -> None:
    _edit(nexus, _drop(name))
    with pytest.raises(KeyError) as exc:
        _read_all(facade, nexus)
    assert name in str(exc.value)
    assert "layout aps8idi" in str(exc.value)


def test_nexus_mapping_underivable_is_named(facade: HDF5Facade, nexus: Path) -> None:
    _edit(nexus, _drop(f"{QMAP}/dynamic_index_mapping", f"{QMAP}/dynamic_roi_map"))
    with pytest.raises(KeyError, match="dynamic_index_mapping") as exc:
        facade.read_g2_data(nexus)
    assert "layout aps8idi" in str(exc.value)


# ---------------------------------------------------------------- pySimpleMask q-partitions


def test_pysimplemask_file_by_detection_group_and_force(facade: HDF5Facade, tmp_path: Path) -> None:
    source = write_aps8idi_file(tmp_path / "src.hdf5", shape=(64, 80), n_q=6, n_phi=3)
    path = write_pysimplemask_file(tmp_path / "qmap.hdf", shape=(64, 80), n_q=6, n_phi=3)
    with h5py.File(source, "r") as f:
        want = aps8idi.read_qmap(Locator(f, "src.hdf5"))
        want_geo = aps8idi.read_geometry(Locator(f, "src.hdf5"))
    for qmap in (
        facade.read_qmap(path),
        facade.read_qmap(path, group="/qmap"),
        facade.read_qmap(path, layout="pysimplemask"),
    ):
        assert qmap == want
    assert facade.read_geometry_metadata(path) == want_geo
    assert facade.read_geometry_metadata(path, group="/qmap") == want_geo
    with pytest.raises(KeyError, match="holds no G2"):
        facade.read_g2_data(path)


def test_q_partition_group_anywhere(facade: HDF5Facade, tmp_path: Path) -> None:
    path = write_pysimplemask_file(tmp_path / "qmap.hdf", shape=(40, 48), n_q=4, n_phi=1)
    _edit(path, lambda f: f.move("/qmap", "/analysis/partition"))
    with pytest.raises(KeyError, match="no known layout"):
        facade.read_qmap(path)
    qmap = facade.read_qmap(path, group="/analysis/partition")
    assert qmap.partition_map is not None
    assert int(qmap.partition_map.max()) == 4

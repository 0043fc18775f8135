"""The facade contract on real APS 8-ID-I NeXus result files, local and remote alike."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from xpcs_io.h5access import Locator
from xpcs_io.layouts import aps8idi
from xpcs_io.schemas import GeometryMetadata, MaskSchema, PartitionSchema
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from .conftest import CONTRACT_SIDES, Side, open_side


@pytest.fixture(params=CONTRACT_SIDES)
def side(request: pytest.FixtureRequest, data_root: Path) -> Iterator[Side]:
    """Every side, the async client included."""
    yield from open_side(request, data_root)


@pytest.fixture
def nexus(workdir: Path) -> Path:
    return write_aps8idi_file(workdir / "A001_result.hdf5", shape=(96, 120), n_q=8, n_phi=2)


def _reference(path: Path, read: Any, *args: Any) -> Any:
    with h5py.File(path, "r") as f:
        return read(Locator(f, path.name), *args)


def _stored(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()])


def _digest(path: Path, top: str) -> dict[str, str]:
    out: dict[str, str] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                value = np.asarray(obj[()])
                # Object arrays (variable-length strings) hold pointers: hash their values.
                raw = repr(value.tolist()).encode() if value.dtype == object else value.tobytes()
                out[name] = hashlib.sha256(raw).hexdigest()

        f[top].visititems(visit)
    return out


def test_qmap_is_detected_and_computed(side: Side, nexus: Path) -> None:
    qmap = side.api.read_qmap(side.path(nexus))
    ref = _reference(nexus, aps8idi.read_qmap)
    assert (qmap.sqmap_unit, qmap.dqmap_unit, qmap.phis_unit) == ("A^-1", "A^-1", "deg")
    np.testing.assert_array_equal(qmap.sqmap, ref.sqmap)
    np.testing.assert_array_equal(qmap.phis, ref.phis)
    stored_roi = _stored(nexus, "/xpcs/qmap/dynamic_roi_map")
    assert qmap.partition_map is not None
    assert qmap.partition_map.dtype == stored_roi.dtype == np.uint8
    np.testing.assert_array_equal(qmap.partition_map, stored_roi)
    assert qmap.mask is not None
    np.testing.assert_array_equal(qmap.mask, _stored(nexus, "/xpcs/qmap/mask"))
    assert qmap.sqmap.flags.writeable
    assert not np.shares_memory(qmap.sqmap, qmap.dqmap)


def test_geometry_in_schema_units(side: Side, nexus: Path) -> None:
    geo = side.api.read_geometry_metadata(side.path(nexus))
    assert isinstance(geo, GeometryMetadata)
    assert geo.det_dist == pytest.approx(
        float(_stored(nexus, "/xpcs/qmap/detector_distance")) * 1000
    )
    assert geo.pix_dim == pytest.approx(float(_stored(nexus, "/xpcs/qmap/pixel_size")) * 1000)
    energy = float(_stored(nexus, "/entry/instrument/incident_beam/incident_energy"))
    assert geo.lambda_ == pytest.approx(12.398 / energy)
    assert geo.bcx == pytest.approx(float(_stored(nexus, "/xpcs/qmap/beam_center_x")))
    assert geo.shape == (96, 120)


@pytest.mark.parametrize("k", [None, 0, 5])
def test_g2_from_multitau(side: Side, nexus: Path, k: int | None) -> None:
    g2 = side.api.read_g2_data(side.path(nexus), q_idx=k)
    stored = _stored(nexus, "/xpcs/multitau/normalized_g2")
    sel = np.s_[:, :] if k is None else np.s_[:, k : k + 1]
    np.testing.assert_array_equal(g2.g2, stored[sel])
    np.testing.assert_array_equal(
        g2.g2_err, _stored(nexus, "/xpcs/multitau/normalized_g2_err")[sel]
    )
    ref = _reference(nexus, aps8idi.read_g2, k)
    np.testing.assert_array_equal(g2.delay_times, ref.delay_times)
    np.testing.assert_array_equal(g2.q_values, ref.q_values)
    frame_time = float(_stored(nexus, "/entry/instrument/detector_1/frame_time"))
    delays = _stored(nexus, "/xpcs/multitau/delay_list").ravel()
    stride = float(_stored(nexus, "/xpcs/multitau/config/stride_frame"))
    avg = float(_stored(nexus, "/xpcs/multitau/config/avg_frame"))
    np.testing.assert_allclose(g2.delay_times, delays * frame_time * stride * avg)


def test_g2_q_idx_errors(side: Side, nexus: Path) -> None:
    n_q = _stored(nexus, "/xpcs/multitau/normalized_g2").shape[1]
    with pytest.raises(IndexError):
        side.api.read_g2_data(side.path(nexus), q_idx=n_q)
    with pytest.raises(IndexError):
        side.api.read_g2_data(side.path(nexus), q_idx=-1)


def test_layout_can_be_forced(side: Side, nexus: Path) -> None:
    with pytest.raises(KeyError):
        side.api.read_qmap(side.path(nexus), layout="native")
    with pytest.raises(KeyError):
        side.api.read_g2_data(side.path(nexus), layout="native")
    assert side.api.read_qmap(side.path(nexus), layout="aps8idi").sqmap_unit == "A^-1"
    with pytest.raises(ValueError, match="layout"):
        side.api.read_qmap(side.path(nexus), layout="nexus")


def test_c2_full_and_decimated(side: Side, nexus: Path) -> None:
    c2 = side.api.read_c2(side.path(nexus), 3)
    with h5py.File(nexus, "r") as f:
        bins = list(f["/xpcs/twotime/processed_bins"][()])
        name = f"c2_{bins.index(4) + 1:05d}"
        upper = f[f"/xpcs/twotime/correlation_map/{name}"][()]
    iu = np.triu_indices(upper.shape[0])
    np.testing.assert_array_equal(c2[iu], upper[iu])
    np.testing.assert_array_equal(c2, c2.T)
    small = side.api.read_c2(side.path(nexus), 3, max_size=16)
    assert small.shape[0] <= 16
    assert small.dtype == np.float32
    with pytest.raises(KeyError, match="0"):
        side.api.read_c2(side.path(nexus), 2)


def test_writes_go_to_the_seed_layout_and_leave_nexus_alone(side: Side, nexus: Path) -> None:
    before = {top: _digest(nexus, top) for top in ("/xpcs", "/entry")}
    geo = side.api.read_geometry_metadata(side.path(nexus))
    mask = MaskSchema(mask=np.ones(geo.shape, np.uint8), metadata=geo, description="nexus")
    side.api.write_mask(side.path(nexus), mask)
    roi = _stored(nexus, "/xpcs/qmap/dynamic_roi_map")
    n = int(roi.max())
    part = PartitionSchema(
        partition_map=roi,
        num_pts=n,
        val_list=np.arange(1, n + 1, dtype=np.float64),
        num_list=np.bincount(roi.ravel(), minlength=n + 1)[1:],
        metadata=geo,
    )
    side.api.write_partition(side.path(nexus), part)
    assert side.api.read_mask(side.path(nexus)) == mask
    assert side.api.read_partition(side.path(nexus)) == part
    np.testing.assert_array_equal(_stored(nexus, "/simplemask/mask/mask"), mask.mask)
    assert {top: _digest(nexus, top) for top in ("/xpcs", "/entry")} == before
    # The result file still reads as an 8-ID-I file.
    assert side.api.read_qmap(side.path(nexus)).sqmap_unit == "A^-1"

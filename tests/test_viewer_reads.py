"""The viewer reads (SAXS 2-D and 1-D, intensity vs time, two-time G2, G2 phi, metadata) on
both sides, and the async client: values equal what h5py reads from the source datasets,
the errors and ``validate=`` behave as for the other reads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io.client import AsyncRemoteHDF5Facade
from xpcs_io.errors import HDF5ValidationError
from xpcs_io.schemas import G2Data, IntensityTimeData, Saxs1DData, Saxs2DData
from xpcs_io.tools.demo import DemoSpec, write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file
from xpcs_io.tools.demo_legacy8idi import (
    write_boost_file,
    write_eigen_file,
    write_hadoop_file,
    write_matlab_file,
)

from .conftest import Server, Side

PER_FRAME_NEXUS = 1e-3 * 2 * 3  # frame_time x stride_frame x avg_frame of the demo writer


def _h5(path: Path, name: str) -> npt.NDArray[Any]:
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()])


def test_nexus_reads_equal_the_stored_datasets(side: Side, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "nexus.hdf", n_phi=2)
    p = side.path(path)
    saxs2d = side.api.read_saxs_2d(p)
    assert isinstance(saxs2d, Saxs2DData)
    np.testing.assert_array_equal(saxs2d.image, _h5(path, "/xpcs/temporal_mean/scattering_2d")[0])
    assert saxs2d.image.dtype == np.float32
    assert saxs2d.unit == "a.u."

    saxs1d = side.api.read_saxs_1d(p)
    assert isinstance(saxs1d, Saxs1DData)
    np.testing.assert_array_equal(
        saxs1d.intensity, _h5(path, "/xpcs/temporal_mean/scattering_1d").reshape(-1)
    )
    np.testing.assert_array_equal(
        saxs1d.intensity_segments, _h5(path, "/xpcs/temporal_mean/scattering_1d_segments")
    )
    mapping = _h5(path, "/xpcs/qmap/static_index_mapping")
    v0, v1 = _h5(path, "/xpcs/qmap/static_v_list_dim0"), _h5(path, "/xpcs/qmap/static_v_list_dim1")
    np.testing.assert_array_equal(saxs1d.q, v0[mapping // 2])
    assert saxs1d.phi is not None
    np.testing.assert_array_equal(saxs1d.phi, v1[mapping % 2])

    intt = side.api.read_intensity_time(p)
    assert isinstance(intt, IntensityTimeData)
    stored = _h5(path, "/xpcs/spatial_mean/intensity_vs_time")
    np.testing.assert_array_equal(intt.intensity, stored[1])
    np.testing.assert_allclose(intt.time, np.arange(stored.shape[1]) * PER_FRAME_NEXUS)

    g2 = side.api.read_g2_data(p)
    dmap = _h5(path, "/xpcs/qmap/dynamic_index_mapping")
    dphi = _h5(path, "/xpcs/qmap/dynamic_v_list_dim1")
    assert g2.phi_values is not None
    np.testing.assert_array_equal(g2.phi_values, dphi[dmap % 2])
    # Columns sharing a q are told apart by phi.
    pairs = set(zip(g2.q_values.tolist(), g2.phi_values.tolist(), strict=True))
    assert len(pairs) == g2.q_values.size > np.unique(g2.q_values).size
    one = side.api.read_g2_data(p, q_idx=3)
    assert one.phi_values is not None
    assert one.phi_values.tolist() == [g2.phi_values[3]]

    tt = side.api.read_twotime_g2(p)
    np.testing.assert_array_equal(tt.g2, _h5(path, "/xpcs/twotime/normalized_g2"))
    labels = _h5(path, "/xpcs/twotime/processed_bins")
    np.testing.assert_array_equal(tt.q_values, g2.q_values[labels - 1])
    assert tt.phi_values is not None
    np.testing.assert_array_equal(tt.phi_values, g2.phi_values[labels - 1])
    np.testing.assert_allclose(tt.delay_times, np.arange(1, tt.g2.shape[0] + 1) * PER_FRAME_NEXUS)
    assert np.isnan(tt.g2_err).all()
    single = side.api.read_twotime_g2(p, q_idx=int(labels[1]) - 1)
    np.testing.assert_array_equal(single.g2, tt.g2[:, 1:2])
    with pytest.raises(KeyError, match="available q_idx"):
        side.api.read_twotime_g2(p, q_idx=1)

    meta = side.api.read_metadata(p)
    assert meta["layout"] == "aps8idi"
    assert meta["analysis_type"] == "Multitau+Twotime"
    assert meta["energy_keV"] == pytest.approx(10.0)
    assert meta["frame_time_s"] == pytest.approx(1e-3)
    assert meta["detector_distance_mm"] == pytest.approx(5000.0)
    assert meta["sample_name"] == "silica-50nm"
    assert meta["entry/instrument/detector_1/frame_time@unit"] == "s"
    assert meta["xpcs/multitau/config/stride_frame"] == 2


def test_two_time_only_nexus_file(side: Side, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "tt.hdf", n_delay=0, twotime_bins=(0, 2, 5))
    p = side.path(path)
    with pytest.raises(KeyError, match="read_twotime_g2"):
        side.api.read_g2_data(p)
    tt = side.api.read_twotime_g2(p)
    assert tt.g2.shape[1] == 3
    np.testing.assert_array_equal(tt.g2, _h5(path, "/xpcs/twotime/normalized_g2"))
    assert side.api.read_metadata(p)["analysis_type"] == "Twotime"


LEGACY = {
    "hadoop": lambda d: write_hadoop_file(d / "hadoop.hdf"),
    "matlab": lambda d: write_matlab_file(d / "matlab.hdf"),
    "eigen-transposed": lambda d: write_eigen_file(d / "eigen.hdf", transposed=True),
    "boost": lambda d: write_boost_file(d / "boost.hdf"),
}


@pytest.mark.parametrize("era", list(LEGACY))
def test_legacy_reads_equal_the_stored_datasets(side: Side, workdir: Path, era: str) -> None:
    path, truth = LEGACY[era](workdir)
    p = side.path(path)
    saxs2d = side.api.read_saxs_2d(p)
    raw = _h5(path, "/exchange/pixelSum")
    stored = raw.reshape(raw.shape[-2:])
    expected = stored if tuple(stored.shape) == tuple(truth.shape) else stored.T
    np.testing.assert_array_equal(saxs2d.image, expected)
    assert saxs2d.image.shape == truth.shape

    saxs1d = side.api.read_saxs_1d(p)
    sq = _h5(path, "/xpcs/sqlist").reshape(-1)
    keep = ~np.isnan(sq)
    total = _h5(path, "/exchange/partition-mean-total").reshape(-1)
    partial = _h5(path, "/exchange/partition-mean-partial")
    if total.size == sq.size:  # the whole grid: empty cells left out
        total, partial = total[keep], partial[:, keep]
    np.testing.assert_array_equal(saxs1d.q, sq[keep])
    np.testing.assert_array_equal(saxs1d.intensity, total)
    np.testing.assert_array_equal(saxs1d.intensity_segments, partial)
    assert saxs1d.phi is None  # one static phi sector in these files

    intt = side.api.read_intensity_time(p)
    frame_sum = _h5(path, "/exchange/frameSum")
    np.testing.assert_array_equal(intt.intensity, frame_sum[1])
    per_frame = truth.delay_s[0] / truth.tau[0]
    np.testing.assert_allclose(intt.time, np.arange(frame_sum.shape[1]) * per_frame)

    g2 = side.api.read_g2_data(p)
    if era in ("matlab", "boost"):  # two phi sectors
        assert g2.phi_values is not None
        np.testing.assert_allclose(g2.phi_values, truth.phi_bins, rtol=1e-12)
    else:
        assert g2.phi_values is None

    meta = side.api.read_metadata(p)
    assert meta["layout"] == "aps8idi-legacy"
    assert meta["energy_keV"] == pytest.approx(10.0)
    assert meta["measurement/instrument/detector/distance"] == pytest.approx(5000.0)


def test_legacy_two_time_file(side: Side, workdir: Path) -> None:
    path, truth = write_boost_file(workdir / "L_Twotime.hdf", twotime=True)
    p = side.path(path)
    with pytest.raises(KeyError, match="read_twotime_g2") as exc:
        side.api.read_g2_data(p)
    assert "norm-0-g2" in str(exc.value)
    tt = side.api.read_twotime_g2(p)
    np.testing.assert_array_equal(tt.g2, _h5(path, "/exchange/g2full"))
    np.testing.assert_allclose(tt.q_values, truth.q_bins[[1, 4]], rtol=1e-12)
    assert tt.phi_values is not None
    np.testing.assert_allclose(tt.phi_values, truth.phi_bins[[1, 4]], rtol=1e-12)
    assert tt.delay_times[0] == 0.0  # g2full row 0 is lag 0
    assert side.api.read_metadata(p)["analysis_type"] == "Twotime"


def test_errors_match_the_other_reads(side: Side, workdir: Path) -> None:
    native = write_native_file(workdir / "native.hdf5", DemoSpec(shape=(16, 12), n_q=3))
    with pytest.raises(KeyError, match="layout native"):
        side.api.read_saxs_2d(side.path(native))
    assert side.api.read_metadata(side.path(native))["layout"] == "native"
    with pytest.raises(FileNotFoundError):
        side.api.read_saxs_1d(side.path(workdir / "missing.hdf"))
    with pytest.raises(ValueError, match="layout"):
        side.api.read_intensity_time(side.path(native), layout="nonsense")
    rooted = side.make(root=side.root) if side.name == "local" else side.api
    with pytest.raises(PermissionError):
        rooted.read_saxs_2d("../outside.hdf")


def test_validate_false_returns_what_is_stored(side: Side, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "bad.hdf")
    with h5py.File(path, "a") as f:
        # A decreasing clock: broken time axis, kept as stored when asked.
        f["/entry/instrument/detector_1/frame_time"][()] = -1e-3
    p = side.path(path)
    with pytest.raises(HDF5ValidationError, match="time"):
        side.api.read_intensity_time(p)
    unchecked = side.make(validate=False).read_intensity_time(p)
    assert unchecked.time[1] < 0


def test_g2_phi_values_round_trip() -> None:
    g2 = G2Data(
        g2=np.ones((2, 1)),
        g2_err=np.zeros((2, 1)),
        delay_times=np.array([1.0, 2.0]),
        q_values=np.array([0.1]),
    )
    assert g2.to_dict()["phi_values"] is None
    assert G2Data.from_dict({k: v for k, v in g2.to_dict().items() if k != "phi_values"}) == g2
    with_phi = G2Data.from_dict({**g2.to_dict(), "phi_values": [45.0]})
    assert with_phi.phi_values is not None
    assert with_phi.phi_values.tolist() == [45.0]
    with pytest.raises(ValueError, match="phi_values"):
        G2Data.from_dict({**g2.to_dict(), "phi_values": [45.0, 90.0]})
    with pytest.raises(ValueError, match="phi_values"):
        G2Data.from_dict({**g2.to_dict(), "phi_values": [float("nan")]})


def test_async_client(server: Server, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "async.hdf")
    rel = path.relative_to(server.root).as_posix()

    async def run() -> tuple[Any, ...]:
        async with AsyncRemoteHDF5Facade(server.url) as api:
            return (
                await api.read_saxs_2d(rel),
                await api.read_saxs_1d(rel),
                await api.read_intensity_time(rel),
                await api.read_twotime_g2(rel),
                await api.read_metadata(rel),
                await api.read_dataset(rel, "/xpcs/multitau/delay_list", "0:4"),
                await api.read_tree(rel),
            )

    saxs2d, saxs1d, intt, tt, meta, delays, tree = asyncio.run(run())
    np.testing.assert_array_equal(saxs2d.image, _h5(path, "/xpcs/temporal_mean/scattering_2d")[0])
    np.testing.assert_array_equal(
        saxs1d.intensity, _h5(path, "/xpcs/temporal_mean/scattering_1d").reshape(-1)
    )
    np.testing.assert_array_equal(
        intt.intensity, _h5(path, "/xpcs/spatial_mean/intensity_vs_time")[1]
    )
    np.testing.assert_array_equal(tt.g2, _h5(path, "/xpcs/twotime/normalized_g2"))
    assert meta["layout"] == "aps8idi"
    np.testing.assert_array_equal(delays, _h5(path, "/xpcs/multitau/delay_list")[:4])
    assert {c["name"] for c in tree["children"]} == {"entry", "xpcs"}


def test_huge_declared_dataset_is_refused_before_reading(side: Side, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "huge.hdf")
    with h5py.File(path, "a") as f:
        del f["/xpcs/temporal_mean/scattering_2d"]
        # 149 GiB declared, chunked and never written: the file stays tiny.
        f.create_dataset(
            "/xpcs/temporal_mean/scattering_2d",
            shape=(1, 200_000, 200_000),
            dtype="f4",
            chunks=(1, 256, 256),
        )
    with pytest.raises(HDF5ValidationError, match="read limit"):
        side.api.read_saxs_2d(side.path(path))
    assert side.api.read_saxs_1d(side.path(path)).q.size > 0  # the rest of the file reads

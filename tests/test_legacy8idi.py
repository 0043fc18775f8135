"""The legacy APS 8-ID-I layout, every producer era and quirk, on files the tests write;
values checked against h5py reads of the source datasets and hand computations."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.tools.demo_legacy8idi import (
    LegacyTruth,
    write_boost_file,
    write_eigen_file,
    write_hadoop_file,
    write_matlab_file,
)

DET = "/measurement/instrument/detector"
ACQ = "/measurement/instrument/acquisition"

Writer = Callable[..., tuple[Path, LegacyTruth]]
ERAS: dict[str, tuple[Writer, dict[str, Any]]] = {
    "hadoop-0.5": (write_hadoop_file, {}),
    "hadoop-0.4-no-version": (write_hadoop_file, {"version": None}),
    "matlab": (write_matlab_file, {}),
    "matlab-second-analysis": (write_matlab_file, {"second_analysis": True}),
    "eigen": (write_eigen_file, {}),
    "eigen-transposed": (write_eigen_file, {"transposed": True}),
    "eigen-single-q": (write_eigen_file, {"single_q": True}),
    "boost": (write_boost_file, {}),
}


@pytest.fixture
def facade() -> Iterator[HDF5Facade]:
    f = HDF5Facade(pool=HDF5ConnectionPool(max_size=4))
    yield f
    f.pool.shutdown()


@pytest.fixture(params=list(ERAS))
def era(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, LegacyTruth]:
    writer, kwargs = ERAS[request.param]
    path, truth = writer(tmp_path / f"{request.param}.hdf", **kwargs)
    return request.param, path, truth


def _get(path: Path, name: str) -> npt.NDArray[Any]:
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()])


def _num(path: Path, name: str) -> float:
    return float(_get(path, name).reshape(()))


def _bc(path: Path) -> tuple[float, float]:
    """The effective beam centre by hand from the stored values (stage correction)."""
    pix_x, pix_y = _num(path, f"{DET}/x_pixel_size"), _num(path, f"{DET}/y_pixel_size")
    bcx = _num(path, f"{ACQ}/beam_center_x")
    bcx += (_num(path, f"{ACQ}/stage_x") - _num(path, f"{ACQ}/stage_zero_x")) / pix_x
    bcy = _num(path, f"{ACQ}/beam_center_y")
    bcy += (_num(path, f"{ACQ}/stage_z") - _num(path, f"{ACQ}/stage_zero_z")) / pix_y
    return bcx, bcy


def _maybe_t(stored: npt.NDArray[Any], shape: tuple[int, int]) -> npt.NDArray[Any]:
    stored = stored.reshape(stored.shape[-2:])
    return stored if tuple(stored.shape) == shape else stored.T


def test_geometry(facade: HDF5Facade, era: tuple[str, Path, LegacyTruth]) -> None:
    _, path, truth = era
    geo = facade.read_geometry_metadata(path)
    bcx, bcy = _bc(path)
    assert (geo.bcx, geo.bcy) == pytest.approx((bcx, bcy), rel=1e-12)
    assert (geo.bcx, geo.bcy) == pytest.approx((truth.bcx, truth.bcy), rel=1e-9)
    assert geo.det_dist == _num(path, f"{DET}/distance")  # mm as stored
    assert geo.pix_dim == _num(path, f"{DET}/x_pixel_size")  # mm as stored
    energy = _num(path, "/measurement/instrument/source_begin/energy")
    assert geo.lambda_ == pytest.approx(12.398 / energy)
    assert geo.shape == truth.shape


def test_qmap(facade: HDF5Facade, era: tuple[str, Path, LegacyTruth]) -> None:
    _, path, truth = era
    qmap = facade.read_qmap(path)
    assert (qmap.sqmap_unit, qmap.dqmap_unit, qmap.phis_unit) == ("A^-1", "A^-1", "deg")
    assert qmap.sqmap.shape == truth.shape
    bcx, bcy = _bc(path)
    k0 = 2 * math.pi / (12.398 / _num(path, "/measurement/instrument/source_begin/energy"))
    dist, pix = _num(path, f"{DET}/distance"), _num(path, f"{DET}/x_pixel_size")
    h, w = truth.shape
    for row, col in ((0, 0), (h - 1, w - 1), (h // 2, 3), (5, w // 2)):
        r = pix * math.hypot(col - bcx, row - bcy)
        q = 2 * k0 * math.sin(math.atan(r / dist) / 2)
        assert float(qmap.sqmap[row, col]) == pytest.approx(q, rel=1e-6)
        phi = math.degrees(-math.atan2(row - bcy, col - bcx))
        assert float(qmap.phis[row, col]) == pytest.approx(phi, rel=1e-6, abs=1e-4)
    stored = _get(path, "/xpcs/dqmap")
    assert qmap.partition_map is not None
    assert qmap.mask is not None
    assert qmap.partition_map.dtype == stored.dtype
    np.testing.assert_array_equal(qmap.partition_map, _maybe_t(stored, truth.shape))
    np.testing.assert_array_equal(qmap.partition_map, truth.labels)
    mask = _get(path, "/xpcs/mask")
    assert qmap.mask.dtype == mask.dtype  # uint8, or bool from pySimpleMask
    np.testing.assert_array_equal(qmap.mask, _maybe_t(mask, truth.shape))


def test_g2(facade: HDF5Facade, era: tuple[str, Path, LegacyTruth]) -> None:
    _, path, truth = era
    g2 = facade.read_g2_data(path)
    dq = _get(path, "/xpcs/dqlist").ravel()
    q_bins = dq[~np.isnan(dq)]  # label L <-> the L-th non-NaN entry
    raw = _get(path, "/exchange/norm-0-g2")
    n_tau = int(raw.shape[0])
    stored = raw.reshape(raw.shape[:2])  # Hadoop: (n_tau, n_q, 1)
    assert g2.g2.shape == (n_tau, q_bins.size)
    assert g2.g2.dtype == stored.dtype
    np.testing.assert_array_equal(g2.g2, stored[:, : q_bins.size])
    err = _get(path, "/exchange/norm-0-stderr")
    np.testing.assert_array_equal(g2.g2_err, err.reshape(err.shape[:2])[:, : q_bins.size])
    np.testing.assert_array_equal(g2.q_values, q_bins)
    np.testing.assert_allclose(g2.q_values, truth.q_bins, rtol=1e-12)
    tau = _get(path, "/exchange/tau").ravel().astype(np.float64)
    avg = _num(path, "/xpcs/avg_frames")
    stride = _num(path, "/xpcs/stride_frames")
    period = _num(path, f"{DET}/exposure_period")
    np.testing.assert_allclose(g2.delay_times, tau * period * avg * stride, rtol=1e-12)
    np.testing.assert_allclose(g2.delay_times, truth.delay_s, rtol=1e-12)


def test_g2_one_column(facade: HDF5Facade, era: tuple[str, Path, LegacyTruth]) -> None:
    _, path, truth = era
    k = len(truth.q_bins) - 1
    one = facade.read_g2_data(path, q_idx=k)
    full = facade.read_g2_data(path)
    np.testing.assert_array_equal(one.g2, full.g2[:, k : k + 1])
    assert one.q_values.tolist() == [full.q_values[k]]
    with pytest.raises(IndexError):
        facade.read_g2_data(path, q_idx=len(truth.q_bins))


def test_c2_every_stored_map(facade: HDF5Facade, tmp_path: Path) -> None:
    cases: list[tuple[Writer, dict[str, Any], str, dict[int, str]]] = [
        (write_eigen_file, {}, "/exchange/C2T_all", {k: f"g2_{k + 1:05d}" for k in range(5)}),
        (write_hadoop_file, {}, "/exchange/TwoTime", {0: "C_0001", 2: "C_0003"}),
        (write_boost_file, {"twotime": True}, "/exchange/C2T_all", {1: "g2_00001", 4: "g2_00002"}),
    ]
    for writer, kwargs, group, names in cases:
        path, truth = writer(tmp_path / f"{writer.__name__}_Twotime.hdf", **kwargs)
        for k, name in names.items():
            upper = _get(path, f"{group}/{name}")
            upper = upper.reshape(upper.shape[:2]).astype(np.float64)
            full = np.triu(upper) + np.triu(upper, 1).T
            c2 = facade.read_c2(path, k)
            assert c2.dtype == np.float32
            np.testing.assert_array_equal(c2, full.astype(np.float32))
            np.testing.assert_allclose(c2, truth.c2[k], rtol=1e-6)
            assert facade.read_c2(path, k, max_size=4).shape[0] <= 4
        missing = next(k for k in range(len(truth.q_bins) + 1) if k not in names)
        with pytest.raises(KeyError, match=r"available q_idx: \[") as exc:
            facade.read_c2(path, missing)
        assert "aps8idi-legacy" in str(exc.value)


def test_twotime_result_has_no_multitau_g2(facade: HDF5Facade, tmp_path: Path) -> None:
    path, _ = write_boost_file(tmp_path / "A_Twotime.hdf", twotime=True)
    with pytest.raises(KeyError, match="norm-0-g2") as exc:
        facade.read_g2_data(path)
    assert "Twotime" in str(exc.value)
    assert "aps8idi-legacy" in str(exc.value)
    assert facade.read_qmap(path).partition_map is not None


def test_detection_and_forcing(facade: HDF5Facade, tmp_path: Path) -> None:
    path, _ = write_eigen_file(tmp_path / "e.hdf")
    forced = facade.read_g2_data(path, layout="aps8idi-legacy")
    np.testing.assert_array_equal(forced.g2, facade.read_g2_data(path).g2)
    with pytest.raises(KeyError, match="layout aps8idi"):
        facade.read_g2_data(path, layout="aps8idi")
    with pytest.raises(KeyError, match="layout native"):
        facade.read_qmap(path, layout="native")
    with pytest.raises(ValueError, match="aps8idi-legacy"):
        facade.read_qmap(path, layout="legacy")


def test_legacy_marker_wins_over_native_groups(facade: HDF5Facade, tmp_path: Path) -> None:
    """The viewer checks /xpcs/Version first: a file with both reads as legacy."""
    path, truth = write_eigen_file(tmp_path / "both.hdf")
    with h5py.File(path, "a") as f:
        f["/xpcs/g2/g2"] = np.ones((3, 2), np.float32)
    assert facade.read_g2_data(path).g2.shape == truth.g2.shape


def test_first_analysis_is_read(facade: HDF5Facade, tmp_path: Path) -> None:
    path, truth = write_matlab_file(tmp_path / "m.hdf", second_analysis=True)
    g2 = facade.read_g2_data(path)
    assert g2.g2.shape == truth.g2.shape
    assert not np.any(g2.g2 == 9.0)  # /exchange_1 holds 9s


def test_strings_with_blanks_and_fixed_length(tmp_path: Path) -> None:
    path, _ = write_matlab_file(tmp_path / "m.hdf")
    assert _get(path, "/xpcs/output_data").tobytes().endswith(b"    ")
    from xpcs_io.h5access import Locator
    from xpcs_io.layouts import legacy8idi

    with h5py.File(path, "r") as f:
        loc = Locator(f, "m.hdf")
        assert legacy8idi.result_group(loc) == "/exchange"
        assert legacy8idi.analysis_type(loc) == "Multitau"
        q, phi = legacy8idi.dynamic_bins(loc)
    dphi = _get(path, "/xpcs/dphilist").ravel()
    np.testing.assert_array_equal(phi, dphi[~np.isnan(dphi)])
    assert q.size == phi.size == 7  # a 4 x 2 grid with one empty cell


def _read_all(facade: HDF5Facade, path: Path) -> None:
    facade.read_qmap(path)
    facade.read_g2_data(path)


def _edit(path: Path, fn: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


def _replace(name: str, value: Any) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[name]
        f[name] = value

    return edit


def test_three_d_maps_and_zero_d_counts(facade: HDF5Facade, tmp_path: Path) -> None:
    path, truth = write_eigen_file(tmp_path / "e.hdf")
    _edit(path, _replace("/xpcs/dqmap", truth.labels[None].astype(np.int64)))
    _edit(path, _replace("/xpcs/mask", truth.mask[None].astype(bool)))
    _edit(path, _replace("/xpcs/avg_frames", np.int64(1)))
    _edit(path, _replace("/xpcs/stride_frames", np.array([2], dtype=np.int64)))
    qmap = facade.read_qmap(path)
    np.testing.assert_array_equal(qmap.partition_map, truth.labels)
    np.testing.assert_array_equal(qmap.mask, truth.mask.astype(bool))
    np.testing.assert_allclose(facade.read_g2_data(path).delay_times, truth.delay_s)


def test_float_counts_and_float_label_map(facade: HDF5Facade, tmp_path: Path) -> None:
    """Matlab doubles: counts as float64 (1, 1), the label map as float64 whole numbers."""
    path, truth = write_eigen_file(tmp_path / "e.hdf")
    _edit(path, _replace("/xpcs/dqmap", truth.labels.astype(np.float64)))
    _edit(path, _replace("/xpcs/stride_frames", np.array([[2.0]])))
    qmap = facade.read_qmap(path)
    assert qmap.partition_map is not None
    assert qmap.partition_map.dtype == np.uint32
    np.testing.assert_array_equal(qmap.partition_map, truth.labels)
    np.testing.assert_allclose(facade.read_g2_data(path).delay_times, truth.delay_s)
    facade.clear_pool()  # the pool holds the file open read-only
    _edit(path, _replace("/xpcs/dqmap", truth.labels + 0.5))
    with pytest.raises(HDF5ValidationError, match="/xpcs/dqmap: expected integer labels"):
        facade.read_qmap(path)


def test_without_dqlist_q_is_each_labels_mean_pixel_q(facade: HDF5Facade, tmp_path: Path) -> None:
    path, truth = write_eigen_file(tmp_path / "e.hdf")
    _edit(path, lambda f: f.__delitem__("/xpcs/dqlist"))
    g2 = facade.read_g2_data(path)
    qmap = facade.read_qmap(path)
    labels = truth.labels
    want = [float(qmap.sqmap[labels == lb].astype(np.float64).mean()) for lb in range(1, 6)]
    np.testing.assert_allclose(g2.q_values, want, rtol=1e-6)
    np.testing.assert_allclose(g2.q_values, truth.q_bins, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "/xpcs/mask",
            np.ones((3, 36, 44), np.uint8),
            "expected shape (36, 44) (H, W), found shape (3, 36, 44)",
        ),
        ("/xpcs/dqlist", np.ones((2, 3)), "found shape (2, 3)"),
        ("/exchange/norm-0-g2", np.ones((20, 5, 2), np.float32), "found shape (20, 5, 2)"),
        ("/exchange/tau", np.arange(1, 5)[None], "expected 20 delays"),
        ("/xpcs/avg_frames", np.ones((1, 2)), "found shape (1, 2)"),
        ("/measurement/instrument/detector/distance", np.bytes_(b"far"), "found dtype |S3"),
    ],
)
def test_wrong_shape_or_dtype_names_file_dataset_and_shapes(
    facade: HDF5Facade, tmp_path: Path, name: str, value: Any, expected: str
) -> None:
    path, _ = write_eigen_file(tmp_path / "bad.hdf")
    _edit(path, _replace(name, value))
    with pytest.raises(HDF5ValidationError) as exc:
        _read_all(facade, path)
    message = str(exc.value)
    assert "bad.hdf" in message
    assert name in message
    assert expected in message


@pytest.mark.parametrize(
    "name",
    [
        "/measurement/instrument/detector/exposure_period",
        "/measurement/instrument/source_begin/energy",
        "/exchange/tau",
        "/xpcs/dqmap",
    ],
)
def test_missing_essential_dataset_names_it_and_the_layout(
    facade: HDF5Facade, tmp_path: Path, name: str
) -> None:
    path, _ = write_eigen_file(tmp_path / "e.hdf")
    _edit(path, lambda f: f.__delitem__(name))
    with pytest.raises(KeyError) as exc:
        _read_all(facade, path)
    assert name in str(exc.value)
    assert "layout aps8idi-legacy" in str(exc.value)

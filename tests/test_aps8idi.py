"""The APS 8-ID-I NeXus result reader against real files written by ``write_aps8idi_file``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.h5access import Locator
from xpcs_io.layouts import aps8idi
from xpcs_io.tools.demo import write_native_file
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

QMAP = "/xpcs/qmap"
SHAPE = (128, 160)
N_PHI = 2
N_FRAMES = 64

Opener = Callable[..., Any]


@pytest.fixture(scope="module")
def result_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo file, shared read-only by the tests that do not edit it."""
    return write_aps8idi_file(tmp_path_factory.mktemp("a8") / "result.hdf5")


@contextmanager
def located(path: Path) -> Iterator[Locator]:
    with h5py.File(path, "r") as f:
        yield Locator(f, "result.hdf5")


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A demo file a test may edit."""
    return write_aps8idi_file(tmp_path / "result.hdf5")


def _edit(path: Path, fn: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f: h5py.File, hdf5_path: str, value: Any, unit: str | None = None) -> None:
    del f[hdf5_path]
    f[hdf5_path] = value
    if unit is not None:
        f[hdf5_path].attrs["unit"] = unit


def _mirrored(upper: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """The symmetric matrix whose upper triangle (diagonal included) is ``upper``'s."""
    u = np.triu(upper.astype(np.float64))
    return u + np.triu(u, 1).T


# ---------------------------------------------------------------- detection


def test_is_aps8idi_on_result_and_native_files(result_file: Path, tmp_path: Path) -> None:
    with located(result_file) as loc:
        assert aps8idi.is_aps8idi(loc)
    native = write_native_file(tmp_path / "native.hdf5")
    with located(native) as loc:
        assert not aps8idi.is_aps8idi(loc)


def test_is_aps8idi_needs_results_and_accepts_either_kind(tmp_path: Path) -> None:
    twotime_only = write_aps8idi_file(tmp_path / "tt.hdf5", n_delay=0)
    multitau_only = write_aps8idi_file(tmp_path / "mt.hdf5", twotime_bins=())
    neither = write_aps8idi_file(tmp_path / "none.hdf5", n_delay=0, twotime_bins=())
    for path, expected in ((twotime_only, True), (multitau_only, True), (neither, False)):
        with located(path) as loc:
            assert aps8idi.is_aps8idi(loc) is expected
    with located(multitau_only) as loc:
        assert aps8idi.list_c2_bins(loc) == []


# ---------------------------------------------------------------- geometry and units


def test_geometry_defaults_metres_and_kev(result_file: Path) -> None:
    with located(result_file) as loc:
        geo = aps8idi.read_geometry(loc)
        f = loc.file
        assert geo.bcx == f[f"{QMAP}/beam_center_x"][()]
        assert geo.bcy == f[f"{QMAP}/beam_center_y"][()]
    geo.validate()
    assert geo.det_dist == pytest.approx(5000.0)  # 5 m
    assert geo.pix_dim == pytest.approx(0.075)  # 75 um
    assert geo.lambda_ == pytest.approx(12.398 / 10.0)  # 10 keV
    assert geo.shape == SHAPE


@pytest.mark.parametrize(
    ("name", "value", "unit", "field", "expected"),
    [
        ("detector_distance", 5000.0, "mm", "det_dist", 5000.0),
        ("detector_distance", 5.0, "m", "det_dist", 5000.0),
        ("detector_distance", 500.0, "cm", "det_dist", 5000.0),
        ("pixel_size", 75.0, "um", "pix_dim", 0.075),
        ("pixel_size", 75.0, "µm", "pix_dim", 0.075),
        ("pixel_size", 75.0, "micron", "pix_dim", 0.075),
        ("pixel_size", 0.075, "mm", "pix_dim", 0.075),
        ("pixel_size", 75000.0, "nm", "pix_dim", 0.075),
        ("energy", 8000.0, "eV", "lambda_", 12.398 / 8.0),
        ("energy", 8.0, "keV", "lambda_", 12.398 / 8.0),
        ("energy", 8.0, None, "lambda_", 12.398 / 8.0),
        ("pixel_size", 1.0, "furlong", None, None),
        ("energy", 10.0, "furlong", None, None),
    ],
)
def test_unit_attributes(
    fresh: Path, name: str, value: float, unit: str | None, field: str | None, expected: float
) -> None:
    _edit(fresh, lambda f: _replace(f, f"{QMAP}/{name}", value, unit))
    with located(fresh) as loc:
        if field is None:
            with pytest.raises(HDF5ValidationError) as exc:
                aps8idi.read_geometry(loc)
            assert f"{QMAP}/{name}" in str(exc.value)
            assert repr(unit) in str(exc.value)
            return
        geo = aps8idi.read_geometry(loc)
    geo.validate()
    assert getattr(geo, field) == pytest.approx(expected)


def test_units_plural_attribute_is_honoured(fresh: Path) -> None:
    def edit(f: h5py.File) -> None:
        _replace(f, f"{QMAP}/detector_distance", 4.0)
        f[f"{QMAP}/detector_distance"].attrs["units"] = "m"

    _edit(fresh, edit)
    with located(fresh) as loc:
        assert aps8idi.read_geometry(loc).det_dist == pytest.approx(4000.0)


def test_geometry_fallbacks_to_nexus_entry(fresh: Path) -> None:
    def edit(f: h5py.File) -> None:
        del f[f"{QMAP}/pixel_size"], f[f"{QMAP}/energy"]
        _replace(f, "/entry/instrument/detector_1/x_pixel_size", 55.0, "um")
        _replace(f, "/entry/instrument/incident_beam/incident_energy", 7350.0, "eV")

    _edit(fresh, edit)
    with located(fresh) as loc:
        geo = aps8idi.read_geometry(loc)
    assert geo.pix_dim == pytest.approx(0.055)
    assert geo.lambda_ == pytest.approx(12.398 / 7.35)


def test_beam_centre_in_metres_is_refused(fresh: Path) -> None:
    _edit(fresh, lambda f: f[f"{QMAP}/beam_center_x"].attrs.create("unit", "m"))
    with located(fresh) as loc, pytest.raises(HDF5ValidationError, match="beam_center_x"):
        aps8idi.read_geometry(loc)


def test_missing_geometry_names_the_path(fresh: Path) -> None:
    def edit(f: h5py.File) -> None:
        del f[f"{QMAP}/detector_distance"]

    _edit(fresh, edit)
    with located(fresh) as loc, pytest.raises(KeyError, match="/xpcs/qmap/detector_distance"):
        aps8idi.read_geometry(loc)


# ---------------------------------------------------------------- q-map


def _hand_q_phi(row: int, col: int, bcx: float, bcy: float) -> tuple[float, float]:
    """q (A^-1) and phi (deg) of one pixel from the stored metres/keV, in plain Python."""
    r_m = 75e-6 * math.hypot(col - bcx, row - bcy)
    q = 4 * math.pi / (12.398 / 10.0) * math.sin(math.atan(r_m / 5.0) / 2)
    return q, math.degrees(-math.atan2(row - bcy, col - bcx))


def test_qmap_formula_against_hand_values(result_file: Path) -> None:
    with located(result_file) as loc:
        qmap = aps8idi.read_qmap(loc)
        bcx = float(loc.file[f"{QMAP}/beam_center_x"][()])
        bcy = float(loc.file[f"{QMAP}/beam_center_y"][()])
    qmap.validate()
    assert (qmap.sqmap_unit, qmap.dqmap_unit, qmap.phis_unit) == ("A^-1", "A^-1", "deg")
    assert qmap.sqmap.dtype == np.float32
    assert np.array_equal(qmap.sqmap, qmap.dqmap)
    for row, col in ((0, 0), (127, 159), (57, 88), (100, 20)):
        q, phi = _hand_q_phi(row, col, bcx, bcy)
        assert float(qmap.sqmap[row, col]) == pytest.approx(q, rel=1e-6)
        assert float(qmap.phis[row, col]) == pytest.approx(phi, rel=1e-6, abs=1e-4)
    # (0, 0) is up and left of the beam: q ~ 7.6e-3 A^-1, phi in (90, 180) deg.
    assert 90 < float(qmap.phis[0, 0]) < 180


def test_qmap_keeps_stored_labels_and_mask(result_file: Path) -> None:
    with located(result_file) as loc:
        qmap = aps8idi.read_qmap(loc)
        roi = loc.file[f"{QMAP}/dynamic_roi_map"][()]
        mask = loc.file[f"{QMAP}/mask"][()]
    assert qmap.partition_map is not None
    assert qmap.mask is not None
    assert qmap.partition_map.dtype == np.uint8
    assert np.array_equal(qmap.partition_map, roi)
    assert qmap.mask.dtype == np.bool_
    assert np.array_equal(qmap.mask, mask)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_every_pixel_lies_in_the_bin_its_label_says(result_file: Path, kind: str) -> None:
    with located(result_file) as loc:
        qmap = aps8idi.read_qmap(loc)
        f = loc.file
        labels = f[f"{QMAP}/{kind}_roi_map"][()].astype(np.int64)
        mapping = f[f"{QMAP}/{kind}_index_mapping"][()]
        n_phi = int(f[f"{QMAP}/{kind}_num_pts"][1])
        q_centres = f[f"{QMAP}/{kind}_v_list_dim0"][()]
        phi_centres = f[f"{QMAP}/{kind}_v_list_dim1"][()]
    if kind == "dynamic":
        # The default geometry drops empty q-phi bins: labels are not the flat indices.
        assert not np.array_equal(mapping, np.arange(mapping.size))
    inside = labels > 0
    flat = mapping[labels[inside] - 1]
    q_half = (q_centres[1] - q_centres[0]) / 2
    phi_half = (phi_centres[1] - phi_centres[0]) / 2 if n_phi > 1 else 180.0
    tol = 1e-6  # the float32 maps against float64 bin edges
    q_off = np.abs(qmap.sqmap[inside] - q_centres[flat // n_phi])
    phi_off = np.abs(qmap.phis[inside] - phi_centres[flat % n_phi])
    assert q_off.max() <= q_half * (1 + tol)
    assert phi_off.max() <= phi_half * (1 + tol)


# ---------------------------------------------------------------- G2


def test_g2_full(result_file: Path) -> None:
    with located(result_file) as loc:
        g2 = aps8idi.read_g2(loc, None)
        f = loc.file
        stored = f["/xpcs/multitau/normalized_g2"][()]
        frames = f["/xpcs/multitau/delay_list"][()]
        mapping = f[f"{QMAP}/dynamic_index_mapping"][()]
        q_centres = f[f"{QMAP}/dynamic_v_list_dim0"][()]
    g2.validate()
    assert g2.g2.dtype == np.float32
    assert g2.g2_err.dtype == np.float32
    assert np.array_equal(g2.g2, stored)
    # 1 ms frames x stride 2 x avg 3: frame k is 6 ms.
    assert np.allclose(g2.delay_times, frames * 1e-3 * 2 * 3)
    assert g2.delay_times[0] == pytest.approx(0.006)
    assert np.array_equal(g2.q_values, q_centres[mapping // N_PHI])
    assert g2.q_values[1] == q_centres[1]  # label 2 is flat bin 2 (flat bin 1 is empty)


@pytest.mark.parametrize("k", [0, 1, 7, 21])
def test_g2_column_selection(result_file: Path, k: int) -> None:
    with located(result_file) as loc:
        full = aps8idi.read_g2(loc, None)
        one = aps8idi.read_g2(loc, k)
        stored = loc.file["/xpcs/multitau/normalized_g2"][()]
        stored_err = loc.file["/xpcs/multitau/normalized_g2_err"][()]
    one.validate()
    assert one.g2.shape == (34, 1)
    assert np.array_equal(one.g2, stored[:, k : k + 1])
    assert np.array_equal(one.g2_err, stored_err[:, k : k + 1])
    assert np.array_equal(one.q_values, full.q_values[k : k + 1])
    assert np.array_equal(one.delay_times, full.delay_times)


def test_g2_q_idx_reads_one_column_from_disk(
    result_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    selections: dict[str, Any] = {}
    original = Locator.read

    def spy(self: Locator, group_path: str, name: str, selection: Any = ()) -> Any:
        selections[name] = selection
        return original(self, group_path, name, selection)

    monkeypatch.setattr(Locator, "read", spy)
    with located(result_file) as loc:
        aps8idi.read_g2(loc, 5)
    assert selections["normalized_g2"] == np.s_[:, 5:6]
    assert selections["normalized_g2_err"] == np.s_[:, 5:6]


@pytest.mark.parametrize("bad", [22, 100, -1])
def test_g2_q_idx_out_of_range(result_file: Path, bad: int) -> None:
    with located(result_file) as loc, pytest.raises(IndexError) as exc:
        aps8idi.read_g2(loc, bad)
    assert f"q_idx {bad}" in str(exc.value)
    assert "0..21" in str(exc.value)


@pytest.mark.parametrize("bad", ["1", 1.0, True, [1]])
def test_g2_q_idx_wrong_type(result_file: Path, bad: Any) -> None:
    with located(result_file) as loc, pytest.raises(TypeError, match="q_idx"):
        aps8idi.read_g2(loc, bad)


def test_g2_numpy_integer_q_idx(result_file: Path) -> None:
    with located(result_file) as loc:
        k: Any = np.int64(3)
        assert aps8idi.read_g2(loc, k).g2.shape == (34, 1)


def test_g2_stride_and_avg_default_to_one(fresh: Path) -> None:
    def edit(f: h5py.File) -> None:
        del f["/xpcs/multitau/config"]

    _edit(fresh, edit)
    with located(fresh) as loc:
        g2 = aps8idi.read_g2(loc, None)
        frames = loc.file["/xpcs/multitau/delay_list"][()]
    assert np.allclose(g2.delay_times, frames * 1e-3)


def test_g2_missing_dataset_names_the_path(fresh: Path) -> None:
    def edit(f: h5py.File) -> None:
        del f["/xpcs/multitau/normalized_g2_err"]

    _edit(fresh, edit)
    with located(fresh) as loc, pytest.raises(KeyError, match="/xpcs/multitau/normalized_g2_err"):
        aps8idi.read_g2(loc, None)


# ---------------------------------------------------------------- two-time


def test_c2_bins_and_symmetric_rebuild(fresh: Path) -> None:
    with located(fresh) as loc:
        assert aps8idi.list_c2_bins(loc) == [0, 3]
        upper = loc.file["/xpcs/twotime/correlation_map/c2_00002"][()]  # processed_bins[1] = 4
        c2 = aps8idi.read_c2(loc, 3)
    assert c2.dtype == np.float32
    assert c2.shape == (N_FRAMES, N_FRAMES)
    assert np.array_equal(c2, c2.T)
    assert np.array_equal(c2, _mirrored(upper).astype(np.float32))
    assert np.array_equal(np.diagonal(c2), np.diagonal(upper))

    # Garbage below the diagonal is ignored.
    def spoil(f: h5py.File) -> None:
        ds = f["/xpcs/twotime/correlation_map/c2_00002"]
        ds[...] = upper + np.tril(np.full(upper.shape, 7.0, dtype=np.float32), -1)

    _edit(fresh, spoil)
    with located(fresh) as loc:
        assert np.array_equal(aps8idi.read_c2(loc, 3), c2)


def test_c2_missing_bin_lists_available(result_file: Path) -> None:
    with located(result_file) as loc, pytest.raises(KeyError) as exc:
        aps8idi.read_c2(loc, 1)
    assert "q_idx 1" in str(exc.value)
    assert "[0, 3]" in str(exc.value)


@pytest.mark.parametrize("bad", ["3", 3.0, False])
def test_c2_q_idx_wrong_type(result_file: Path, bad: Any) -> None:
    with located(result_file) as loc, pytest.raises(TypeError):
        aps8idi.read_c2(loc, bad)


def _block_mean(full: npt.NDArray[Any], f: int) -> npt.NDArray[np.float64]:
    m = -(-full.shape[0] // f)
    out = np.empty((m, m))
    for a in range(m):
        for b in range(m):
            out[a, b] = full[a * f : (a + 1) * f, b * f : (b + 1) * f].mean()
    return out


@pytest.mark.parametrize(
    ("max_size", "factor", "size"), [(10, 7, 10), (32, 2, 32), (30, 3, 22), (1, 64, 1)]
)
def test_c2_decimation(result_file: Path, max_size: int, factor: int, size: int) -> None:
    with located(result_file) as loc:
        full = aps8idi.read_c2(loc, 0)
        small = aps8idi.read_c2(loc, 0, max_size=max_size)
    assert small.dtype == np.float32
    assert small.shape == (size, size)
    assert np.array_equal(small, small.T)
    assert np.allclose(small, _block_mean(full.astype(np.float64), factor), rtol=1e-6)


def test_c2_decimation_in_small_strips(result_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with located(result_file) as loc:
        whole = aps8idi.read_c2(loc, 0, max_size=10)
        # 7-row strips (the largest multiple of the factor 7 that fits 8 rows)
        monkeypatch.setattr(aps8idi, "_C2_READ_BYTES", 4 * N_FRAMES * 8)
        stripped = aps8idi.read_c2(loc, 0, max_size=10)
    assert np.allclose(stripped, whole, rtol=1e-6)


def test_c2_mirror_in_small_blocks(result_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aps8idi, "_C2_BLOCK", 5)
    with located(result_file) as loc:
        c2 = aps8idi.read_c2(loc, 0)
        upper = loc.file["/xpcs/twotime/correlation_map/c2_00001"][()]
    assert np.array_equal(c2, _mirrored(upper).astype(np.float32))


def test_c2_max_size_not_smaller_than_n_returns_full(result_file: Path) -> None:
    with located(result_file) as loc:
        assert np.array_equal(aps8idi.read_c2(loc, 0, max_size=64), aps8idi.read_c2(loc, 0))


@pytest.mark.parametrize("bad", [0, -5])
def test_c2_max_size_below_one(result_file: Path, bad: int) -> None:
    with located(result_file) as loc, pytest.raises(ValueError, match="max_size"):
        aps8idi.read_c2(loc, 0, max_size=bad)

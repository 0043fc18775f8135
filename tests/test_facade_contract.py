"""The facade contract: every assertion here holds for the local facade and the remote client."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from xpcs_io.errors import HDF5ValidationError
from xpcs_io.schemas import G2Data, GeometryMetadata, MaskSchema, PartitionSchema, QMapSchema
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import CONTRACT_SIDES, Side, open_side


@pytest.fixture(params=CONTRACT_SIDES)
def side(request: pytest.FixtureRequest, data_root: Path) -> Iterator[Side]:
    """Every side, the async client included."""
    yield from open_side(request, data_root)


@contextlib.contextmanager
def edit(side: Side, path: Path) -> Iterator[h5py.File]:
    """Change a file in place the way another program would, while it may be pooled.

    A pooled read handle in this process (local side) must be closed first: HDF5 refuses a
    second, writable open of a file it has open. The remote server's handles live in another
    process, and their shared lock is bypassed as a foreign writer would.
    """
    if side.name == "local":
        side.api.clear_pool()
    with h5py.File(path, "a", locking=False) as f:
        yield f


def _h5(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[name][()])


def _geometry(shape: tuple[int, int] = (48, 40)) -> GeometryMetadata:
    return GeometryMetadata(
        bcx=20.5, bcy=22.0, det_dist=5000.0, lambda_=1.54, pix_dim=0.075, shape=shape
    )


def _mask(
    seed: int = 0, shape: tuple[int, int] = (48, 40), description: str | None = "clean"
) -> MaskSchema:
    rng = np.random.default_rng(seed)
    return MaskSchema(
        mask=(rng.random(shape) > 0.1).astype(np.int32),
        metadata=_geometry(shape),
        description=description,
    )


def _partition(seed: int = 0, shape: tuple[int, int] = (48, 40)) -> PartitionSchema:
    rng = np.random.default_rng(seed)
    n = 7
    labels = rng.integers(0, n + 1, size=shape).astype(np.uint16)
    return PartitionSchema(
        partition_map=labels,
        num_pts=n,
        val_list=np.linspace(0.01, 0.07, n),
        num_list=np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64),
        metadata=_geometry(shape),
        mask=(labels > 0).astype(np.uint8),
        method="linear",
    )


# ---------------------------------------------------------------- reads: happy paths


def test_read_qmap_matches_h5py(side: Side, native_file: Path) -> None:
    qmap = side.api.read_qmap(side.path(native_file))
    assert isinstance(qmap, QMapSchema)
    for name in ("sqmap", "dqmap", "phis", "mask", "partition_map"):
        expected = _h5(native_file, f"/xpcs/qmap/{name}")
        got = getattr(qmap, name)
        assert got.dtype == expected.dtype, name
        np.testing.assert_array_equal(got, expected)
        assert got.flags.writeable
    assert (qmap.sqmap_unit, qmap.dqmap_unit, qmap.phis_unit) == ("nm^-1", "nm^-1", "rad")


def test_read_qmap_without_unit_datasets_defaults(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        for name in ("sqmap_unit", "dqmap_unit", "phis_unit", "mask", "partition_map"):
            del f[f"/xpcs/qmap/{name}"]
    qmap = side.api.read_qmap(side.path(native_file))
    assert (qmap.sqmap_unit, qmap.dqmap_unit, qmap.phis_unit) == ("nm^-1", "nm^-1", "rad")
    assert qmap.mask is None
    assert qmap.partition_map is None


def test_read_g2_matches_h5py(side: Side, native_file: Path) -> None:
    g2 = side.api.read_g2_data(side.path(native_file))
    assert isinstance(g2, G2Data)
    np.testing.assert_array_equal(g2.g2, _h5(native_file, "/xpcs/g2/g2"))
    np.testing.assert_array_equal(g2.g2_err, _h5(native_file, "/xpcs/g2/g2_err"))
    np.testing.assert_array_equal(g2.delay_times, _h5(native_file, "/xpcs/g2/delay_times"))
    np.testing.assert_array_equal(g2.q_values, _h5(native_file, "/xpcs/g2/q_values"))
    assert g2.g2.shape == (20, 12)


@pytest.mark.parametrize("k", [0, 5, 11])
def test_read_g2_q_idx_selects_the_q_axis(side: Side, native_file: Path, k: int) -> None:
    g2 = side.api.read_g2_data(side.path(native_file), q_idx=k)
    full = _h5(native_file, "/xpcs/g2/g2")
    np.testing.assert_array_equal(g2.g2, full[:, k : k + 1])
    np.testing.assert_array_equal(g2.g2_err, _h5(native_file, "/xpcs/g2/g2_err")[:, k : k + 1])
    np.testing.assert_array_equal(g2.q_values, _h5(native_file, "/xpcs/g2/q_values")[k : k + 1])
    np.testing.assert_array_equal(g2.delay_times, _h5(native_file, "/xpcs/g2/delay_times"))
    assert g2.g2.shape == (20, 1)


def test_read_g2_older_q_list_name(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        f.move("/xpcs/g2/q_values", "/xpcs/g2/q_list")
    g2 = side.api.read_g2_data(side.path(native_file))
    np.testing.assert_array_equal(g2.q_values, _h5(native_file, "/xpcs/g2/q_list"))


def test_read_geometry(side: Side, native_file: Path) -> None:
    geo = side.api.read_geometry_metadata(side.path(native_file))
    assert isinstance(geo, GeometryMetadata)
    assert geo.shape == (48, 40)
    assert geo.bcx == pytest.approx(float(_h5(native_file, "/xpcs/metadata/bcx")))
    assert (geo.det_dist, geo.lambda_, geo.pix_dim) == (5000.0, 1.54, 0.075)
    assert geo.det_rotation is None


def test_read_geometry_height_width_and_optional_angles(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        g = f["/xpcs/metadata"]
        del g.attrs["shape"]
        g["height"], g["width"] = 48, 40
        g["det_rotation"], g["incident_angle"] = 1.5, 0.2
    geo = side.api.read_geometry_metadata(side.path(native_file))
    assert geo.shape == (48, 40)
    assert (geo.det_rotation, geo.incident_angle) == (1.5, 0.2)


def test_group_argument_reads_another_group(side: Side, workdir: Path) -> None:
    path = write_native_file(workdir / "two.hdf5", DemoSpec(shape=(16, 20), n_delay=8, n_q=4))
    with edit(side, path) as f:
        f.copy("/xpcs/qmap", "/run2/qmap")
        f.copy("/xpcs/g2", "/run2/g2")
        f.copy("/xpcs/metadata", "/run2/metadata")
        f["/run2/qmap/sqmap"][0, 0] = 42.0
        f["/run2/g2/g2"][0, 0] = 7.0
        f["/run2/metadata/bcx"][()] = 3.25
    p = side.path(path)
    assert side.api.read_qmap(p, group="/run2/qmap").sqmap[0, 0] == 42.0
    assert side.api.read_g2_data(p, group="/run2/g2").g2[0, 0] == 7.0
    assert side.api.read_g2_data(p, q_idx=0, group="/run2/g2").g2[0, 0] == 7.0
    assert side.api.read_geometry_metadata(p, group="/run2/metadata").bcx == 3.25
    assert side.api.read_qmap(p).sqmap[0, 0] != 42.0


def test_str_and_path_both_accepted(side: Side, native_file: Path) -> None:
    p = side.path(native_file)
    a = side.api.read_geometry_metadata(str(p))
    b = side.api.read_geometry_metadata(Path(p))
    assert a == b


# ---------------------------------------------------------------- reads: errors


def test_missing_file_is_file_not_found(side: Side, workdir: Path) -> None:
    p = side.path(workdir / "nope.hdf5")
    with pytest.raises(FileNotFoundError):
        side.api.read_qmap(p)
    with pytest.raises(FileNotFoundError):
        side.api.read_g2_data(p)
    with pytest.raises(FileNotFoundError):
        side.api.read_geometry_metadata(p)
    with pytest.raises(FileNotFoundError):
        side.api.read_mask(p)


@pytest.mark.parametrize(
    ("method", "group", "missing"),
    [
        ("read_qmap", "/xpcs/qmap", "dqmap"),
        ("read_g2_data", "/xpcs/g2", "g2_err"),
        ("read_geometry_metadata", "/xpcs/metadata", "pix_dim"),
    ],
)
def test_missing_dataset_is_key_error_naming_path(
    side: Side, native_file: Path, method: str, group: str, missing: str
) -> None:
    with edit(side, native_file) as f:
        del f[f"{group}/{missing}"]
    with pytest.raises(KeyError, match=f"{group}/{missing}"):
        getattr(side.api, method)(side.path(native_file))


@pytest.mark.parametrize("method", ["read_qmap", "read_g2_data", "read_geometry_metadata"])
def test_missing_group_is_key_error(side: Side, native_file: Path, method: str) -> None:
    with pytest.raises(KeyError, match="/no/such"):
        getattr(side.api, method)(side.path(native_file), group="/no/such")


def test_geometry_without_shape_is_key_error(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        del f["/xpcs/metadata"].attrs["shape"]
    with pytest.raises(KeyError, match="shape"):
        side.api.read_geometry_metadata(side.path(native_file))


@pytest.mark.parametrize("k", [12, 100, -1, -12])
def test_q_idx_out_of_range_is_index_error(side: Side, native_file: Path, k: int) -> None:
    with pytest.raises(IndexError, match="q_idx"):
        side.api.read_g2_data(side.path(native_file), q_idx=k)


def test_q_idx_wrong_type_is_type_error(side: Side, native_file: Path) -> None:
    with pytest.raises(TypeError):
        side.api.read_g2_data(side.path(native_file), q_idx=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dataset", "value", "field"),
    [
        ("/xpcs/qmap/sqmap", np.nan, "sqmap"),
        ("/xpcs/qmap/phis", np.inf, "phis"),
        ("/xpcs/qmap/mask", 2, "mask"),
    ],
)
def test_invalid_stored_qmap_is_validation_error(
    side: Side, native_file: Path, dataset: str, value: float, field: str
) -> None:
    with edit(side, native_file) as f:
        f[dataset][3, 4] = value
    with pytest.raises(HDF5ValidationError, match=field) as info:
        side.api.read_qmap(side.path(native_file))
    assert info.value.field == field


def test_invalid_unit_is_validation_error(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        del f["/xpcs/qmap/sqmap_unit"]
        f["/xpcs/qmap/sqmap_unit"] = "furlongs"
    with pytest.raises(HDF5ValidationError, match="sqmap_unit"):
        side.api.read_qmap(side.path(native_file))


def test_qmap_shape_mismatch_is_validation_error(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        del f["/xpcs/qmap/dqmap"]
        f["/xpcs/qmap/dqmap"] = np.zeros((10, 10), np.float32)
    with pytest.raises(HDF5ValidationError, match="dqmap"):
        side.api.read_qmap(side.path(native_file))


def test_qmap_0d_where_2d_expected_is_validation_error(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        del f["/xpcs/qmap/sqmap"]
        f["/xpcs/qmap/sqmap"] = 1.0
    with pytest.raises(HDF5ValidationError, match="sqmap"):
        side.api.read_qmap(side.path(native_file))


def test_nan_geometry_is_validation_error(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        f["/xpcs/metadata/det_dist"][()] = np.nan
    with pytest.raises(HDF5ValidationError, match="det_dist"):
        side.api.read_geometry_metadata(side.path(native_file))


def test_g2_decreasing_delays_is_validation_error(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        f["/xpcs/g2/delay_times"][3] = 0.0
    with pytest.raises(HDF5ValidationError, match="delay_times"):
        side.api.read_g2_data(side.path(native_file))


def test_g2_nan_allowed_in_err_only(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        f["/xpcs/g2/g2_err"][0, 0] = np.nan
    g2 = side.api.read_g2_data(side.path(native_file))
    assert np.isnan(g2.g2_err[0, 0])
    with edit(side, native_file) as f:
        f["/xpcs/g2/g2"][0, 0] = np.nan
    with pytest.raises(HDF5ValidationError, match="g2"):
        side.api.read_g2_data(side.path(native_file))


def test_not_hdf5_is_validation_error(side: Side, workdir: Path) -> None:
    bad = workdir / "text.hdf5"
    bad.write_text("this is not an HDF5 file\n" * 100)
    with pytest.raises(HDF5ValidationError, match="not a readable HDF5"):
        side.api.read_qmap(side.path(bad))


def test_truncated_hdf5_is_validation_error(side: Side, workdir: Path) -> None:
    src = write_native_file(workdir / "whole.hdf5", DemoSpec(shape=(64, 64)))
    cut = workdir / "cut.hdf5"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(HDF5ValidationError):
        side.api.read_qmap(side.path(cut))
    with pytest.raises(HDF5ValidationError):
        side.api.read_g2_data(side.path(cut))


def test_empty_file_is_validation_error(side: Side, workdir: Path) -> None:
    empty = workdir / "empty.hdf5"
    empty.write_bytes(b"")
    with pytest.raises(HDF5ValidationError):
        side.api.read_geometry_metadata(side.path(empty))


# ---------------------------------------------------------------- validate=False


def test_validate_false_is_honoured_by_every_read(side: Side, native_file: Path) -> None:
    with edit(side, native_file) as f:
        f["/xpcs/qmap/sqmap"][0, 0] = np.nan
        f["/xpcs/g2/delay_times"][1] = -5.0
        f["/xpcs/metadata/lambda_"][()] = -1.0
    p = side.path(native_file)
    for call in (side.api.read_qmap, side.api.read_g2_data, side.api.read_geometry_metadata):
        with pytest.raises(HDF5ValidationError):
            call(p)
    loose = side.make(validate=False)
    assert np.isnan(loose.read_qmap(p).sqmap[0, 0])
    assert loose.read_g2_data(p).delay_times[1] == -5.0
    assert loose.read_g2_data(p, q_idx=2).g2.shape == (20, 1)
    assert loose.read_geometry_metadata(p).lambda_ == -1.0


def test_validate_false_reads_back_invalid_mask(side: Side, workdir: Path) -> None:
    path = workdir / "m.hdf5"
    side.api.write_mask(side.path(path), _mask())
    with edit(side, path) as f:
        f["/simplemask/mask/versions/v000001/mask"][0, 0] = 5
    with pytest.raises(HDF5ValidationError, match="mask"):
        side.api.read_mask(side.path(path))
    assert side.make(validate=False).read_mask(side.path(path)).mask[0, 0] == 5


# ---------------------------------------------------------------- writes and versions


def test_write_mask_reads_back_equal_with_versions(side: Side, workdir: Path) -> None:
    path = workdir / "out.hdf5"  # does not exist yet: the first write creates it
    p = side.path(path)
    first, second = _mask(1, description="first"), _mask(2, description=None)
    side.api.write_mask(p, first)
    side.api.write_mask(p, second, writer="alice")
    assert side.api.read_mask(p) == second
    assert side.api.read_mask(p, version=1) == first
    assert side.api.read_mask(p, version=2) == second
    versions = side.api.list_mask_versions(p)
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["description"] for v in versions] == ["first", None]
    assert versions[1]["writer"] == "alice"
    assert isinstance(versions[0]["writer"], str)
    assert versions[0]["writer"]
    assert versions[0]["schema_version"] == "1.0.0"
    assert versions[0]["created"].endswith("+00:00")
    assert versions[0]["sha256"] == hashlib.sha256(first.mask.tobytes()).hexdigest()
    # The seed's layout still finds the current mask where it always was.
    np.testing.assert_array_equal(_h5(path, "/simplemask/mask/mask"), second.mask)


def test_write_partition_reads_back_equal(side: Side, workdir: Path) -> None:
    path = workdir / "part.hdf5"
    p = side.path(path)
    a, b = _partition(1), _partition(2)
    side.api.write_partition(p, a)
    side.api.write_partition(p, b, compression="lzf", compression_opts=None)
    assert side.api.read_partition(p) == b
    assert side.api.read_partition(p, version=1) == a
    assert [v["version"] for v in side.api.list_partition_versions(p)] == [1, 2]


def test_write_into_existing_result_file_keeps_its_content(side: Side, native_file: Path) -> None:
    p = side.path(native_file)
    before = side.api.read_qmap(p)
    side.api.write_mask(p, _mask())
    assert side.api.read_qmap(p) == before
    assert side.api.read_mask(p) == _mask()


def test_write_to_other_group(side: Side, workdir: Path) -> None:
    p = side.path(workdir / "g.hdf5")
    side.api.write_mask(p, _mask(3), group="/analysis/mask_b")
    assert side.api.read_mask(p, group="/analysis/mask_b") == _mask(3)
    with pytest.raises(KeyError):
        side.api.read_mask(p)


def test_unknown_version_is_key_error(side: Side, workdir: Path) -> None:
    p = side.path(workdir / "v.hdf5")
    side.api.write_mask(p, _mask())
    with pytest.raises(KeyError, match="version 7"):
        side.api.read_mask(p, version=7)


def test_invalid_mask_write_is_value_error_and_file_untouched(
    side: Side, native_file: Path
) -> None:
    p = side.path(native_file)
    before = native_file.read_bytes()
    bad = MaskSchema.unchecked(mask=np.full((48, 40), 3, np.int32), metadata=_geometry())
    with pytest.raises(ValueError, match="mask"):
        side.api.write_mask(p, bad)
    wrong_shape = MaskSchema.unchecked(mask=np.ones((10, 10), np.int32), metadata=_geometry())
    with pytest.raises(ValueError, match="shape"):
        side.api.write_mask(p, wrong_shape)
    assert native_file.read_bytes() == before


def test_wrong_type_write_is_type_error(side: Side, native_file: Path) -> None:
    before = native_file.read_bytes()
    with pytest.raises(TypeError):
        side.api.write_mask(side.path(native_file), _partition())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        side.api.write_partition(side.path(native_file), _mask())  # type: ignore[arg-type]
    assert native_file.read_bytes() == before


def test_bad_compression_is_value_error_and_file_untouched(side: Side, native_file: Path) -> None:
    before = native_file.read_bytes()
    with pytest.raises(ValueError, match="compression"):
        side.api.write_mask(side.path(native_file), _mask(), compression="zip")
    with pytest.raises(ValueError, match="compression_opts"):
        side.api.write_mask(side.path(native_file), _mask(), compression_opts=42)
    assert native_file.read_bytes() == before


def test_write_over_non_hdf5_is_validation_error_and_untouched(side: Side, workdir: Path) -> None:
    bad = workdir / "notes.hdf5"
    bad.write_text("plain text")
    with pytest.raises(HDF5ValidationError):
        side.api.write_mask(side.path(bad), _mask())
    assert bad.read_text() == "plain text"


# ---------------------------------------------------------------- pool


def test_pool_stats_and_clear(side: Side, native_file: Path) -> None:
    p = side.path(native_file)
    side.api.clear_pool()
    for _ in range(3):
        side.api.read_geometry_metadata(p)
    stats = side.api.get_pool_stats()
    for key in (
        "hits",
        "misses",
        "opens",
        "evictions",
        "reopens_on_change",
        "pool_size",
        "max_pool_size",
        "hit_ratio",
    ):
        assert key in stats
    assert stats["pool_size"] >= 1
    assert stats["hits"] >= 2
    side.api.clear_pool()
    assert side.api.get_pool_stats()["pool_size"] == 0
    assert side.api.read_geometry_metadata(p).shape == (48, 40)


def test_file_replaced_on_disk_is_read_fresh(side: Side, workdir: Path) -> None:
    path = write_native_file(workdir / "swap.hdf5", DemoSpec(shape=(16, 16), seed=1))
    p = side.path(path)
    first = side.api.read_qmap(p)
    new = write_native_file(workdir / "new.hdf5", DemoSpec(shape=(20, 24), seed=2))
    new.replace(path)
    second = side.api.read_qmap(p)
    assert second.sqmap.shape == (20, 24)
    assert first.sqmap.shape == (16, 16)
    with edit(side, path) as f:  # rewrite in place
        f["/xpcs/qmap/sqmap"][0, 0] = 99.0
    assert side.api.read_qmap(p).sqmap[0, 0] == 99.0


def test_write_returns_the_version_record_it_created(side: Side, workdir: Path) -> None:
    path = side.path(workdir / "records.h5")
    first = side.api.write_mask(path, _mask(1), writer="viewer-a")
    second = side.api.write_mask(path, _mask(2))
    part = side.api.write_partition(path, _partition(3))
    assert (first["version"], second["version"], part["version"]) == (1, 2, 1)
    assert first["writer"] == "viewer-a"
    assert side.api.list_mask_versions(path) == [first, second]
    assert side.api.list_partition_versions(path) == [part]
    stored = hashlib.sha256(np.ascontiguousarray(_mask(2).mask).tobytes()).hexdigest()
    assert second["sha256"] == stored

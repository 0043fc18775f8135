"""Masks and partitions other programs wrote: read, listed as found data, kept by writes.

The reference facade (xpcsviewer ``HDF5Facade.write_mask`` / ``write_partition``) leaves an
unversioned group: dataset ``mask`` (or ``partition_map``, ``val_list``, ``num_list``,
``mask``), attributes ``version`` and ``description`` (``num_pts``, ``method``), and the
geometry as attributes of a ``metadata`` subgroup. The files here are written with h5py
exactly so. Every assertion holds locally and remotely.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from xpcs_io.schemas import GeometryMetadata, MaskSchema, PartitionSchema
from xpcs_io.tools.demo_aps8idi import write_aps8idi_file

from .conftest import Side

SHAPE = (64, 48)
GEO = {"bcx": 40.25, "bcy": 60.5, "det_dist": 5000.0, "lambda_": 1.2398, "pix_dim": 0.075}


def _geometry() -> GeometryMetadata:
    return GeometryMetadata(shape=SHAPE, **GEO)


def _found_mask() -> np.ndarray:
    mask = np.ones(SHAPE, dtype=np.int32)
    mask[10:20, 5:9] = 0  # a beamstop-like pattern no other mask here has
    return mask


def _found_pmap() -> np.ndarray:
    labels: np.ndarray = np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE) % 4 + 1
    out: np.ndarray = (labels * _found_mask()).astype(np.int32)
    return out


def reference_write_mask(path: Path, mask: np.ndarray, description: str = "drawn") -> None:
    """What the reference facade's write_mask leaves in a file (its defaults)."""
    with h5py.File(path, "a") as f:
        g = f.create_group("/simplemask/mask")
        g.create_dataset("mask", data=mask, compression="gzip", compression_opts=4)
        g.attrs["version"] = "1.0.0"
        g.attrs["description"] = description
        md = g.create_group("metadata")
        for k, v in GEO.items():
            md.attrs[k] = v
        md.attrs["shape"] = SHAPE


def reference_write_partition(path: Path, pmap: np.ndarray) -> None:
    """What the reference facade's write_partition leaves in a file."""
    with h5py.File(path, "a") as f:
        p = f.create_group("/simplemask/partition")
        p.create_dataset("partition_map", data=pmap, compression="gzip", compression_opts=4)
        p.attrs["num_pts"] = 4
        p.attrs["version"] = "1.0.0"
        p.create_dataset("val_list", data=np.array([0.001, 0.002, 0.003, 0.004]))
        counts = [np.count_nonzero(pmap == k) for k in range(1, 5)]
        p.create_dataset("num_list", data=np.array(counts, dtype=np.int32))
        p.create_dataset("mask", data=(pmap > 0).astype(np.int32))
        p.attrs["method"] = "linear"
        md = p.create_group("metadata")
        for k, v in GEO.items():
            md.attrs[k] = v
        md.attrs["shape"] = SHAPE


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _new_mask(description: str = "new") -> MaskSchema:
    mask = np.ones(SHAPE, dtype=np.uint8)
    mask[0] = 0
    return MaskSchema(mask=mask, metadata=_geometry(), description=description)


def _new_partition() -> PartitionSchema:
    pmap = np.full(SHAPE, 2, dtype=np.uint16)
    pmap[:, :10] = 1
    return PartitionSchema(
        partition_map=pmap,
        num_pts=2,
        val_list=np.array([0.01, 0.02]),
        num_list=np.array([SHAPE[0] * 10, SHAPE[0] * (SHAPE[1] - 10)]),
        metadata=_geometry(),
        method="log",
    )


def _datasets_equal_to(path: Path, expected: np.ndarray) -> list[str]:
    hits: list[str] = []
    with h5py.File(path, "r") as f:

        def look(name: str, obj: object) -> None:
            same_shape = isinstance(obj, h5py.Dataset) and obj.shape == expected.shape
            if same_shape and np.array_equal(obj[()], expected):  # type: ignore[index]
                hits.append(name)

        f.visititems(look)
    return hits


# ---------------------------------------------------------------- reading found data


def test_reference_mask_is_read_and_listed_as_found(side: Side, workdir: Path) -> None:
    path = workdir / "found.hdf5"
    reference_write_mask(path, _found_mask(), "beamstop")
    p = side.path(path)
    got = side.api.read_mask(p)
    np.testing.assert_array_equal(got.mask, _found_mask())
    assert got.mask.dtype == np.int32
    assert got.description == "beamstop"
    assert got.version == "1.0.0"
    assert got.metadata == _geometry()  # read from the metadata subgroup's attributes
    assert side.api.read_mask(p, version=1) == got
    (record,) = side.api.list_mask_versions(p)
    assert record["version"] == 1
    assert record["origin"] == "found"
    assert record["sha256"] == _sha(_found_mask())
    assert record["created"] is None  # unknown: not invented
    assert record["writer"] is None
    assert record["description"] == "beamstop"
    assert record["schema_version"] == "1.0.0"
    assert record["dtype"] == "<i4"
    assert record["shape"] == list(SHAPE)
    with pytest.raises(KeyError):
        side.api.read_mask(p, version=2)


def test_reference_partition_is_read_and_listed_as_found(side: Side, workdir: Path) -> None:
    path = workdir / "found_p.hdf5"
    reference_write_partition(path, _found_pmap())
    p = side.path(path)
    got = side.api.read_partition(p)
    np.testing.assert_array_equal(got.partition_map, _found_pmap())
    assert got.num_pts == 4
    assert got.method == "linear"
    np.testing.assert_array_equal(got.val_list, [0.001, 0.002, 0.003, 0.004])
    np.testing.assert_array_equal(got.mask, (_found_pmap() > 0).astype(np.int32))
    assert got.metadata == _geometry()
    (record,) = side.api.list_partition_versions(p)
    assert (record["version"], record["origin"]) == (1, "found")
    assert record["sha256"] == _sha(_found_pmap())


# ---------------------------------------------------------------- writes keep found data


def test_first_write_keeps_the_reference_mask_as_version_1(side: Side, workdir: Path) -> None:
    path = workdir / "kept.hdf5"
    reference_write_mask(path, _found_mask(), "drawn by a user")
    p = side.path(path)
    before = side.api.list_mask_versions(p)
    side.api.write_mask(p, _new_mask())
    after = side.api.list_mask_versions(p)
    assert [(v["version"], v["origin"]) for v in after] == [(1, "found"), (2, "xpcs-io")]
    assert after[0] == before[0]  # the same entry, with the same number, before and after
    assert side.api.read_mask(p) == _new_mask()
    old = side.api.read_mask(p, version=1)
    np.testing.assert_array_equal(old.mask, _found_mask())
    assert old.description == "drawn by a user"
    assert old.metadata == _geometry()
    # The bytes are still in the file, once (a hard link, not a copy).
    assert _datasets_equal_to(path, _found_mask()) == ["simplemask/mask/versions/v000001/mask"]
    with h5py.File(path, "r") as f:
        kept = f["/simplemask/mask/versions/v000001"]
        assert kept.attrs["origin"] == "found"
        assert kept.attrs["description"] == "drawn by a user"
        assert kept["metadata"].attrs["bcx"] == GEO["bcx"]
    side.api.write_mask(p, _new_mask("third"))
    assert [v["version"] for v in side.api.list_mask_versions(p)] == [1, 2, 3]
    np.testing.assert_array_equal(side.api.read_mask(p, version=1).mask, _found_mask())


def test_first_write_keeps_the_reference_partition(side: Side, workdir: Path) -> None:
    path = workdir / "kept_p.hdf5"
    reference_write_partition(path, _found_pmap())
    p = side.path(path)
    side.api.write_partition(p, _new_partition())
    versions = side.api.list_partition_versions(p)
    assert [(v["version"], v["origin"]) for v in versions] == [(1, "found"), (2, "xpcs-io")]
    old = side.api.read_partition(p, version=1)
    np.testing.assert_array_equal(old.partition_map, _found_pmap())
    assert (old.num_pts, old.method) == (4, "linear")
    assert side.api.read_partition(p) == _new_partition()


def test_mask_replaced_by_another_program_is_found_and_kept(side: Side, workdir: Path) -> None:
    """A program that overwrites the top-level mask of a versioned group (as the reference
    facade's writer would) leaves found data newer than the stored versions."""
    path = workdir / "mixed.hdf5"
    p = side.path(path)
    side.api.write_mask(p, _new_mask("ours"))
    if side.name == "local":
        side.api.clear_pool()
    with h5py.File(path, "a", locking=False) as f:
        g = f["/simplemask/mask"]
        del g["mask"]
        g.create_dataset("mask", data=_found_mask())
    versions = side.api.list_mask_versions(p)
    assert [(v["version"], v["origin"]) for v in versions] == [(1, "xpcs-io"), (2, "found")]
    assert versions[1]["sha256"] == _sha(_found_mask())
    assert versions[1]["description"] is None  # the group's attributes describe version 1
    np.testing.assert_array_equal(side.api.read_mask(p).mask, _found_mask())
    side.api.write_mask(p, _new_mask("after"))
    versions = side.api.list_mask_versions(p)
    assert [(v["version"], v["origin"]) for v in versions] == [
        (1, "xpcs-io"),
        (2, "found"),
        (3, "xpcs-io"),
    ]
    np.testing.assert_array_equal(side.api.read_mask(p, version=2).mask, _found_mask())
    assert side.api.read_mask(p, version=1) == _new_mask("ours")


# ---------------------------------------------------------------- geometry for the reference


@pytest.mark.parametrize("kind", ["mask", "partition"])
def test_written_geometry_is_where_the_reference_reads_it(
    side: Side, workdir: Path, kind: str
) -> None:
    path = workdir / f"geo_{kind}.hdf5"
    p = side.path(path)
    if kind == "mask":
        side.api.write_mask(p, _new_mask())
    else:
        side.api.write_partition(p, _new_partition())
    with h5py.File(path, "r") as f:
        for grp in (
            f"/simplemask/{kind}/metadata",
            f"/simplemask/{kind}/versions/v000001/metadata",
        ):
            md = f[grp]
            for key, value in GEO.items():
                assert md.attrs[key] == value, (grp, key)
                assert md[key][()] == value, (grp, key)  # datasets stay, for our own readers
            assert tuple(md.attrs["shape"]) == SHAPE


# ---------------------------------------------------------------- a producer's original mask


def test_nexus_file_without_written_mask_reads_its_producer_mask(side: Side, workdir: Path) -> None:
    path = write_aps8idi_file(workdir / "nexus.hdf", shape=(64, 80))
    with h5py.File(path, "r") as f:
        original = f["/xpcs/qmap/mask"][()]
    p = side.path(path)
    got = side.api.read_mask(p)
    np.testing.assert_array_equal(got.mask, original)
    assert "/xpcs/qmap/mask" in str(got.description)
    assert got.metadata == side.api.read_geometry_metadata(p)
    with pytest.raises(KeyError):
        side.api.list_mask_versions(p)  # nothing was written: no version group
    mine = MaskSchema(mask=np.ones((64, 80), np.uint8), metadata=got.metadata, description="mine")
    side.api.write_mask(p, mine)
    assert side.api.read_mask(p) == mine
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["/xpcs/qmap/mask"][()], original)


def _legacy_file(path: Path, mask: np.ndarray, dqmap_shape: tuple[int, int]) -> None:
    """A legacy 8-ID-I result file as the fact sheet describes it ((1,1) scalars)."""

    def one(value: float) -> np.ndarray:
        return np.array([[value]], dtype=np.float64)

    with h5py.File(path, "w") as f:
        f["/xpcs/Version"] = np.bytes_(b"1.0")
        f["/xpcs/analysis_type"] = np.bytes_(b"Multitau")
        f["/xpcs/dqmap"] = np.ones(dqmap_shape, dtype=np.uint32)
        f["/xpcs/mask"] = mask
        acq = f.create_group("/measurement/instrument/acquisition")
        acq["beam_center_x"] = one(30.0)
        acq["beam_center_y"] = one(12.0)
        acq["stage_x"] = one(215.3)
        acq["stage_zero_x"] = one(215.0)
        acq["stage_z"] = one(31.5)
        acq["stage_zero_z"] = one(31.5)
        det = f.create_group("/measurement/instrument/detector")
        det["distance"] = one(3930.0)
        det["x_pixel_size"] = one(0.075)
        det["y_pixel_size"] = one(0.075)
        f["/measurement/instrument/source_begin/energy"] = one(7.35)


@pytest.mark.parametrize(
    ("stored", "dtype"),
    [("(H,W)", np.uint8), ("(1,H,W)", np.uint8), ("(H,W)", np.bool_), ("(W,H)", np.uint8)],
)
def test_legacy_file_reads_its_mask(side: Side, workdir: Path, stored: str, dtype: type) -> None:
    h, w = 24, 36
    mask: np.ndarray = np.ones((h, w), dtype=dtype)
    mask[:4] = 0
    data = {"(H,W)": mask, "(1,H,W)": mask[None], "(W,H)": mask.T}[stored]
    path = workdir / "legacy.hdf"
    _legacy_file(path, data, (h, w))
    got = side.api.read_mask(side.path(path))
    np.testing.assert_array_equal(got.mask, mask)
    assert got.mask.dtype == np.dtype(dtype)
    geo = got.metadata
    assert geo.shape == (h, w)
    assert geo.bcx == pytest.approx(30.0 + 0.3 / 0.075)  # beam centre shifted by the stage
    assert geo.bcy == pytest.approx(12.0)
    assert (geo.det_dist, geo.pix_dim) == (3930.0, 0.075)
    assert geo.lambda_ == pytest.approx(12.398 / 7.35)


def test_group_inside_a_version_store_is_not_read_as_a_group(side: Side, workdir: Path) -> None:
    path = workdir / "inside.hdf5"
    p = side.path(path)
    side.api.write_mask(p, _new_mask())
    for group in ("/simplemask/mask/versions/v000001", "/simplemask/mask/metadata"):
        with pytest.raises(ValueError, match="inside the versioned group"):
            side.api.read_mask(p, group=group)
        with pytest.raises(ValueError, match="inside the versioned group"):
            side.api.list_mask_versions(p, group=group)


def test_concurrent_first_writes_keep_the_found_mask_once(side: Side, workdir: Path) -> None:
    """Six writers race to be the first write into a reference-layout group: the found mask
    becomes version 1 exactly once and each write one version after it."""
    path = workdir / "race.hdf5"
    reference_write_mask(path, _found_mask(), "drawn")
    p = side.path(path)
    n = 6
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: side.api.write_mask(p, _new_mask(f"w{i}")), range(n)))
    versions = side.api.list_mask_versions(p)
    assert [v["version"] for v in versions] == list(range(1, n + 2))
    assert [v["origin"] for v in versions] == ["found"] + ["xpcs-io"] * n
    assert sorted(v["description"] for v in versions[1:]) == sorted(f"w{i}" for i in range(n))
    assert versions[0]["sha256"] == _sha(_found_mask())
    assert _datasets_equal_to(path, _found_mask()) == ["simplemask/mask/versions/v000001/mask"]


def test_found_group_attributes_are_kept_with_its_version(side: Side, workdir: Path) -> None:
    path = workdir / "attrs.hdf5"
    reference_write_mask(path, _found_mask(), "with extras")
    with h5py.File(path, "a") as f:
        g = f["/simplemask/mask"]
        g.attrs["creator"] = "another tool"
        g.attrs["bcx"] = 1.5  # a name a write sets on the group: the old value is kept
        g.attrs["sha256"] = "not ours"  # a name of the record: kept under another name
    side.api.write_mask(side.path(path), _new_mask())
    with h5py.File(path, "r") as f:
        g = f["/simplemask/mask"]
        kept = g["versions/v000001"].attrs
        assert kept["creator"] == "another tool"
        assert kept["bcx"] == 1.5
        assert kept["found_sha256"] == "not ours"
        assert kept["sha256"] == _sha(_found_mask())
        assert kept["schema_version"] == "1.0.0"
        assert g.attrs["creator"] == "another tool"  # not the write's: left on the group
        assert g.attrs["bcx"] == GEO["bcx"]

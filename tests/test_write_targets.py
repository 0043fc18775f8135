"""Where a write may go: only groups that are, or will become, this service's versioned mask
and partition groups; never inside a version store, over the file's own data, or through an
HDF5 link to another place. A refused write leaves the file byte for byte as it was."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from xpcs_io.api import FacadeAPI
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import HDF5ConnectionPool
from xpcs_io.tools.demo import DemoSpec, write_native_file

from .conftest import Side
from .writesupport import SHAPE, mask, partition


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _native(workdir: Path, name: str = "run.hdf5") -> Path:
    return write_native_file(workdir / name, DemoSpec(shape=SHAPE, n_delay=6, n_q=3))


def _refused(
    side: Side, path: Path, error: type[BaseException], match: str, call: Callable[[], object]
) -> None:
    """``call`` raises ``error`` and ``path`` keeps every byte."""
    before = _digest(path)
    with pytest.raises(error, match=match):
        call()
    assert _digest(path) == before


# ---------------------------------------------------------------- stored versions


@pytest.mark.parametrize(
    "group",
    [
        "/simplemask/mask/versions/v000001",
        "/simplemask/mask/versions",
        "/simplemask/mask/versions/v000009",
        "/simplemask/mask/metadata",
        "/simplemask/mask/newgroup",
    ],
)
def test_write_inside_a_version_store_is_refused(side: Side, workdir: Path, group: str) -> None:
    path = _native(workdir)
    p = side.path(path)
    side.api.write_mask(p, mask(1))
    side.api.write_mask(p, mask(2))
    listed = side.api.list_mask_versions(p)
    _refused(
        side,
        path,
        ValueError,
        "inside the versioned group",
        lambda: side.api.write_mask(p, mask(9), group=group),
    )
    assert side.api.list_mask_versions(p) == listed
    assert int(side.api.read_mask(p, version=1).mask.sum()) == 16


def test_write_inside_a_reference_layout_group_is_refused(side: Side, workdir: Path) -> None:
    path = workdir / "ref.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("/simplemask/mask")
        g["mask"] = np.ones(SHAPE, np.int32)
        g.create_group("metadata").attrs["bcx"] = 8.0
    _refused(
        side,
        path,
        ValueError,
        "inside the versioned group",
        lambda: side.api.write_mask(side.path(path), mask(), group="/simplemask/mask/metadata"),
    )


def test_mask_write_into_a_partition_group_is_refused(side: Side, workdir: Path) -> None:
    path = workdir / "kinds.hdf5"
    p = side.path(path)
    side.api.write_partition(p, partition())
    side.api.write_mask(p, mask())
    _refused(
        side,
        path,
        ValueError,
        "holds partitions",
        lambda: side.api.write_mask(p, mask(), group="/simplemask/partition"),
    )
    _refused(
        side,
        path,
        ValueError,
        "holds masks",
        lambda: side.api.write_partition(p, partition(), group="/simplemask/mask"),
    )


# ---------------------------------------------------------------- the file's own data


@pytest.mark.parametrize(
    "group", ["/xpcs", "/xpcs/qmap", "/xpcs/metadata", "/xpcs/g2", "/simplemask"]
)
def test_write_over_the_files_own_data_is_refused(side: Side, workdir: Path, group: str) -> None:
    path = _native(workdir)
    p = side.path(path)
    side.api.write_mask(p, mask())  # makes /simplemask a group of groups
    qmap, geometry = side.api.read_qmap(p), side.api.read_geometry_metadata(p)
    _refused(
        side,
        path,
        ValueError,
        "did not write",
        lambda: side.api.write_mask(p, mask(5), group=group),
    )
    assert side.api.read_qmap(p) == qmap
    assert side.api.read_geometry_metadata(p) == geometry


def test_write_through_a_dataset_is_refused(side: Side, workdir: Path) -> None:
    path = _native(workdir)
    _refused(
        side,
        path,
        ValueError,
        "is a dataset",
        lambda: side.api.write_mask(side.path(path), mask(), group="/xpcs/qmap/sqmap/mask"),
    )


def test_existing_group_with_foreign_attributes_only(side: Side, workdir: Path) -> None:
    path = workdir / "attrs.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("/notes").attrs["description"] = "someone else's words"
        f.create_group("/analysis/masks").attrs["NX_class"] = "NXcollection"
    p = side.path(path)
    _refused(
        side,
        path,
        ValueError,
        "did not write",
        lambda: side.api.write_mask(p, mask(), group="/notes"),
    )
    # An empty group whose attributes a write does not set is fine, and they stay.
    side.api.write_mask(p, mask(), group="/analysis/masks")
    assert side.api.read_mask(p, group="/analysis/masks") == mask()
    with h5py.File(path, "r") as f:
        assert f["/analysis/masks"].attrs["NX_class"] == "NXcollection"
        assert f["/notes"].attrs["description"] == "someone else's words"


def test_new_group_beside_foreign_data_is_allowed(side: Side, workdir: Path) -> None:
    path = _native(workdir)
    p = side.path(path)
    qmap = side.api.read_qmap(p)
    side.api.write_mask(p, mask(3), group="/xpcs/masks_drawn")
    assert side.api.read_mask(p, group="/xpcs/masks_drawn") == mask(3)
    assert side.api.read_qmap(p) == qmap


# ---------------------------------------------------------------- HDF5 links


def _with_external_simplemask(root: Path, outside: Path) -> tuple[Path, Path]:
    victim = _native(outside, "victim.hdf5")
    with h5py.File(victim, "a") as f:
        f.create_group("/simplemask/mask")
    linked = _native(root, "linked.hdf5")
    with h5py.File(linked, "a") as f:
        f["/simplemask"] = h5py.ExternalLink(str(victim), "/simplemask")
    return linked, victim


def _rooted(side: Side, root: Path) -> FacadeAPI:
    """The side's facade bounded by ``root`` (the remote server always is)."""
    if side.name == "remote":
        return side.api
    return HDF5Facade(pool=HDF5ConnectionPool(max_size=2), root=root)


def test_write_through_external_link_out_of_the_root(
    side: Side, workdir: Path, tmp_path: Path
) -> None:
    linked, victim = _with_external_simplemask(workdir, tmp_path)
    api = _rooted(side, side.root)
    rel = linked.relative_to(side.root).as_posix()
    before = _digest(victim)
    _refused(
        side, linked, PermissionError, "outside the data root", lambda: api.write_mask(rel, mask())
    )
    with pytest.raises(PermissionError):
        api.list_mask_versions(rel)
    with pytest.raises(PermissionError):
        api.read_mask(rel)
    assert _digest(victim) == before


def test_external_link_without_a_root_is_refused_for_writes(workdir: Path, tmp_path: Path) -> None:
    linked, victim = _with_external_simplemask(workdir, tmp_path)
    facade = HDF5Facade(pool=HDF5ConnectionPool(max_size=2))
    before = (_digest(linked), _digest(victim))
    with pytest.raises(ValueError, match="external link"):
        facade.write_mask(linked, mask())
    assert (_digest(linked), _digest(victim)) == before


def test_external_link_inside_the_root_is_refused_for_writes(side: Side, workdir: Path) -> None:
    other = _native(workdir, "other.hdf5")
    with h5py.File(other, "a") as f:
        f.create_group("/store")
    path = _native(workdir, "main.hdf5")
    with h5py.File(path, "a") as f:
        f["/simplemask"] = h5py.ExternalLink("other.hdf5", "/store")
    before = _digest(other)
    _refused(
        side,
        path,
        ValueError,
        "external link",
        lambda: side.api.write_mask(side.path(path), mask()),
    )
    assert _digest(other) == before


def test_external_link_inside_the_version_store(side: Side, workdir: Path, tmp_path: Path) -> None:
    outside = _native(tmp_path, "outside.hdf5")
    with h5py.File(outside, "a") as f:
        f.create_group("/v")
    path = workdir / "store.hdf5"
    p = side.path(path)
    side.api.write_mask(p, mask(1))
    if side.name == "local":
        side.api.clear_pool()
    with h5py.File(path, "a", locking=False) as f:
        f["/simplemask/mask/versions/v000002"] = h5py.ExternalLink(str(outside), "/v")
    api = _rooted(side, side.root)
    rel = path.relative_to(side.root).as_posix()
    before = _digest(outside)
    _refused(
        side, path, PermissionError, "outside the data root", lambda: api.write_mask(rel, mask(2))
    )
    with pytest.raises(PermissionError):
        api.list_mask_versions(rel)
    assert _digest(outside) == before


def test_soft_links_leaving_the_group_are_refused(side: Side, workdir: Path) -> None:
    path = _native(workdir)
    with h5py.File(path, "a") as f:
        f["/simplemask"] = h5py.SoftLink("/xpcs")  # a component that is a soft link
        f.create_group("/masks/a")
        f["/masks/a/mask"] = h5py.SoftLink("/xpcs/qmap/mask")  # a member leaving the group
    p = side.path(path)
    _refused(side, path, ValueError, "soft link", lambda: side.api.write_mask(p, mask()))
    _refused(
        side,
        path,
        ValueError,
        "soft link",
        lambda: side.api.write_mask(p, mask(), group="/masks/a"),
    )


def test_virtual_dataset_with_outside_source_is_refused(
    side: Side, workdir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source.hdf5"
    with h5py.File(source, "w") as f:
        f["m"] = np.ones(SHAPE, np.uint8)
    path = workdir / "vds.hdf5"
    layout = h5py.VirtualLayout(shape=SHAPE, dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(source), "m", shape=SHAPE)
    with h5py.File(path, "w") as f:
        g = f.create_group("/simplemask/mask")
        g.create_virtual_dataset("mask", layout)
        g.create_group("metadata")
    api = _rooted(side, side.root)
    rel = path.relative_to(side.root).as_posix()
    _refused(
        side, path, PermissionError, "outside the data root", lambda: api.write_mask(rel, mask())
    )
    with pytest.raises(PermissionError):
        api.list_mask_versions(rel)


def test_soft_link_inside_the_group_chaining_out_is_not_followed(
    side: Side, workdir: Path, tmp_path: Path
) -> None:
    outside = _native(tmp_path, "chain_target.hdf5")
    path = workdir / "chain.hdf5"
    with h5py.File(path, "w") as f:
        g = f.create_group("/simplemask/mask")
        g["hop"] = h5py.ExternalLink(str(outside), "/xpcs/qmap/mask")
        g["mask"] = h5py.SoftLink("/simplemask/mask/hop")
    api = _rooted(side, side.root)
    rel = path.relative_to(side.root).as_posix()
    before = _digest(outside)
    _refused(side, path, ValueError, "soft link", lambda: api.write_mask(rel, mask()))
    assert api.list_mask_versions(rel) == []  # a soft-linked mask is not found data
    with pytest.raises(KeyError, match="holds no versions"):
        api.read_mask(rel)
    assert _digest(outside) == before

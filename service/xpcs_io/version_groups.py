"""What a group holding masks or partitions looks like, and where a write (or a read of a
group) may go.

A versioned write touches only groups that are, or will become, this service's versioned
mask/partition groups (see ``xpcs_io.versions``). ``check_write_target`` enforces that on the
writable file before anything is created:

- every existing component of the group path is a plain (hard-linked) group: never an HDF5
  external link (another file, perhaps outside the data root), a soft link (another place), or
  a dataset;
- no component lies inside another version store or inside a group of the reference facade's
  layout (``/simplemask/mask/versions/v000001`` is a stored version, not a group to write to);
- an existing target group is one of: a version store of the same kind, a group in the
  reference facade's unversioned layout (kept as version 1 by the write), or an empty group;
  any other group holds data this service did not write (``/xpcs``, ``/xpcs/qmap``) and is
  refused;
- every member the write reads, links or replaces is a hard link, a soft link staying inside
  the group, or a dataset whose bytes live in this file (no virtual dataset reaching another
  file).

Refusals raise ``ValueError`` naming the group and why, or ``PermissionError`` when a link
leads to a file outside the data root; the caller aborts the edit, so the file is untouched.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

import h5py

from xpcs_io.h5access import Locator
from xpcs_io.paths import inside_root

__all__ = [
    "KIND_MEMBERS",
    "MANAGED_ATTRS",
    "PRIMARY",
    "VERSIONS",
    "check_read_path",
    "check_write_target",
    "is_found_layout",
    "is_version_name",
    "is_version_store",
    "members_of",
]

VERSIONS = "versions"
#: The arrays each kind stores (the reference facade's dataset names).
KIND_MEMBERS: dict[str, tuple[str, ...]] = {
    "mask": ("mask",),
    "partition": ("partition_map", "val_list", "num_list", "mask"),
}
#: The array whose bytes identify a version (its sha256).
PRIMARY = {"mask": "mask", "partition": "partition_map"}
#: Group attributes a write sets: earlier values are kept in the version records.
MANAGED_ATTRS = (
    "current_version",
    "version",
    "description",
    "num_pts",
    "method",
    "bcx",
    "bcy",
    "det_dist",
    "lambda_",
    "pix_dim",
    "det_rotation",
    "incident_angle",
    "shape",
)


def members_of(kind: str) -> tuple[str, ...]:
    """The member names a group of ``kind`` holds at its top: arrays and ``metadata``."""
    return (*KIND_MEMBERS[kind], "metadata")


def is_version_name(name: str) -> bool:
    """Whether ``name`` is a stored version's name (``v000001``)."""
    return len(name) == 7 and name[0] == "v" and name[1:].isdigit()


def _hard(grp: h5py.Group, name: str) -> Any:
    """The member ``name`` when it is a hard link, else None (never follows a link)."""
    link = grp.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        return None
    return grp[name]


def is_version_store(grp: h5py.Group) -> bool:
    """Whether ``grp`` is a versioned group this service wrote (a ``versions`` subgroup of
    ``v000001``-style members, or the ``current_version`` attribute)."""
    if "current_version" in grp.attrs:
        return True
    store = _hard(grp, VERSIONS)
    return isinstance(store, h5py.Group) and any(is_version_name(n) for n in store)


def is_found_layout(grp: h5py.Group, kind: str) -> bool:
    """Whether ``grp`` is an unversioned group of ``kind`` as the reference facade's
    ``write_mask`` / ``write_partition`` leave it: its primary dataset, and no member other
    than that kind's arrays and ``metadata``."""
    if grp.get(VERSIONS, getlink=True) is not None or "current_version" in grp.attrs:
        return False
    names = set(grp)
    if PRIMARY[kind] not in names or not names <= set(members_of(kind)):
        return False
    return isinstance(_hard(grp, PRIMARY[kind]), h5py.Dataset)


def _outside(holder: str, target: str, root: Path | None) -> bool:
    if root is None:
        return False
    base = Path(os.path.dirname(os.path.realpath(holder)))
    candidate = Path(target) if os.path.isabs(target) else base / target
    real = Path(os.path.realpath(candidate))
    return not inside_root(root, real)


def _refuse_external(holder: str, target: str, where: str, root: Path | None, display: str) -> None:
    if root is not None:
        # Writes never follow a link, so the holder is the file named: beneath a root, its
        # place is the root joined with the caller's path (the open handle may be a copy of it,
        # or a file object without a usable name).
        holder = str(root / display)
    if _outside(holder, target, root):
        raise PermissionError(f"{display}: {where} links to a file outside the data root")
    raise ValueError(
        f"{display}: {where} is an HDF5 external link to {target!r}: a write changes only the "
        "file it names"
    )


def _check_member(grp: h5py.Group, name: str, scope: str, root: Path | None, display: str) -> None:
    """Refuse member ``name`` of ``grp`` unless it is stored in ``scope`` (an HDF5 path): a
    hard link, and if a dataset, one whose bytes live in this file."""
    where = f"{grp.name.rstrip('/')}/{name}"
    link = grp.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        _refuse_external(grp.file.filename, link.filename, where, root, display)
    if isinstance(link, h5py.SoftLink):
        # This service never makes soft links; one inside the group could still chain to an
        # external link, so none is followed.
        target = posixpath.normpath(posixpath.join(grp.name, link.path))
        leaves = not target.startswith(scope.rstrip("/") + "/")
        raise ValueError(
            f"{display}: {where} is a soft link{f' leaving {scope}' if leaves else ''} "
            f"(to {link.path}); writes touch only objects stored in the group they name"
        )
    node = grp.get(name)
    if isinstance(node, h5py.Dataset) and node.is_virtual:
        for source in node.virtual_sources():
            if source.file_name != ".":
                _refuse_external(grp.file.filename, source.file_name, where, root, display)


def _check_tree(grp: h5py.Group, kind: str, root: Path | None, display: str) -> None:
    """Check every member a write reads, links or replaces in the existing group ``grp``."""
    scope = grp.name
    for name in members_of(kind):
        if grp.get(name, getlink=True) is not None:
            _check_member(grp, name, scope, root, display)
    if grp.get(VERSIONS, getlink=True) is None:
        return
    _check_member(grp, VERSIONS, scope, root, display)
    store = grp[VERSIONS]
    if not isinstance(store, h5py.Group):
        raise ValueError(f"{display}: {scope}/{VERSIONS} is not a group of versions")
    names = sorted(n for n in store if is_version_name(n))
    for name in names:
        _check_member(store, name, scope, root, display)
    if names:
        newest = store[names[-1]]
        for name in (*members_of(kind), "partition_map"):
            if newest.get(name, getlink=True) is not None:
                _check_member(newest, name, scope, root, display)


def _check_kind(grp: h5py.Group, kind: str, group: str, display: str) -> None:
    store = grp[VERSIONS] if grp.get(VERSIONS, getlink=True) is not None else None
    names = sorted(n for n in store if is_version_name(n)) if store is not None else []
    if not names:
        return
    newest = store[names[-1]]  # type: ignore[index]
    holds_partitions = newest.get("partition_map", getlink=True) is not None
    if holds_partitions != (kind == "partition"):
        other = "partitions" if holds_partitions else "masks"
        raise ValueError(f"{display}: {group} holds {other}, not {kind}s")


def check_write_target(
    h5: h5py.File, group: str, kind: str, *, root: Path | None, display: str
) -> None:
    """Refuse a versioned write of ``kind`` ("mask" or "partition") into ``group`` unless the
    group is, or will become, one of this service's versioned groups (see the module).

    Raises:
        ValueError: the path or the group holds something a write must not touch.
        PermissionError: a link on the way leads to a file outside the data root.
    """
    node: h5py.Group = h5["/"]
    parts = [p for p in group.split("/") if p]
    for i, part in enumerate(parts):
        walked = "/" + "/".join(parts[: i + 1])
        link = node.get(part, getlink=True)
        if link is None:
            return  # the rest of the path is new: created by the write
        if isinstance(link, h5py.ExternalLink):
            _refuse_external(node.file.filename, link.filename, walked, root, display)
        if isinstance(link, h5py.SoftLink):
            raise ValueError(
                f"{display}: {walked} is a soft link (to {link.path}): name the group itself"
            )
        child = node[part]
        if not isinstance(child, h5py.Group):
            raise ValueError(f"{display}: cannot write into {group}: {walked} is a dataset")
        if i < len(parts) - 1 and (
            is_version_store(child) or any(is_found_layout(child, k) for k in KIND_MEMBERS)
        ):
            raise ValueError(
                f"{display}: {group} lies inside the versioned group {walked}: versions are "
                "never rewritten; write to the group itself"
            )
        node = child
    _check_tree(node, kind, root, display)  # before anything below follows a member
    if is_version_store(node):
        _check_kind(node, kind, group, display)
    elif is_found_layout(node, kind):
        pass  # the reference facade's layout: kept as the first version
    elif len(node) or any(key in node.attrs for key in MANAGED_ATTRS):
        names = sorted(node)[:8]
        raise ValueError(
            f"{display}: {group} holds data this service did not write ({', '.join(names)}"
            f"{', ...' if len(node) > 8 else ''}); a {kind} write goes to a new group or to "
            f"one of its own {kind} groups (default /simplemask/{kind})"
        )


def check_read_path(loc: Locator, group: str) -> None:
    """Refuse to read a group that lies inside a versioned group (a stored version is read
    with ``version=``, not as a group of its own).

    Raises:
        ValueError: an ancestor of ``group`` is a versioned group.
        PermissionError: a link on the way leads outside the data root.
    """
    parts = [p for p in group.split("/") if p]
    for i in range(1, len(parts)):
        walked = "/" + "/".join(parts[:i])
        try:
            node = loc.get(walked)
        except KeyError:
            return
        if isinstance(node, h5py.Group) and (
            is_version_store(node) or any(is_found_layout(node, k) for k in KIND_MEMBERS)
        ):
            raise ValueError(
                f"{group} lies inside the versioned group {walked} of {loc.display}: read "
                f"{walked} with version=N"
            )

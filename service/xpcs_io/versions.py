"""Versioned storage of masks and partitions inside an HDF5 group.

Layout of a versioned group such as ``/simplemask/mask``::

    /simplemask/mask                  attrs: current_version, version (schema label), description,
    │                                        and the geometry as attributes
    ├── mask                          hard link to versions/v000003/mask (where the reference
    │                                 facade's write_mask puts it)
    ├── metadata/                     hard link to versions/v000003/metadata
    └── versions/
        ├── v000001/                  attrs: version, origin, created, description, sha256,
        │   ├── mask                         schema_version, writer, dtype, shape,
        │   │                                idempotency_key (when the write carried one)
        │   └── metadata/             bcx, bcy, det_dist, lambda_, pix_dim as datasets AND as
        │                             attributes (where the reference facade reads them),
        │                             shape attribute
        └── v000003/ ...

Hard links mean the current version costs no extra space. A version is never rewritten; each
write adds ``v{n+1}``. ``sha256`` is taken over the array's C-order bytes in its stored dtype.

Data another program left in the group (the reference facade's unversioned ``write_mask`` /
``write_partition`` layout, or a top-level ``mask`` that is not the current version's) is
*found data*: listed as the newest entry with ``origin: "found"`` (no invented time or writer;
its sha256 computed from its bytes), read as such, and kept by the next write, which first
stores it as a version of its own (hard links, no copy) and then adds the new one. A write
never removes what it did not write.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from xpcs_io.h5access import Locator, decode_str
from xpcs_io.idempotency import ReplayedWrite, request_sha256
from xpcs_io.layouts.native import GEOMETRY_FIELDS, OPTIONAL_GEOMETRY, read_geometry, write_geometry
from xpcs_io.schemas import GeometryMetadata
from xpcs_io.version_groups import (
    MANAGED_ATTRS,
    PRIMARY,
    VERSIONS,
    check_read_path,
    check_write_target,
    is_found_layout,
    is_version_name,
    members_of,
)

__all__ = [
    "ORIGIN_FOUND",
    "ORIGIN_WRITTEN",
    "VERSIONS",
    "array_sha256",
    "default_writer",
    "find_replay",
    "holds_entries",
    "list_versions",
    "read_geometry_any",
    "read_version",
    "write_version",
]

ORIGIN_WRITTEN = "xpcs-io"
ORIGIN_FOUND = "found"
#: Record keys a found version's copied attributes must not shadow.
_RECORD_ATTRS = frozenset(
    {"version", "origin", "created", "description", "sha256", "schema_version", "writer"}
    | {"dtype", "shape", "idempotency_key", "request_sha256"}
)


def array_sha256(arr: np.ndarray[Any, Any]) -> str:
    """Hex sha256 of ``arr``'s bytes in C order and its own dtype."""
    data: Any = np.ascontiguousarray(arr)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def default_writer() -> str:
    """The identity recorded when a write names none: the process user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers with arbitrary uids)
        return f"uid:{os.getuid()}"


def _vname(n: int) -> str:
    return f"v{n:06d}"


def _numbers(store: h5py.Group | None) -> list[int]:
    if store is None:
        return []
    return sorted(int(name[1:]) for name in store if is_version_name(name))


def _str_or_none(value: Any) -> str | None:
    try:
        return decode_str(value)
    except TypeError:
        return None


_TEXT_FIELDS = ("origin", "created", "description", "sha256", "schema_version", "writer")
_OPTIONAL_TEXT = ("dtype", "idempotency_key")


def _record(attrs: Mapping[str, Any], number: int) -> dict[str, Any]:
    # One read per attribute present (the listing of many versions is attribute reads).
    names = set(attrs.keys())
    raw = {k: attrs[k] for k in (*_TEXT_FIELDS, *_OPTIONAL_TEXT, "shape") if k in names}
    out: dict[str, Any] = {"version": number}
    for key in _TEXT_FIELDS:
        out[key] = _str_or_none(raw[key]) if key in raw else None
    out["origin"] = out["origin"] or ORIGIN_WRITTEN
    if "dtype" in raw:
        out["dtype"] = _str_or_none(raw["dtype"])
    if "shape" in raw:
        out["shape"] = [int(v) for v in np.asarray(raw["shape"]).ravel()]
    if "idempotency_key" in raw:
        out["idempotency_key"] = _str_or_none(raw["idempotency_key"])
    return out


# ---------------------------------------------------------------------- found data


def _found_members(grp: h5py.Group, kind: str, current: h5py.Group | None) -> list[str]:
    """Top-level members of ``grp`` that are not the current stored version's (found data):
    all of them in the reference facade's layout, none in a group only this service wrote."""
    if current is None:
        return list(members_of(kind)) if is_found_layout(grp, kind) else []
    names = [n for n in members_of(kind) if grp.get(n, getlink=True) is not None]
    return [n for n in names if current.get(n, getlink=True) is None or grp[n] != current[n]]


def _found_attrs(grp: h5py.Group, pure: bool, primary: Any, *, keep_all: bool) -> dict[str, Any]:
    """The record of found data: what the bytes and (for the reference facade's own layout)
    the group's attributes say; nothing invented. ``keep_all`` adds every other attribute of
    the group (what a write replaces must be kept with the version).

    Raises:
        ValueError: ``keep_all`` and an attribute a write replaces cannot be read.
    """
    arr = np.asarray(primary)
    attrs: dict[str, Any] = {
        "origin": ORIGIN_FOUND,
        "sha256": array_sha256(arr),
        "dtype": arr.dtype.str,
        "shape": np.asarray(arr.shape, dtype=np.int64),
    }
    if not pure:  # the group's attributes describe the stored current version, not this
        return attrs
    for key in grp.attrs:
        if not keep_all and key not in ("version", "description"):
            continue
        try:
            value = grp.attrs[key]
        except (OSError, TypeError) as exc:
            if keep_all and key in MANAGED_ATTRS:
                raise ValueError(
                    f"{grp.name}: attribute {key!r} cannot be read ({exc}), so a write could "
                    "not keep it"
                ) from None
            continue  # left on the group, untouched
        if key == "version":
            attrs["schema_version"] = value
        elif key == "description":
            attrs["description"] = value
        else:
            attrs[f"found_{key}" if key in _RECORD_ATTRS else key] = value
    return attrs


def _found_record(loc: Locator, group: str, kind: str, number: int, pure: bool) -> dict[str, Any]:
    grp = loc.group(group)
    primary = loc.read(group, PRIMARY[kind])
    return _record(_found_attrs(grp, pure, primary, keep_all=False), number)


# ---------------------------------------------------------------------- reads (guarded)


def _state(loc: Locator, group: str, kind: str) -> tuple[list[int], list[str], bool]:
    """(stored version numbers, found member names, whether the group is purely the
    reference facade's layout), every object reached through the locator's link guard."""
    check_read_path(loc, group)
    grp = loc.group(group)
    store = loc.group(f"{group.rstrip('/')}/{VERSIONS}") if loc.has(grp, VERSIONS) else None
    numbers = _numbers(store)
    current = None
    if numbers:
        current = loc.group(f"{group.rstrip('/')}/{VERSIONS}/{_vname(numbers[-1])}")
        for name in members_of(kind):  # walk each compared member through the guard
            if loc.has(grp, name):
                loc.get(f"{group.rstrip('/')}/{name}")
            if loc.has(current, name):
                loc.get(f"{current.name}/{name}")
    # Found data is listed by its primary array: without it there is nothing to list.
    found = _found_members(grp, kind, current) if loc.has(grp, PRIMARY[kind]) else []
    if found:
        loc.dataset(group, PRIMARY[kind])  # the guard for the bytes a record hashes
    return numbers, found, not numbers


def holds_entries(loc: Locator, group: str, kind: str) -> bool:
    """Whether ``group`` exists and holds stored versions or found data of ``kind``."""
    try:
        node = loc.get(group)
    except KeyError:
        return False
    if not isinstance(node, h5py.Group):
        return False
    numbers, found, _ = _state(loc, group, kind)
    return bool(numbers or found)


def list_versions(loc: Locator, group: str, kind: str) -> list[dict[str, Any]]:
    """The version records of ``group``, oldest first; found data last, numbered after the
    stored versions, with ``origin: "found"``.

    Raises:
        KeyError: the group does not exist.
        ValueError: the group lies inside another versioned group.
        PermissionError: a link on the way leads outside the data root.
    """
    numbers, found, pure = _state(loc, group, kind)
    base = f"{group.rstrip('/')}/{VERSIONS}"
    out = [_record(loc.group(f"{base}/{_vname(n)}").attrs, n) for n in numbers]
    if found:
        out.append(_found_record(loc, group, kind, max(numbers, default=0) + 1, pure))
    return out


def read_geometry_any(loc: Locator, path: str) -> GeometryMetadata:
    """Geometry stored as datasets (this service) or only as attributes (the reference
    facade's ``metadata`` subgroup), unchecked.

    Raises:
        KeyError: neither form is complete (the message names the group).
    """
    grp = loc.group(path)
    if all(loc.has(grp, name) for name in GEOMETRY_FIELDS):
        return read_geometry(loc, path)
    attrs = grp.attrs
    missing = [name for name in (*GEOMETRY_FIELDS, "shape") if name not in attrs]
    if missing:
        raise KeyError(f"{path} in {loc.display}: geometry incomplete, missing {missing}")
    fields: dict[str, Any] = {}
    for name in (*GEOMETRY_FIELDS, *OPTIONAL_GEOMETRY):
        if name in attrs:
            value = np.asarray(attrs[name])
            fields[name] = value.reshape(()).item() if value.size == 1 else value
    shape = np.asarray(attrs["shape"]).ravel()
    fields["shape"] = tuple(int(v) for v in shape) if shape.dtype.kind in "iuf" else shape
    return GeometryMetadata.unchecked(**fields)


def _kind_attrs(grp: h5py.Group) -> dict[str, Any]:
    """The partition attributes (``num_pts``, ``method``) of a version or found group."""
    return {key: grp.attrs[key] for key in ("num_pts", "method") if key in grp.attrs}


def read_version(
    loc: Locator, group: str, kind: str, version: int | None
) -> tuple[dict[str, Any], str, GeometryMetadata, dict[str, Any]]:
    """Locate one version: returns (record, HDF5 path of the group holding its arrays,
    geometry, that group's attributes). Found data is the newest version.

    Raises:
        KeyError: the group has no versions, or not that one (the message lists them).
        TypeError: ``version`` is not an integer.
        ValueError: the group lies inside another versioned group.
    """
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise TypeError(f"version must be an integer or None, got {type(version).__name__}")
    numbers, found, pure = _state(loc, group, kind)
    available = numbers + ([max(numbers, default=0) + 1] if found else [])
    if not available:
        raise KeyError(f"{group} in {loc.display} holds no versions")
    number = available[-1] if version is None else version
    if number not in available:
        raise KeyError(f"version {number} of {group} not found in {loc.display}; have {available}")
    if found and number == available[-1]:
        grp = loc.group(group)
        record = _found_record(loc, group, kind, number, pure)
        if loc.has(grp, "metadata"):
            geometry = read_geometry_any(loc, f"{group.rstrip('/')}/metadata")
        else:
            raise KeyError(f"{group}/metadata (the geometry) not found in {loc.display}")
        return record, group, geometry, _kind_attrs(grp) if pure else {}
    vpath = f"{group.rstrip('/')}/{VERSIONS}/{_vname(number)}"
    vgrp = loc.group(vpath)
    geometry = read_geometry_any(loc, f"{vpath}/metadata")
    return _record(vgrp.attrs, number), vpath, geometry, _kind_attrs(vgrp)


# ---------------------------------------------------------------------- writes


def _ensure_group(h5: h5py.File, path: str) -> h5py.Group:
    # check_write_target has made sure every existing component is a hard-linked group.
    node: h5py.Group = h5["/"]
    for part in [p for p in path.split("/") if p]:
        node = node.require_group(part)
    return node


def _match_key(n: int, attrs: Any, key: str, request_sha: str) -> dict[str, Any] | None:
    if "idempotency_key" not in attrs or _str_or_none(attrs["idempotency_key"]) != key:
        return None
    if _str_or_none(attrs.get("request_sha256")) != request_sha:
        raise ValueError(
            f"idempotency key {key!r} was used for a different write (version {n}); "
            "use a new key for each write"
        )
    return _record(attrs, n)


def _replayed(store: h5py.Group | None, key: str, request_sha: str) -> dict[str, Any] | None:
    for n in reversed(_numbers(store)):
        found = _match_key(n, store[_vname(n)].attrs, key, request_sha)  # type: ignore[index]
        if found is not None:
            return found
    return None


def find_replay(loc: Locator, group: str, key: str, request_sha: str) -> dict[str, Any] | None:
    """The record of the version a write under ``key`` stored in ``group``, or None (every
    object reached through the locator's link guard).

    Raises:
        ValueError: the key was used for a different write.
    """
    try:
        grp = loc.group(group)
    except KeyError:
        return None
    if not loc.has(grp, VERSIONS):
        return None
    base = f"{group.rstrip('/')}/{VERSIONS}"
    for n in reversed(_numbers(loc.group(base))):
        found = _match_key(n, loc.group(f"{base}/{_vname(n)}").attrs, key, request_sha)
        if found is not None:
            return found
    return None


def _keep_found(grp: h5py.Group, store: h5py.Group, kind: str, names: list[str], n: int) -> None:
    """Store found data as version ``n`` (hard links to its objects: no copy)."""
    pure = not _numbers(store)
    vgrp = store.create_group(_vname(n))
    for name in names:
        if grp.get(name, getlink=True) is not None:
            vgrp[name] = grp[name]
    attrs = _found_attrs(grp, pure, grp[PRIMARY[kind]][()], keep_all=True)
    vgrp.attrs["version"] = n
    for key, value in attrs.items():
        vgrp.attrs[key] = value


def write_version(
    h5: h5py.File,
    group: str,
    kind: str,
    arrays: Mapping[str, np.ndarray[Any, Any] | None],
    *,
    metadata: GeometryMetadata,
    attrs: Mapping[str, Any],
    description: str | None,
    schema_version: str,
    writer: str,
    compression: str | int | None,
    compression_opts: Any,
    idempotency_key: str | None = None,
    request_sha: str | None = None,
    root: Path | None = None,
    display: str | None = None,
) -> dict[str, Any]:
    """Add a version of ``kind`` holding ``arrays`` to ``group``, make it current, and
    return its record. Found data in the group is first kept as a version of its own.

    With ``idempotency_key``, a version already stored under that key is not written again:
    ``ReplayedWrite`` carries its record (the caller abandons the edit). ``request_sha`` is
    the write's ``request_sha256`` when the caller has it already.

    Raises:
        ValueError: the group may not be written (see ``check_write_target``), the key was
            used for a different write, or the compression is invalid.
        PermissionError: a link on the way leads outside the data root.
        ReplayedWrite: the write was made before under ``idempotency_key``.
    """
    check_write_target(h5, group, kind, root=root, display=display or h5.filename)
    grp = _ensure_group(h5, group)
    primary = PRIMARY[kind]
    req_sha = request_sha or request_sha256(
        kind, arrays, metadata, attrs, description, schema_version
    )
    store = grp.get(VERSIONS, None)
    if idempotency_key is not None:
        previous = _replayed(store, idempotency_key, req_sha)
        if previous is not None:
            raise ReplayedWrite(previous)
    numbers = _numbers(store)
    current = store[_vname(numbers[-1])] if numbers and store is not None else None
    found = _found_members(grp, kind, current)
    if found and grp.get(primary, getlink=True) is None:
        raise ValueError(
            f"{display or h5.filename}: {group} holds {', '.join(found)} written by another "
            f"program without a {primary}: not replaced by a write"
        )
    store = grp.require_group(VERSIONS)
    number = max(numbers, default=0) + 1
    if found:
        # Every top-level member goes into the kept version: a found mask belongs with the
        # geometry beside it, even where that geometry is still the current version's.
        _keep_found(grp, store, kind, list(members_of(kind)), number)
        number += 1

    vgrp = store.create_group(_vname(number))
    for name, arr in arrays.items():
        if arr is None:
            continue
        kwargs: dict[str, Any] = {}
        if compression is not None and arr.ndim > 0 and arr.size > 0:
            kwargs = {"compression": compression, "compression_opts": compression_opts}
        vgrp.create_dataset(name, data=arr, **kwargs)
    write_geometry(vgrp.create_group("metadata"), metadata)
    main = np.asarray(arrays[primary])
    record: dict[str, Any] = {
        "version": number,
        "origin": ORIGIN_WRITTEN,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        "sha256": array_sha256(main),
        "schema_version": schema_version,
        "writer": writer,
        "dtype": main.dtype.str,
        "shape": np.asarray(main.shape, dtype=np.int64),
        "description": description,
        "idempotency_key": idempotency_key,
        "request_sha256": req_sha,
    }
    for key, value in {**record, **attrs}.items():
        if value is not None:
            vgrp.attrs[key] = value

    # Point the reference facade's location at the new version (hard links: no copy). Every
    # top-level member replaced here is held by a stored version (just kept, if it was found).
    for name in members_of(kind):
        if grp.get(name, getlink=True) is not None:
            del grp[name]
    for name in members_of(kind):
        if name in vgrp:
            grp[name] = vgrp[name]
    for key in MANAGED_ATTRS:
        if key in grp.attrs:
            del grp.attrs[key]
    grp.attrs["current_version"] = number
    grp.attrs["version"] = schema_version
    if description is not None:
        grp.attrs["description"] = description
    for key, value in attrs.items():
        if value is not None:
            grp.attrs[key] = value
    # Earlier releases also put the geometry on the group itself; readers may rely on it.
    for key in (*GEOMETRY_FIELDS, *OPTIONAL_GEOMETRY):
        value = getattr(metadata, key)
        if value is not None:
            grp.attrs[key] = value
    grp.attrs["shape"] = np.asarray(metadata.shape, dtype=np.int64)
    return _record(vgrp.attrs, number)

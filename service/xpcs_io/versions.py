"""Versioned storage of masks and partitions inside an HDF5 group.

Layout of a versioned group such as ``/simplemask/mask``::

    /simplemask/mask                  attrs: current_version, version (schema label), description,
    │                                        and the geometry as attributes (the seed's layout)
    ├── mask                          hard link to versions/v000003/mask (where the seed reads it)
    ├── metadata/                     hard link to versions/v000003/metadata
    └── versions/
        ├── v000001/                  attrs: version, created, description, sha256, schema_version,
        │   ├── mask                         writer, dtype, shape
        │   └── metadata/             bcx, bcy, det_dist, lambda_, pix_dim (+ shape attribute)
        └── v000003/ ...

Hard links mean the current version costs no extra space. A version is never rewritten; each
write adds ``v{n+1}``. ``sha256`` is taken over the array's C-order bytes in its stored dtype.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np

from xpcs_io.h5access import Locator, decode_str
from xpcs_io.layouts.native import read_geometry, write_geometry
from xpcs_io.schemas import GeometryMetadata

__all__ = [
    "VERSIONS",
    "array_sha256",
    "default_writer",
    "list_versions",
    "read_version",
    "write_version",
]

VERSIONS = "versions"
RECORD_KEYS = ("version", "created", "description", "sha256", "schema_version", "writer")


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


def _ensure_group(h5: h5py.File, path: str) -> h5py.Group:
    node: h5py.Group = h5["/"]
    for part in [p for p in path.split("/") if p]:
        existing = node.get(part, getlink=True)
        if existing is None:
            node = node.create_group(part)
            continue
        child = node[part]
        if not isinstance(child, h5py.Group):
            raise ValueError(f"cannot write into {path}: {child.name} is a dataset, not a group")
        node = child
    return node


def _existing_numbers(grp: h5py.Group) -> list[int]:
    if VERSIONS not in grp:
        return []
    out = []
    for name in grp[VERSIONS]:
        if name.startswith("v") and name[1:].isdigit():
            out.append(int(name[1:]))
    return sorted(out)


def write_version(
    h5: h5py.File,
    group: str,
    arrays: Mapping[str, np.ndarray[Any, Any] | None],
    *,
    primary: str,
    metadata: GeometryMetadata,
    attrs: Mapping[str, Any],
    description: str | None,
    schema_version: str,
    writer: str,
    compression: str | int | None,
    compression_opts: Any,
) -> dict[str, Any]:
    """Add a version holding ``arrays`` to ``group`` and make it current; return its record.

    ``primary`` names the array whose sha256 identifies the version.

    Raises:
        ValueError: the group path runs through a dataset, or the compression is invalid.
    """
    grp = _ensure_group(h5, group)
    number = max(_existing_numbers(grp), default=0) + 1
    vgrp = grp.require_group(VERSIONS).create_group(_vname(number))
    for name, arr in arrays.items():
        if arr is None:
            continue
        kwargs: dict[str, Any] = {}
        if compression is not None and arr.ndim > 0 and arr.size > 0:
            kwargs = {"compression": compression, "compression_opts": compression_opts}
        vgrp.create_dataset(name, data=arr, **kwargs)
    write_geometry(vgrp.create_group("metadata"), metadata)
    record = {
        "version": number,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        "sha256": array_sha256(np.asarray(arrays[primary])),
        "schema_version": schema_version,
        "writer": writer,
        "dtype": np.asarray(arrays[primary]).dtype.str,
        "shape": np.asarray(np.asarray(arrays[primary]).shape, dtype=np.int64),
    }
    if description is not None:
        record["description"] = description
    for key, value in {**record, **attrs}.items():
        if value is not None:
            vgrp.attrs[key] = value

    # Point the seed's current location at the new version (hard links: no copy).
    for name in (*arrays, "metadata"):
        if grp.get(name, getlink=True) is not None:
            del grp[name]
    for name in (*arrays, "metadata"):
        if name in vgrp:
            grp[name] = vgrp[name]
    for key in list(grp.attrs):
        del grp.attrs[key]
    grp.attrs["current_version"] = number
    grp.attrs["version"] = schema_version
    if description is not None:
        grp.attrs["description"] = description
    for key, value in attrs.items():
        if value is not None:
            grp.attrs[key] = value
    # The seed stored the geometry as attributes of the group; keep that for its readers.
    for key in ("bcx", "bcy", "det_dist", "lambda_", "pix_dim", "det_rotation", "incident_angle"):
        value = getattr(metadata, key)
        if value is not None:
            grp.attrs[key] = value
    grp.attrs["shape"] = np.asarray(metadata.shape, dtype=np.int64)
    return _record(vgrp)


def _record(vgrp: h5py.Group) -> dict[str, Any]:
    attrs = vgrp.attrs
    out: dict[str, Any] = {
        "version": int(attrs["version"]),
        "created": decode_str(attrs["created"]),
        "description": decode_str(attrs["description"]) if "description" in attrs else None,
        "sha256": decode_str(attrs["sha256"]),
        "schema_version": decode_str(attrs["schema_version"]),
        "writer": decode_str(attrs["writer"]),
    }
    if "dtype" in attrs:
        out["dtype"] = decode_str(attrs["dtype"])
    if "shape" in attrs:
        out["shape"] = [int(v) for v in np.asarray(attrs["shape"])]
    return out


def list_versions(loc: Locator, group: str) -> list[dict[str, Any]]:
    """The version records of ``group``, oldest first.

    Raises:
        KeyError: the group does not exist.
    """
    grp = loc.group(group)
    return [_record(grp[VERSIONS][_vname(n)]) for n in _existing_numbers(grp)]


def read_version(
    loc: Locator, group: str, version: int | None
) -> tuple[dict[str, Any], str, GeometryMetadata, dict[str, Any]]:
    """Locate one version: returns (record, HDF5 path of its group, geometry, group attrs).

    Raises:
        KeyError: the group has no versions, or not that one (the message lists them).
        TypeError: ``version`` is not an integer.
    """
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise TypeError(f"version must be an integer or None, got {type(version).__name__}")
    grp = loc.group(group)
    numbers = _existing_numbers(grp)
    if not numbers:
        raise KeyError(f"{group} in {loc.display} holds no versions")
    number = numbers[-1] if version is None else version
    if number not in numbers:
        raise KeyError(f"version {number} of {group} not found in {loc.display}; have {numbers}")
    vpath = f"{group.rstrip('/')}/{VERSIONS}/{_vname(number)}"
    vgrp = loc.group(vpath)
    geometry = read_geometry(loc, f"{vpath}/metadata")
    return _record(vgrp), vpath, geometry, dict(vgrp.attrs)

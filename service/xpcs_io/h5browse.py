"""Browsing HDF5 files under the facade's guard, in h5grove's terms: the metadata of an
entity, its attributes and a dataset's values with a NumPy-style selection. No web code:
``xpcs_io.server.h5grove_api`` serves it.

- ``meta``: ``name``, ``kind`` ("group", "dataset", "soft_link", "external_link"),
  ``attributes`` (name, shape, type); datasets add ``shape``, ``chunks``, ``filters`` and
  ``type`` (``class``, ``dtype`` as ``dtype.str`` so byte order is explicit, ``size`` and the
  details h5web reads); groups add ``children`` one level down (links described, not
  followed).
- ``attrs``: attribute values. ``data``: values of a selection (``"0:10,::2"``), checked
  against the read limit before anything is read.

Errors: a missing entity is ``KeyError``; a malformed selection ``ValueError``; a link
leading outside the root ``PermissionError``; a selection above the read limit
``DatasetTooLargeError``.
"""

from __future__ import annotations

import math
import posixpath
from typing import Any

import h5py
import numpy as np

from xpcs_io.errors import HDF5ValidationError, PayloadTooLargeError
from xpcs_io.facade import HDF5Facade
from xpcs_io.h5access import check_read_size

__all__ = [
    "MAX_SELECTION_CHARS",
    "attrs",
    "data",
    "entity",
    "meta",
    "parse_selection",
    "plain",
    "plain_value",
    "selected_shape",
]

MAX_SELECTION_CHARS = 1024


def _member(text: str) -> slice | int:
    text = text.strip()
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return int(parts[0])
        if len(parts) in (2, 3):
            start, stop, *rest = (int(p) if p.strip() else None for p in parts)
            step = rest[0] if rest else None
            if step == 0:
                raise ValueError("slice step cannot be zero")
            return slice(start, stop, step)
    except ValueError as exc:
        raise ValueError(f"selection member {text!r} is not an index or a slice ({exc})") from None
    raise ValueError(f"selection member {text!r} is not an index or a slice")


def parse_selection(selection: str | None, shape: tuple[int, ...]) -> tuple[slice | int, ...]:
    """NumPy slicing text (``"0:10,::2"``) as a tuple for a dataset of ``shape``.

    Raises:
        ValueError: not slicing text, more members than axes, or an index out of range.
    """
    if selection is None or not selection.strip():
        return ()
    if len(selection) > MAX_SELECTION_CHARS:
        raise ValueError(f"selection longer than {MAX_SELECTION_CHARS} characters")
    members = tuple(_member(m) for m in selection.split(","))
    if len(members) > len(shape):
        raise ValueError(
            f"selection {selection!r} has {len(members)} members for a {len(shape)}-D dataset"
        )
    for axis, (m, n) in enumerate(zip(members, shape, strict=False)):
        if isinstance(m, int) and not -n <= m < n:
            raise ValueError(f"index {m} out of range for axis {axis} of length {n}")
    return members


def selected_shape(shape: tuple[int, ...], members: tuple[slice | int, ...]) -> tuple[int, ...]:
    """The shape ``members`` select from ``shape`` (computed on a zero-stride view)."""
    view = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))
    return tuple(int(n) for n in view[members].shape)


def _type(type_id: Any) -> dict[str, Any]:
    """HDF5 type as h5grove describes it: class, ``dtype.str``, size, and the details h5web
    reads (byte order and sign, string charset/padding/vlen, enum members, base types)."""
    try:
        text = type_id.dtype.str
    except (TypeError, ValueError):
        text = "|O"
    out: dict[str, Any] = {
        "class": int(type_id.get_class()),
        "dtype": text,
        "size": int(type_id.get_size()),
    }
    if isinstance(type_id, h5py.h5t.TypeIntegerID):
        out.update(order=int(type_id.get_order()), sign=int(type_id.get_sign()))
    elif isinstance(type_id, h5py.h5t.TypeFloatID):
        out["order"] = int(type_id.get_order())
    elif isinstance(type_id, h5py.h5t.TypeStringID):
        out.update(
            cset=int(type_id.get_cset()),
            strpad=int(type_id.get_strpad()),
            vlen=bool(type_id.is_variable_str()),
        )
    elif isinstance(type_id, h5py.h5t.TypeEnumID):
        n = type_id.get_nmembers()
        out["members"] = {
            type_id.get_member_name(i).decode("utf-8", errors="replace"): int(
                type_id.get_member_value(i)
            )
            for i in range(n)
        }
        out["base"] = _type(type_id.get_super())
    elif isinstance(type_id, h5py.h5t.TypeCompoundID):
        out["members"] = [
            {
                "name": type_id.get_member_name(i).decode("utf-8", errors="replace"),
                **_type(type_id.get_member_type(i)),
            }
            for i in range(type_id.get_nmembers())
        ]
    elif isinstance(type_id, h5py.h5t.TypeArrayID):
        out.update(dims=list(type_id.get_array_dims()), base=_type(type_id.get_super()))
    elif isinstance(type_id, h5py.h5t.TypeVlenID):
        out["base"] = _type(type_id.get_super())
    return out


def _attributes(obj: Any) -> list[dict[str, Any]]:
    out = []
    for name in sorted(obj.attrs.keys()):
        attr = h5py.h5a.open(obj.id, name.encode())
        out.append({"name": name, "shape": attr.shape, "type": _type(attr.get_type())})
    return out


def _filters(ds: h5py.Dataset) -> list[dict[str, Any]] | None:
    plist = ds.id.get_create_plist()
    n = plist.get_nfilters()
    if not n:
        return None
    return [
        {"id": int(f[0]), "name": f[3].decode(errors="replace")}
        for f in (plist.get_filter(i) for i in range(n))
    ]


def entity(name: str, obj: Any, depth: int) -> dict[str, Any]:
    """h5grove metadata of a group or dataset (children one level down when ``depth``)."""
    if isinstance(obj, h5py.Dataset):
        return {
            "attributes": _attributes(obj),
            "chunks": obj.chunks,
            "filters": _filters(obj),
            "kind": "dataset",
            "name": name,
            "shape": obj.shape,
            "type": _type(obj.id.get_type()),
        }
    if isinstance(obj, h5py.Group):
        meta: dict[str, Any] = {"attributes": _attributes(obj), "kind": "group", "name": name}
        if depth > 0:
            meta["children"] = [_child(obj, key) for key in obj]
        return meta
    return {"kind": "other", "name": name}


def _child(group: h5py.Group, key: str) -> dict[str, Any]:
    link = group.get(key, getlink=True)
    if isinstance(link, h5py.SoftLink):
        return {"kind": "soft_link", "name": key, "target_path": link.path}
    if isinstance(link, h5py.ExternalLink):
        return {
            "kind": "external_link",
            "name": key,
            "target_file": link.filename,
            "target_path": link.path,
        }
    return entity(key, group[key], 0)


def plain_value(value: Any) -> Any:
    """A JSON-safe form of an HDF5 value (NaN as None, bytes decoded, arrays as lists)."""
    if isinstance(value, np.ndarray):
        return plain(value)
    if isinstance(value, np.generic):
        return plain_value(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, h5py.Empty):
        return None
    return str(value)


def plain(arr: np.ndarray[Any, Any]) -> Any:
    """``arr`` as JSON-safe nested lists (NaN/Inf as None, bytes decoded)."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        obj = arr.astype(object)
        obj[~np.isfinite(arr)] = None
        return obj.tolist()
    if arr.dtype.kind in "SO":
        return [plain_value(v) if not isinstance(v, str) else v for v in arr.reshape(-1).tolist()]
    return arr.tolist()


def _path(path: str) -> str:
    if "\x00" in path:
        raise ValueError("an HDF5 path cannot hold NUL")
    return posixpath.normpath("/" + path.strip("/")).replace("//", "/")


def meta(facade: HDF5Facade, file: str, path: str) -> dict[str, Any]:
    """h5grove ``/meta`` content of ``path`` in ``file`` (see the module docstring).

    Raises:
        FileNotFoundError, KeyError, PermissionError: as the facade's reads.
    """
    with facade._open(file) as (loc, _):
        norm = _path(path)
        if norm != "/":
            parent, _, name = norm.rpartition("/")
            group = loc.group(parent or "/")
            try:
                link = group.get(name, getlink=True)
            except (OSError, RuntimeError, ValueError):
                raise KeyError(f"{norm} not found in {loc.display}") from None
            if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
                return _child(group, name)
        return entity(norm.rpartition("/")[2], loc.get(norm), 1)


def attrs(facade: HDF5Facade, file: str, path: str, keys: list[str] | None) -> dict[str, Any]:
    """h5grove ``/attr`` content: attribute values of ``path`` (all, or ``keys``).

    Raises:
        KeyError: no such entity or attribute.
    """
    with facade._open(file) as (loc, _):
        obj = loc.get(_path(path))
        names = list(obj.attrs.keys()) if keys is None else keys
        out = {}
        for name in names:
            if not name or "\x00" in name:
                raise ValueError(f"attr_keys must name attributes, got {name!r}")
            if name not in obj.attrs:
                raise KeyError(f"{_path(path)} in {loc.display} has no attribute {name!r}")
            try:
                out[name] = obj.attrs[name]
            except (OSError, RuntimeError, TypeError) as exc:
                raise HDF5ValidationError(
                    f"{loc.display}: cannot read attribute {name!r} of {_path(path)} ({exc})",
                    file=loc.display,
                ) from exc
        return out


def data(
    facade: HDF5Facade,
    file: str,
    path: str,
    selection: str | None,
    max_elements: int | None = None,
) -> Any:
    """The selected values of dataset ``path``, refused before anything is read when larger
    than the read limit (``XPCS_IO_MAX_READ_BYTES``) or, when given, ``max_elements`` values.

    Raises:
        KeyError: no such dataset. ValueError: a malformed selection.
        DatasetTooLargeError: the selection is larger than the read limit.
        PayloadTooLargeError: more than ``max_elements`` values.
    """
    with facade._open(file) as (loc, _):
        norm = _path(path)
        ds = loc.get(norm)
        if not isinstance(ds, h5py.Dataset):
            raise KeyError(f"{norm} in {loc.display} is not a dataset")
        shape = tuple(int(n) for n in (ds.shape or ()))
        members = parse_selection(selection, shape)
        check_read_size(ds, members, display=loc.display, path=norm)
        n = math.prod(selected_shape(shape, members)) if shape else 1
        if max_elements is not None and n > max_elements:
            raise PayloadTooLargeError(
                f"{norm}[{selection or ''}] holds {n:,} values, more than the {max_elements:,} "
                "sent as JSON: use format=bin or npy, or select a part"
            )
        parent, _, name = norm.rpartition("/")
        return loc.read(parent or "/", name, members)

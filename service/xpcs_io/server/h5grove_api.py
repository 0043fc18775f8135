"""Generic browsing of any file under the data root in h5grove's request and response
conventions, under ``/h5grove``, so h5web, jupyterlab-h5web and other h5grove clients can
browse files through this service.

- ``GET /h5grove/meta/?file=F&path=P``: the entity at P: ``name``, ``kind`` ("group",
  "dataset", "soft_link", "external_link"), ``attributes`` (name, shape, type), for datasets
  ``shape``, ``chunks``, ``filters``, ``type`` (``class``, ``dtype`` as ``dtype.str``,
  ``size``), for groups ``children`` (one level, links described, not followed).
- ``GET /h5grove/attr/?file=F&path=P[&attr_keys=K...]``: attribute values as JSON.
- ``GET /h5grove/data/?file=F&path=P[&selection=S][&format=json|bin|npy][&flatten=true]``:
  dataset values; ``selection`` is NumPy slicing text (``"0:10,::2"``, ``"3"``).

Everything goes through the facade's guard (root, symlinks, external links and virtual
datasets leading outside are 403). A selection that is not slicing text, has more members
than the dataset has axes, or an index out of range is 422; a selection above
the read limit (``XPCS_IO_MAX_READ_BYTES``, or ``json_max_elements`` values as JSON) is
refused before reading.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import h5py
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from xpcs_io.errors import HDF5ValidationError, PayloadTooLargeError
from xpcs_io.facade import HDF5Facade
from xpcs_io.h5access import check_read_size
from xpcs_io.server.auth import require
from xpcs_io.server.openapi_docs import ERRORS

__all__ = [
    "attrs",
    "data",
    "entity",
    "meta",
    "parse_selection",
    "plain",
    "router",
    "selected_shape",
]

MAX_SELECTION_CHARS = 1024

router = APIRouter(prefix="/h5grove", tags=["h5grove"])

HFile = Annotated[str, Query(description="File path relative to the data root.", min_length=1)]
HPath = Annotated[str, Query(description="HDF5 path in the file.", max_length=4096)]


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


def _json(content: Any) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":"), default=_plain, allow_nan=False),
        media_type="application/json",
    )


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return plain(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
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
        return [_plain(v) if not isinstance(v, str) else v for v in arr.reshape(-1).tolist()]
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


def _facade(request: Request) -> HDF5Facade:
    facade: HDF5Facade = request.app.state.facade
    return facade


F = TypeVar("F", bound=Callable[..., Any])


_SUMMARIES = {
    "meta": "h5grove: metadata of a group or dataset",
    "attr": "h5grove: attribute values",
    "data": "h5grove: dataset values",
}


def _route(path: str) -> Callable[[F], F]:
    """Both ``/x`` and ``/x/`` (h5web asks for the latter)."""

    def decorate(fn: F) -> F:
        router.api_route(
            f"/{path}/",
            methods=["GET"],
            include_in_schema=True,
            operation_id=f"h5grove-{path}",
            summary=_SUMMARIES[path],
            dependencies=[require("read")],
            responses=ERRORS,
        )(fn)
        router.api_route(
            f"/{path}", methods=["GET"], include_in_schema=False, dependencies=[require("read")]
        )(fn)
        return fn

    return decorate


@_route("meta")
async def get_meta(request: Request, file: HFile, path: HPath = "/") -> Response:
    """h5grove ``/meta``: metadata of one entity (groups list their children)."""
    return _json(await run_in_threadpool(meta, _facade(request), file, path))


@_route("attr")
async def get_attr(
    request: Request,
    file: HFile,
    path: HPath = "/",
    attr_keys: Annotated[
        list[str] | None, Query(description="Only these attributes (repeat the parameter).")
    ] = None,
) -> Response:
    """h5grove ``/attr``: attribute values."""
    return _json(await run_in_threadpool(attrs, _facade(request), file, path, attr_keys))


@_route("data")
async def get_data(
    request: Request,
    file: HFile,
    path: HPath = "/",
    selection: Annotated[
        str | None,
        Query(description="NumPy slicing text, e.g. 0:10,::2", max_length=MAX_SELECTION_CHARS),
    ] = None,
    format: Annotated[
        Literal["json", "bin", "npy"],
        Query(description="json (NaN as null), bin (raw C-order bytes) or npy."),
    ] = "json",
    flatten: Annotated[bool, Query(description="Return the values as one flat axis.")] = False,
    dtype: Annotated[
        Literal["origin", "safe"],
        Query(description="origin: as stored; safe: big-endian numbers made little-endian."),
    ] = "origin",
) -> Response:
    """h5grove ``/data``: dataset values (json nested lists with NaN as null, bin raw
    little-endian bytes, npy)."""
    settings = request.app.state.settings
    max_elements = settings.json_max_elements if format == "json" else None
    values = await run_in_threadpool(data, _facade(request), file, path, selection, max_elements)
    arr = np.asarray(values)
    if dtype == "safe" and arr.dtype.kind in "iuf" and arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if flatten:
        arr = arr.reshape(-1)
    if format == "json":
        if arr.size > settings.json_max_elements:
            raise PayloadTooLargeError(
                f"{arr.size:,} values are more than the {settings.json_max_elements:,} sent as "
                "JSON: use format=bin or npy"
            )
        return _json(arr if arr.ndim else arr.item() if arr.dtype.kind != "S" else arr[()])
    if format == "npy":
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return Response(buf.getvalue(), media_type="application/octet-stream")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"format=bin needs numbers, {path} holds {arr.dtype}")
    return Response(np.ascontiguousarray(arr).tobytes(), media_type="application/octet-stream")

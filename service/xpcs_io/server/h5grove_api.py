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

The work is done by ``xpcs_io.h5browse``. Everything goes through the facade's guard (root,
symlinks, external links and virtual datasets leading outside are 403). A selection that is
not slicing text, has more members than the dataset has axes, or an index out of range is
422; a selection above the read limit (``XPCS_IO_MAX_READ_BYTES``), or above
``json_max_elements`` values as JSON, is refused before reading.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from xpcs_io.errors import PayloadTooLargeError
from xpcs_io.h5browse import MAX_SELECTION_CHARS, attrs, data, meta, plain_value
from xpcs_io.server.auth import require
from xpcs_io.server.deps import FacadeDep, SettingsDep
from xpcs_io.server.openapi_docs import ERRORS

__all__ = ["router"]


router = APIRouter(prefix="/h5grove", tags=["h5grove"])

HFile = Annotated[str, Query(description="File path relative to the data root.", min_length=1)]
HPath = Annotated[str, Query(description="HDF5 path in the file.", max_length=4096)]


def _json(content: Any) -> Response:
    return Response(
        json.dumps(content, separators=(",", ":"), default=plain_value, allow_nan=False),
        media_type="application/json",
    )


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
async def get_meta(facade: FacadeDep, file: HFile, path: HPath = "/") -> Response:
    """h5grove ``/meta``: metadata of one entity (groups list their children)."""
    return _json(await run_in_threadpool(meta, facade, file, path))


@_route("attr")
async def get_attr(
    facade: FacadeDep,
    file: HFile,
    path: HPath = "/",
    attr_keys: Annotated[
        list[str] | None, Query(description="Only these attributes (repeat the parameter).")
    ] = None,
) -> Response:
    """h5grove ``/attr``: attribute values."""
    return _json(await run_in_threadpool(attrs, facade, file, path, attr_keys))


@_route("data")
async def get_data(
    facade: FacadeDep,
    settings: SettingsDep,
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
    max_elements = settings.json_max_elements if format == "json" else None
    values = await run_in_threadpool(data, facade, file, path, selection, max_elements)
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

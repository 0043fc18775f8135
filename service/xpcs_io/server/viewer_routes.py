"""The ``/v1`` endpoints of the viewer reads (SAXS 2-D and 1-D, intensity vs time, two-time
G2, metadata) and the tree of a file, each a few lines around the facade.

Typed reads answer msgpack or JSON as every read does, or a file with ``format=`` (or
``Accept``): npy, csv, and for images png and tiff (see ``xpcs_io.server.exports``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import h5py
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from xpcs_io import h5browse
from xpcs_io.api import PathLike
from xpcs_io.errors import PayloadTooLargeError
from xpcs_io.facade import HDF5Facade
from xpcs_io.server.common import FilePath, Layout, Validate, read_result, send
from xpcs_io.server.deps import FacadeDep, FacadesDep
from xpcs_io.server.exports import export, wanted_format
from xpcs_io.server.openapi_docs import ERRORS, ok
from xpcs_io.server.routing import read_route

__all__ = ["MAX_TREE_NODES", "router"]

router = APIRouter(prefix="/v1")
MAX_TREE_NODES = 20_000

ExportFormat = Annotated[
    Literal["npy", "csv", "png", "tiff"] | None,
    Query(
        description="Answer a file instead of msgpack/JSON: npy, csv, png or tiff (images); "
        "also chosen by Accept."
    ),
]
_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "msgpack/JSON, or the export asked for",
        "content": {
            "application/x-npy": {},
            "text/csv": {},
            "image/png": {},
            "image/tiff": {},
        },
    }
}


def _responses(name: str) -> dict[int | str, dict[str, Any]]:
    answer = ok(name)
    answer[200]["content"].update(_FILE_RESPONSES[200]["content"])
    return {**answer, **ERRORS}


async def _answer(
    request: Request,
    file_path: str,
    produce: Callable[[PathLike], Any],
    fmt: str | None,
    name: str,
) -> Response:
    chosen = wanted_format(request, fmt)
    if chosen is None:
        return await read_result(request, file_path, produce)
    obj = await run_in_threadpool(produce, file_path)
    return await run_in_threadpool(export, obj, chosen, name)


def _add_file_read(
    path: str, summary: str, operation_id: str, tag: str, schema: str, method: str, doc: str
) -> None:
    """A read of one file's ``method`` (``file_path``, ``validate``, ``layout``, ``format``),
    exported under the method's name without ``read_``."""

    async def endpoint(
        request: Request,
        facades: FacadesDep,
        file_path: FilePath,
        validate: Validate = True,
        layout: Layout = None,
        format: ExportFormat = None,
    ) -> Response:
        read = getattr(facades.pick(validate), method)
        name = method.removeprefix("read_")
        return await _answer(request, file_path, lambda f: read(f, layout=layout), format, name)

    endpoint.__name__ = endpoint.__qualname__ = method
    endpoint.__doc__ = doc
    read_route(router, path, summary, operation_id, tag, responses=_responses(schema))(endpoint)


_add_file_read(
    "/saxs2d",
    "Read the SAXS 2-D image",
    "saxs2d-read",
    "saxs",
    "Saxs2DData",
    "read_saxs_2d",
    "The time-averaged scattering image (H, W) as stored, with its unit.",
)
_add_file_read(
    "/saxs1d",
    "Read the SAXS 1-D curve",
    "saxs1d-read",
    "saxs",
    "Saxs1DData",
    "read_saxs_1d",
    "q (A^-1), intensity and the stability segments of each static bin (phi where the\n"
    "    partition has several sectors).",
)
_add_file_read(
    "/intensity-time",
    "Read intensity vs time",
    "intensity-time-read",
    "saxs",
    "IntensityTimeData",
    "read_intensity_time",
    "Mean intensity per frame against time in seconds.",
)


@read_route(
    router,
    "/g2/twotime",
    "Read G2 of the two-time result",
    "g2-twotime-read",
    "g2",
    responses=_responses("G2Data"),
)
async def read_twotime_g2(
    request: Request,
    facades: FacadesDep,
    file_path: FilePath,
    q_idx: Annotated[
        int | None, Query(description="Only this dynamic q bin (0-based, as for C2).")
    ] = None,
    validate: Validate = True,
    layout: Layout = None,
    format: ExportFormat = None,
) -> Response:
    """G2 (n_lag, n_processed) of a two-time result, delays in seconds, q and phi of each
    column."""
    return await _answer(
        request,
        file_path,
        lambda f: facades.pick(validate).read_twotime_g2(f, q_idx, layout=layout),
        format,
        "twotime_g2",
    )


@read_route(
    router,
    "/metadata",
    "Read the instrument, sample and analysis metadata",
    "metadata-read",
    "files",
    "Metadata",
)
async def read_metadata(
    request: Request, facade: FacadeDep, file_path: FilePath, layout: Layout = None
) -> Response:
    """A flat map of the file's configuration: summary keys with units in their names, then
    every small dataset by HDF5 path, units alongside as '<path>@unit'."""
    return await read_result(request, file_path, lambda f: facade.read_metadata(f, layout=layout))


def tree(facade: HDF5Facade, file_path: str) -> dict[str, Any]:
    """Every group and dataset of a file in h5grove's ``/meta`` form, children at every
    level; links are described, not followed.

    Raises:
        PayloadTooLargeError: more than ``MAX_TREE_NODES`` entities.
    """
    count = 0

    def walk(name: str, obj: Any) -> dict[str, Any]:
        nonlocal count
        count += 1
        if count > MAX_TREE_NODES:
            raise PayloadTooLargeError(
                f"{file_path} holds more than {MAX_TREE_NODES:,} groups and datasets: browse "
                "it with /h5grove/meta/ one group at a time"
            )
        meta = h5browse.entity(name, obj, 0)
        if isinstance(obj, h5py.Group):
            children = []
            for key in obj:
                link = obj.get(key, getlink=True)
                if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
                    children.append(
                        {
                            "kind": type(link).__name__.replace("Link", "").lower() + "_link",
                            "name": key,
                            "target_path": link.path,
                        }
                    )
                else:
                    children.append(walk(key, obj[key]))
            meta["children"] = children
        return meta

    with facade._open(file_path) as (loc, _):
        return walk("", loc.get("/"))


@read_route(
    router, "/tree", "The tree of groups and datasets of a file", "tree-read", "files", "Tree"
)
async def read_tree(request: Request, facade: FacadeDep, file_path: FilePath) -> Response:
    """Groups and datasets with shapes, dtypes, chunks, filters and attribute names."""
    content = await run_in_threadpool(tree, facade, file_path)
    return send(request, content)


def _dataset_values(facade: HDF5Facade, file_path: str, path: str, selection: str | None) -> Any:
    values = h5browse.data(facade, file_path, path, selection)
    arr = np.asarray(values)
    if arr.dtype.kind in "SUO":  # strings travel as lists of str
        return h5browse.plain(arr)
    return arr


@read_route(
    router, "/dataset", "Read any dataset, or a selection of it", "dataset-read", "files", "C2Map"
)
async def read_dataset(
    request: Request,
    facade: FacadeDep,
    file_path: FilePath,
    path: Annotated[str, Query(description="HDF5 path of the dataset.", max_length=4096)],
    selection: Annotated[
        str | None,
        Query(
            description="NumPy slicing text, e.g. 0:10,::2",
            max_length=h5browse.MAX_SELECTION_CHARS,
        ),
    ] = None,
) -> Response:
    """The values of one dataset (dtype kept; strings as a list), checked against the size
    limit before reading."""
    content = await run_in_threadpool(_dataset_values, facade, file_path, path, selection)
    return send(request, content)

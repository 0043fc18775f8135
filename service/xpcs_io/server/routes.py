"""The ``/v1`` endpoints: one per facade method, each a few lines around the facade.

Every argument of the Python method is a query parameter of the same name with the seed's
default. HDF5 work runs in the thread pool, never on the event loop. The mask and partition
routes are made by ``xpcs_io.server.versioned`` for both kinds alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from xpcs_io.errors import ServerError
from xpcs_io.schemas import MaskSchema, PartitionSchema
from xpcs_io.server.auth import require
from xpcs_io.server.batch import add_batch_routes
from xpcs_io.server.common import (
    FilePath,
    Layout,
    Validate,
    group_query,
    read_result,
    send,
)
from xpcs_io.server.deps import (
    ApiKeysDep,
    EventsDep,
    FacadeDep,
    FacadesDep,
    ResultsDep,
    RootDep,
    SettingsDep,
    WorkersDep,
)
from xpcs_io.server.events import ServerEvent, sse_stream
from xpcs_io.server.listing import list_hdf5_files
from xpcs_io.server.openapi_docs import ERRORS
from xpcs_io.server.routing import read_route
from xpcs_io.server.versioned import add_versioned_routes

__all__ = ["router"]

router = APIRouter(prefix="/v1")


# ---------------------------------------------------------------- reads


@read_route(router, "/qmap", "Read a q-map", "qmap-read", "qmap", "QMapSchema")
async def read_qmap(
    request: Request,
    facades: FacadesDep,
    file_path: FilePath,
    group: Annotated[str, group_query("q-map")] = "/xpcs/qmap",
    validate: Validate = True,
    layout: Layout = None,
) -> Response:
    """Static and dynamic q maps, azimuth map, units, and the optional mask and label map."""
    return await read_result(
        request,
        file_path,
        lambda f: facades.pick(validate).read_qmap(f, group, layout=layout),
    )


@read_route(router, "/g2", "Read G2 correlations", "g2-read", "g2", "G2Data")
async def read_g2_data(
    request: Request,
    facades: FacadesDep,
    file_path: FilePath,
    q_idx: Annotated[
        int | None, Query(description="Read only this q bin (0-based, the second axis).")
    ] = None,
    group: Annotated[str, group_query("G2 data")] = "/xpcs/g2",
    validate: Validate = True,
    layout: Layout = None,
) -> Response:
    """G2 and its error shaped (n_delay, n_q), delays in seconds and the q of each bin."""
    return await read_result(
        request,
        file_path,
        lambda f: facades.pick(validate).read_g2_data(f, q_idx, group, layout=layout),
    )


@read_route(
    router, "/geometry", "Read detector geometry", "geometry-read", "geometry", "GeometryMetadata"
)
async def read_geometry_metadata(
    request: Request,
    facades: FacadesDep,
    file_path: FilePath,
    group: Annotated[str, group_query("geometry")] = "/xpcs/metadata",
    validate: Validate = True,
    layout: Layout = None,
) -> Response:
    """Beam centre (pixels), detector distance and pixel size (mm), wavelength (A), shape."""
    return await read_result(
        request,
        file_path,
        lambda f: facades.pick(validate).read_geometry_metadata(f, group, layout=layout),
    )


@read_route(router, "/c2", "Read a two-time correlation map", "c2-read", "g2", "C2Map")
async def read_c2(
    request: Request,
    facade: FacadeDep,
    file_path: FilePath,
    q_idx: Annotated[int, Query(description="Dynamic q bin (0-based, as for G2).")],
    max_size: Annotated[
        int | None, Query(description="Block-average to at most max_size x max_size.", ge=1)
    ] = None,
) -> Response:
    """The symmetric two-time map of one q bin of an APS 8-ID-I file; only that map is read."""
    return await read_result(request, file_path, lambda f: facade.read_c2(f, q_idx, max_size))


add_versioned_routes(router, "mask", MaskSchema)
add_versioned_routes(router, "partition", PartitionSchema)
add_batch_routes(router)


# ---------------------------------------------------------------- files


@read_route(
    router, "/files", "List HDF5 files under the data root", "files-list", "files", "FileList"
)
def list_files(
    request: Request,
    root: RootDep,
    prefix: Annotated[
        str | None, Query(description="Only files under this folder of the data root.")
    ] = None,
) -> Response:
    """HDF5 files (.h5, .hdf5, .hdf, .nxs) under the data root with size and modification time,
    sorted by path; symlinks leading outside the root are left out."""
    return send(request, list_hdf5_files(root, prefix))


# ---------------------------------------------------------------- pool


@read_route(router, "/pool/stats", "Connection pool statistics", "pool-stats", "pool", "PoolStats")
def get_pool_stats(
    request: Request, workers: WorkersDep, facade: FacadeDep, keys: ApiKeysDep
) -> Response:
    """Hits, misses, opens, evictions, reopens on change, size; with an admin key (or on an
    open server) also the open files, named by their paths under the data root."""
    stats = workers.stats() if workers is not None else facade.get_pool_stats()
    if keys and getattr(request.state, "auth_scope", None) != "admin":
        stats.pop("open_files", None)
    return send(request, stats)


@router.post(
    "/pool/clear",
    summary="Close every pooled file handle",
    operation_id="pool-clear",
    tags=["pool"],
    status_code=204,
    dependencies=[require("admin")],
    responses={204: {"description": "The pool is empty."}, **ERRORS},
)
async def clear_pool(
    workers: WorkersDep, facade: FacadeDep, results: ResultsDep, events: EventsDep
) -> Response:
    """Close all pooled handles (in every worker process); later reads reopen what they
    need."""
    results.clear()
    if workers is None:
        await run_in_threadpool(facade.clear_pool)
    elif not await workers.clear():
        raise ServerError("not every worker confirmed the clear in time", status=503)
    events.publish("pool.cleared")
    return Response(status_code=204)


# ---------------------------------------------------------------- events


def _event_filter(prefix: str | None, file_path: str | None) -> Callable[[ServerEvent], bool]:
    folder = prefix.strip("/") + "/" if prefix and prefix.strip("/") else ""

    def wanted(event: ServerEvent) -> bool:
        path = event.data.get("file_path")
        if path is None:
            return True  # not about one file (pool cleared): everyone hears it
        if file_path is not None and path != file_path.strip("/"):
            return False
        return isinstance(path, str) and path.startswith(folder)

    return wanted


@router.get(
    "/events",
    summary="Server-Sent Events: files and versions that change",
    operation_id="events-stream",
    tags=["events"],
    dependencies=[require("read")],
    response_class=StreamingResponse,
    responses={
        200: {
            "description": (
                "`text/event-stream`: file.created / file.changed / file.removed, "
                "mask.written / partition.written (file_path, kind, group, version, writer), "
                "pool.cleared, events.reset (reload: events were lost). Ids resume with "
                "Last-Event-ID."
            ),
            "content": {"text/event-stream": {}},
        },
        **ERRORS,
    },
)
async def events(
    hub: EventsDep,
    settings: SettingsDep,
    prefix: Annotated[
        str | None, Query(description="Only events of files under this folder.", max_length=4096)
    ] = None,
    file_path: Annotated[
        str | None, Query(description="Only events of this file.", max_length=4096)
    ] = None,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event id (sent on reconnect).")
    ] = None,
) -> StreamingResponse:
    """A stream of what a viewer should react to, with heartbeats; reconnecting with
    ``Last-Event-ID`` replays the events missed in the meantime (retained for the last
    minutes)."""
    last: int | None = None
    if last_event_id is not None and last_event_id.strip().isdigit():
        last = int(last_event_id.strip())
    return StreamingResponse(
        sse_stream(hub, last, _event_filter(prefix, file_path), settings.events_heartbeat),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )

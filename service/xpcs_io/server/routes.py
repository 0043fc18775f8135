"""The ``/v1`` endpoints: one per facade method, each a few lines around the facade.

Every argument of the Python method is a query parameter of the same name with the seed's
default. Read routes are plain ``def`` functions, so FastAPI runs them (and their h5py work)
in its thread pool, never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from xpcs_io import wire
from xpcs_io.errors import SchemaError, SchemaTypeError, ServerError, WireFormatError
from xpcs_io.facade import HDF5Facade
from xpcs_io.listing import list_hdf5_files
from xpcs_io.pool import FileIdentity
from xpcs_io.schemas import MaskSchema, PartitionSchema, Schema
from xpcs_io.server.auth import require
from xpcs_io.server.openapi_docs import ERRORS, WRITE_ERRORS, body_doc, ok
from xpcs_io.server.responses import encode, wants_json

__all__ = ["router"]

router = APIRouter(prefix="/v1")

FilePath = Annotated[
    str,
    Query(
        description="Path of the HDF5 file relative to the data root, e.g. run42/result.hdf5",
        min_length=1,
    ),
]
Validate = Annotated[
    bool,
    Query(description="Check the data against its schema; false returns it unchecked."),
]
Version = Annotated[
    int | None,
    Query(description="Version number (1 = first write); omitted means the newest.", ge=1),
]
Compression = Annotated[
    str | None, Query(description="HDF5 filter for the new datasets: gzip, lzf, szip or none.")
]
CompressionOpts = Annotated[int | None, Query(description="Filter level (gzip: 0-9).", ge=0, le=9)]
Layout = Annotated[
    Literal["native", "aps8idi"] | None,
    Query(description="File layout; detected per file when omitted (native or APS 8-ID-I)."),
]
Writer = Annotated[
    str | None,
    Query(
        description="Who wrote this version (default: the key's name or 'anonymous').",
        max_length=256,
    ),
]


def _group(what: str) -> Any:
    return Query(description=f"HDF5 group holding the {what}.", min_length=1, max_length=1024)


def _facade(request: Request, validate: bool = True) -> HDF5Facade:
    state = request.app.state
    facade: HDF5Facade = state.facade if validate else state.facade_unchecked
    return facade


def _send(
    request: Request,
    content: Any,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    return encode(
        request,
        content,
        status_code=status_code,
        headers=headers,
        json_limit=request.app.state.settings.json_max_elements,
    )


def _etag(request: Request, identity: FileIdentity) -> str:
    # Same file bytes (identity) + same request + same representation = same body.
    query = sorted(request.query_params.multi_items())
    form = "json" if wants_json(request) else "msgpack"
    digest = hashlib.sha256(repr((identity, request.url.path, query, form)).encode())
    return f'"{digest.hexdigest()[:32]}"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


async def _read(request: Request, file_path: str, produce: Callable[[], Any]) -> Response:
    """Answer a read: 304 when the client's ETag still names this file state and request
    (no HDF5 work at all); else the shared result cache, which runs ``produce`` in the thread
    pool on a miss (once for concurrent identical requests); then encode and tag."""
    state = request.app.state
    # Resolving and stat-ing a path is a couple of system calls: fine on the event loop.
    identity = state.facade.file_identity(file_path)
    headers = {"etag": _etag(request, identity), "cache-control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), headers["etag"]):
        return Response(status_code=304, headers=headers)
    real = state.facade.resolve(file_path)
    key = (real, identity, request.url.path, tuple(sorted(request.query_params.multi_items())))
    content = await state.results.get(key, real, identity, produce)
    if wants_json(request):  # building nested lists is real work: not on the event loop
        return await run_in_threadpool(_send, request, content, 200, headers)
    return _send(request, content, headers=headers)


# ---------------------------------------------------------------- reads


@router.get(
    "/qmap",
    summary="Read a q-map",
    operation_id="qmap-read",
    tags=["qmap"],
    dependencies=[require("read")],
    responses={**ok("QMapSchema"), **ERRORS},
)
async def read_qmap(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("q-map")] = "/xpcs/qmap",
    validate: Validate = True,
    layout: Layout = None,
) -> Response:
    """Static and dynamic q maps, azimuth map, units, and the optional mask and label map."""
    return await _read(
        request,
        file_path,
        lambda: _facade(request, validate).read_qmap(file_path, group, layout=layout),
    )


@router.get(
    "/g2",
    summary="Read G2 correlations",
    operation_id="g2-read",
    tags=["g2"],
    dependencies=[require("read")],
    responses={**ok("G2Data"), **ERRORS},
)
async def read_g2_data(
    request: Request,
    file_path: FilePath,
    q_idx: Annotated[
        int | None, Query(description="Read only this q bin (0-based, the second axis).")
    ] = None,
    group: Annotated[str, _group("G2 data")] = "/xpcs/g2",
    validate: Validate = True,
    layout: Layout = None,
) -> Response:
    """G2 and its error shaped (n_delay, n_q), delays in seconds and the q of each bin."""
    return await _read(
        request,
        file_path,
        lambda: _facade(request, validate).read_g2_data(file_path, q_idx, group, layout=layout),
    )


@router.get(
    "/geometry",
    summary="Read detector geometry",
    operation_id="geometry-read",
    tags=["geometry"],
    dependencies=[require("read")],
    responses={**ok("GeometryMetadata"), **ERRORS},
)
async def read_geometry_metadata(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("geometry")] = "/xpcs/metadata",
    validate: Validate = True,
    layout: Layout = None,
) -> Response:
    """Beam centre (pixels), detector distance and pixel size (mm), wavelength (A), shape."""
    return await _read(
        request,
        file_path,
        lambda: _facade(request, validate).read_geometry_metadata(file_path, group, layout=layout),
    )


@router.get(
    "/c2",
    summary="Read a two-time correlation map",
    operation_id="c2-read",
    tags=["g2"],
    dependencies=[require("read")],
    responses={**ok("C2Map"), **ERRORS},
)
async def read_c2(
    request: Request,
    file_path: FilePath,
    q_idx: Annotated[int, Query(description="Dynamic q bin (0-based, as for G2).")],
    max_size: Annotated[
        int | None, Query(description="Block-average to at most max_size x max_size.", ge=1)
    ] = None,
) -> Response:
    """The symmetric two-time map of one q bin of an APS 8-ID-I file; only that map is read."""
    return await _read(
        request, file_path, lambda: _facade(request).read_c2(file_path, q_idx, max_size)
    )


@router.get(
    "/mask",
    summary="Read a mask version",
    operation_id="mask-read",
    tags=["mask"],
    dependencies=[require("read")],
    responses={**ok("MaskSchema"), **ERRORS},
)
async def read_mask(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("mask")] = "/simplemask/mask",
    version: Version = None,
    validate: Validate = True,
) -> Response:
    """The newest mask written to the group, or the given version."""
    return await _read(
        request,
        file_path,
        lambda: _facade(request, validate).read_mask(file_path, group, version),
    )


@router.get(
    "/mask/versions",
    summary="List mask versions",
    operation_id="mask-versions",
    tags=["mask"],
    dependencies=[require("read")],
    responses={**ok("VersionList"), **ERRORS},
)
async def list_mask_versions(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("mask")] = "/simplemask/mask",
) -> Response:
    """Every version of the mask group, oldest first, with who wrote it and when."""
    return await _read(
        request, file_path, lambda: _facade(request).list_mask_versions(file_path, group)
    )


@router.get(
    "/partition",
    summary="Read a partition version",
    operation_id="partition-read",
    tags=["partition"],
    dependencies=[require("read")],
    responses={**ok("PartitionSchema"), **ERRORS},
)
async def read_partition(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("partition")] = "/simplemask/partition",
    version: Version = None,
    validate: Validate = True,
) -> Response:
    """The newest partition written to the group, or the given version."""
    return await _read(
        request,
        file_path,
        lambda: _facade(request, validate).read_partition(file_path, group, version),
    )


@router.get(
    "/partition/versions",
    summary="List partition versions",
    operation_id="partition-versions",
    tags=["partition"],
    dependencies=[require("read")],
    responses={**ok("VersionList"), **ERRORS},
)
async def list_partition_versions(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("partition")] = "/simplemask/partition",
) -> Response:
    """Every version of the partition group, oldest first."""
    return await _read(
        request, file_path, lambda: _facade(request).list_partition_versions(file_path, group)
    )


# ---------------------------------------------------------------- writes


async def _read_body(request: Request) -> bytearray:
    """The request body in one writable buffer (arrays decode as zero-copy views of it)."""
    declared = request.headers.get("content-length")
    buf = bytearray(int(declared)) if declared and declared.isdigit() else bytearray()
    n = 0
    async for chunk in request.stream():
        end = n + len(chunk)
        if end <= len(buf):
            buf[n:end] = chunk
        else:
            del buf[n:]
            buf += chunk
        n = end
    del buf[n:]
    return buf


def _decode(body: bytearray, content_type: str, cls: type[Schema]) -> Any:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/json",):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise WireFormatError(f"the body is not valid JSON ({exc})") from None
    elif media in (wire.MEDIA_TYPE, "application/x-msgpack", ""):
        data = wire.unpack(body)
    else:
        raise SchemaTypeError(
            f"unsupported content type {media!r}: send application/msgpack or application/json"
        )
    if not isinstance(data, dict):
        raise SchemaError(f"the body must be a map of {cls.__name__} fields")
    return cls.from_dict(data)


def _writer(request: Request, writer: str | None) -> str:
    if writer:
        return writer
    scope = getattr(request.state, "auth_scope", None)
    return f"api-key:{scope}" if scope else "anonymous"


async def _write(
    request: Request,
    cls: type[Schema],
    file_path: str,
    group: str,
    compression: str | None,
    compression_opts: int | None,
    writer: str | None,
) -> Response:
    body = await _read_body(request)
    facade: HDF5Facade = request.app.state.facade

    def work() -> dict[str, Any]:
        schema = _decode(body, request.headers.get("content-type", ""), cls)
        comp = None if compression in (None, "none") else compression
        opts = compression_opts if comp == "gzip" else None
        who = _writer(request, writer)
        if isinstance(schema, MaskSchema):
            return facade.write_mask_version(file_path, schema, group, comp, opts, writer=who)
        assert isinstance(schema, PartitionSchema)
        return facade.write_partition_version(file_path, schema, group, comp, opts, writer=who)

    start = time.perf_counter()
    try:
        record = await run_in_threadpool(work)
    finally:
        # The file has a new identity now, so its cached results can never be served again.
        request.app.state.results.drop_file(request.app.state.facade.resolve(file_path))
    kind = "mask" if cls is MaskSchema else "partition"
    request.app.state.metrics.write_duration.labels(kind).observe(time.perf_counter() - start)
    return _send(request, record, status_code=201)


@router.post(
    "/mask",
    summary="Write a new mask version",
    operation_id="mask-write",
    tags=["mask"],
    status_code=201,
    dependencies=[require("write")],
    openapi_extra=body_doc("MaskSchema"),
    responses={**ok("VersionRecord", 201), **WRITE_ERRORS},
)
async def write_mask(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("mask")] = "/simplemask/mask",
    compression: Compression = "gzip",
    compression_opts: CompressionOpts = 4,
    writer: Writer = None,
) -> Response:
    """Store the MaskSchema in the body as a new version; earlier versions stay readable."""
    return await _write(
        request, MaskSchema, file_path, group, compression, compression_opts, writer
    )


@router.post(
    "/partition",
    summary="Write a new partition version",
    operation_id="partition-write",
    tags=["partition"],
    status_code=201,
    dependencies=[require("write")],
    openapi_extra=body_doc("PartitionSchema"),
    responses={**ok("VersionRecord", 201), **WRITE_ERRORS},
)
async def write_partition(
    request: Request,
    file_path: FilePath,
    group: Annotated[str, _group("partition")] = "/simplemask/partition",
    compression: Compression = "gzip",
    compression_opts: CompressionOpts = 4,
    writer: Writer = None,
) -> Response:
    """Store the PartitionSchema in the body as a new version."""
    return await _write(
        request, PartitionSchema, file_path, group, compression, compression_opts, writer
    )


# ---------------------------------------------------------------- files


@router.get(
    "/files",
    summary="List HDF5 files under the data root",
    operation_id="files-list",
    tags=["files"],
    dependencies=[require("read")],
    responses={**ok("FileList"), **ERRORS},
)
def list_files(
    request: Request,
    prefix: Annotated[
        str | None, Query(description="Only files under this folder of the data root.")
    ] = None,
) -> Response:
    """HDF5 files (.h5, .hdf5, .hdf, .nxs) under the data root with size and modification time,
    sorted by path; symlinks leading outside the root are left out."""
    return _send(request, list_hdf5_files(request.app.state.root, prefix))


# ---------------------------------------------------------------- pool


@router.get(
    "/pool/stats",
    summary="Connection pool statistics",
    operation_id="pool-stats",
    tags=["pool"],
    dependencies=[require("read")],
    responses={**ok("PoolStats"), **ERRORS},
)
def get_pool_stats(request: Request) -> Response:
    """Hits, misses, opens, evictions, reopens on change, size; with an admin key (or on an
    open server) also the open files, named by their paths under the data root."""
    group = request.app.state.workers
    stats = group.stats() if group is not None else request.app.state.facade.get_pool_stats()
    if request.app.state.api_keys and getattr(request.state, "auth_scope", None) != "admin":
        stats.pop("open_files", None)
    return _send(request, stats)


@router.post(
    "/pool/clear",
    summary="Close every pooled file handle",
    operation_id="pool-clear",
    tags=["pool"],
    status_code=204,
    dependencies=[require("admin")],
    responses={204: {"description": "The pool is empty."}, **ERRORS},
)
async def clear_pool(request: Request) -> Response:
    """Close all pooled handles (in every worker process); later reads reopen what they
    need."""
    group = request.app.state.workers
    request.app.state.results.clear()
    if group is None:
        await run_in_threadpool(request.app.state.facade.clear_pool)
    elif not await group.clear():
        raise ServerError("not every worker confirmed the clear in time", status=503)
    return Response(status_code=204)

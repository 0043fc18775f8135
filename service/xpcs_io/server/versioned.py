"""Routes of the versioned groups (masks and partitions), made once for both kinds: read a
version, list the versions, write a new version.

This module does not use postponed annotations: the route functions are built in a closure,
and FastAPI must see their parameter types as objects, not as names to look up.
"""

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from starlette.responses import Response

from xpcs_io import wire
from xpcs_io.errors import SchemaError, SchemaTypeError, WireFormatError
from xpcs_io.schemas import Schema
from xpcs_io.server.auth import require
from xpcs_io.server.common import (
    Compression,
    CompressionOpts,
    FilePath,
    Validate,
    Version,
    Writer,
    group_query,
    read_result,
    send,
)
from xpcs_io.server.deps import FacadeDep, FacadesDep, MetricsDep, ResultsDep
from xpcs_io.server.limits import read_body as _read_body
from xpcs_io.server.openapi_docs import ERRORS, WRITE_ERRORS, body_doc, ok

__all__ = ["IdempotencyKey", "add_versioned_routes"]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=(
            "A key the client makes up for this one write (e.g. a UUID): resending the request "
            "with the same key returns the version the first one stored instead of storing "
            "another, so a write whose answer was lost can be retried safely."
        ),
        max_length=200,
    ),
]


def _decode(body: bytearray, content_type: str, cls: type[Schema]) -> Any:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
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


def add_versioned_routes(router: APIRouter, kind: str, cls: type[Schema]) -> None:
    """Add ``GET /{kind}``, ``GET /{kind}/versions`` and ``POST /{kind}`` for ``cls``
    (``MaskSchema`` or ``PartitionSchema``), calling the facade's ``read_{kind}``,
    ``list_{kind}_versions`` and ``write_{kind}_version``."""
    default = f"/simplemask/{kind}"
    Group = Annotated[str, group_query(kind)]  # noqa: N806  (a type alias)
    name = cls.__name__

    async def read(
        request: Request,
        facades: FacadesDep,
        file_path: FilePath,
        group: Group = default,
        version: Version = None,
        validate: Validate = True,
    ) -> Response:
        method = getattr(facades.pick(validate), f"read_{kind}")
        return await read_result(request, file_path, lambda f: method(f, group, version))

    async def versions(
        request: Request, facade: FacadeDep, file_path: FilePath, group: Group = default
    ) -> Response:
        method = getattr(facade, f"list_{kind}_versions")
        return await read_result(request, file_path, lambda f: method(f, group))

    async def write(
        request: Request,
        facade: FacadeDep,
        results: ResultsDep,
        metrics: MetricsDep,
        file_path: FilePath,
        group: Group = default,
        compression: Compression = "gzip",
        compression_opts: CompressionOpts = 4,
        writer: Writer = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        body = await _read_body(request)
        method = getattr(facade, f"write_{kind}_version")

        def work() -> dict[str, Any]:
            schema = _decode(body, request.headers.get("content-type", ""), cls)
            comp = None if compression in (None, "none") else compression
            opts = compression_opts if comp == "gzip" else None
            record: dict[str, Any] = method(
                file_path,
                schema,
                group,
                comp,
                opts,
                writer=_writer(request, writer),
                idempotency_key=idempotency_key,
            )
            return record

        start = time.perf_counter()
        try:
            record = await run_in_threadpool(work)
        finally:
            # The file has a new identity now: its cached results can never be served again.
            results.drop_file(facade.resolve(file_path))
        metrics.write_duration.labels(kind).observe(time.perf_counter() - start)
        return send(request, record, status_code=201)

    read.__doc__ = f"The newest {kind} written to the group, or the given version."
    versions.__doc__ = f"Every version of the {kind} group, oldest first, with who and when."
    write.__doc__ = (
        f"Store the {name} in the body as a new version; earlier ones stay readable. A resend "
        "with the same Idempotency-Key answers the first write's record and stores nothing."
    )
    router.add_api_route(
        f"/{kind}",
        read,
        methods=["GET"],
        summary=f"Read a {kind} version",
        operation_id=f"{kind}-read",
        tags=[kind],
        dependencies=[require("read")],
        responses={**ok(name), **ERRORS},
    )
    router.add_api_route(
        f"/{kind}/versions",
        versions,
        methods=["GET"],
        summary=f"List {kind} versions",
        operation_id=f"{kind}-versions",
        tags=[kind],
        dependencies=[require("read")],
        responses={**ok("VersionList"), **ERRORS},
    )
    router.add_api_route(
        f"/{kind}",
        write,
        methods=["POST"],
        summary=f"Write a new {kind} version",
        operation_id=f"{kind}-write",
        tags=[kind],
        status_code=201,
        dependencies=[require("write")],
        openapi_extra=body_doc(name),
        responses={**ok("VersionRecord", 201), **WRITE_ERRORS},
    )

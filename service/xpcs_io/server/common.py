"""What the ``/v1`` routes share: query parameter types, picking the facade, encoding, and
the read path (ETag, shared result cache, thread pool)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Annotated, Any, Literal, cast

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from starlette.background import BackgroundTask
from starlette.responses import Response

from xpcs_io import arraycodec
from xpcs_io.api import PathLike
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import DataIdentity
from xpcs_io.schemas import Schema
from xpcs_io.server.deps import get_facade, get_facades, get_results, get_settings
from xpcs_io.server.fileplans import PlanStore, open_version
from xpcs_io.server.planresponse import PlanResponse
from xpcs_io.server.responses import encode, wants_json
from xpcs_io.server.results import request_key

__all__ = [
    "Compression",
    "CompressionOpts",
    "FilePath",
    "Layout",
    "Validate",
    "Version",
    "Writer",
    "facade_for",
    "group_query",
    "read_result",
    "send",
]

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
    Literal["native", "aps8idi", "aps8idi-legacy", "pysimplemask"] | None,
    Query(description="File layout; detected per file when omitted (see docs/layouts.md)."),
]
Writer = Annotated[
    str | None,
    Query(
        description="Who wrote this version (default: the key's name or 'anonymous').",
        max_length=256,
    ),
]


def group_query(what: str) -> Any:
    """The ``group`` query parameter for a group holding ``what``."""
    return Query(description=f"HDF5 group holding the {what}.", min_length=1, max_length=1024)


def facade_for(request: Request, validate: bool = True) -> HDF5Facade:
    """The app's facade that validates, or the one that does not."""
    return get_facades(request).pick(validate)


def send(
    request: Request,
    content: Any,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """Encode ``content`` as the client asked (msgpack or JSON)."""
    return encode(
        request,
        content,
        status_code=status_code,
        headers=headers,
        json_limit=get_settings(request).json_max_elements,
    )


def _array_codec(request: Request) -> str | None:
    """The compression preset the client accepts for arrays (msgpack only), or None."""
    if wants_json(request):
        return None
    return arraycodec.negotiate(request.headers.get(arraycodec.HEADER))


def _etag(request: Request, identity: DataIdentity) -> str:
    # Same bytes in every file the read reaches (identity) + same request + same
    # representation = same body.
    form = "json" if wants_json(request) else f"msgpack+{_array_codec(request)}"
    digest = hashlib.sha256(repr((identity, request_key(request), form)).encode())
    return f'"{digest.hexdigest()[:32]}"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags or "*" in tags


async def read_result(
    request: Request, file_path: str, produce: Callable[[PathLike], Any]
) -> Response:
    """Answer a read: 304 when the client's ETag still names this file state and request
    (no HDF5 read at all); else the shared result cache, which runs ``produce`` in the thread
    pool on a miss (once for concurrent identical requests); then encode and tag.

    One checkout per request: for a file the pool holds, the path is resolved once and the
    pooled handle borrowed once (``HDF5Facade.check_out_pooled``); ``produce`` is given that
    checkout in place of the path, so it reads through that handle, and the identity behind
    the ETag and the cache key is the checkout's: the file the handle reads and every file
    its reads reached through links. For a file the pool does not hold, the identity is
    taken from the file (``resolve_identity``) so that a 304 or a cached result opens
    nothing; a read then checks the file out on a pool thread.
    The result is tagged and kept only when the read used that very file version and
    reached no link the identity does not name; a read that raced a change (a write, a
    linked file learnt on the first read) is answered as read, untagged and not kept, so an
    ETag never names other bytes than it was sent with. An SWMR file is the exception: SWMR
    keeps each read consistent while the writer appends, and its identity moves with every
    flush.
    """
    facade = get_facade(request)
    # A file the pool holds open is checked out here (a few system calls, measured cheaper
    # than a hop to the thread pool on every small read); opening it (HDF5 work) or waiting
    # for a replaced handle is never done on the loop.
    held = facade.check_out_pooled(file_path)
    if held is not None:
        try:
            return await _answer_read(
                request, held.real, held.identity, lambda: produce(cast(PathLike, held))
            )
        finally:
            held.release()  # a read still running through the handle gives it back when done
    # Not pooled: the file's identity from the file itself (what the ETag and the result
    # cache need), so a 304 or a cached result costs no HDF5 open; only a read checks the
    # file out, on a pool thread, and one that found another version is not kept.
    real, identity = facade.resolve_identity(file_path)

    def read_checked_out() -> Any:
        with facade.check_out(file_path) as fresh:
            return produce(cast(PathLike, fresh))

    return await _answer_read(request, real, identity, read_checked_out)


async def _answer_read(
    request: Request, real: str, identity: DataIdentity, produce: Callable[[], Any]
) -> Response:
    facade, results = get_facade(request), get_results(request)
    headers = {
        "etag": _etag(request, identity),
        "cache-control": "no-cache",
        "vary": f"accept, {arraycodec.HEADER}",
    }
    if _matches(request.headers.get("if-none-match"), headers["etag"]):
        return Response(status_code=304, headers=headers)

    def read() -> tuple[Any, bool]:
        # On a pool thread: the facade remembers per thread what its last read used.
        # The facade takes its own checkout wherever it takes a path (``check_out``).
        value = produce()
        return value, facade.last_read_matches(identity)

    key = (real, identity, request_key(request))
    learn = None
    plans: PlanStore | None = getattr(request.app.state, "plans", None)
    if plans is not None and results.max_bytes <= 0 and not identity.swmr:
        # No result cache: the file's own bytes are sent where a learnt plan allows.
        plan = None if wants_json(request) else plans.get(key)
        fd = None if plan is None else open_version(real, identity.file, plans.policy)
        if plan is not None and fd is None:
            plans.done()
        elif plan is not None and fd is not None:
            try:  # counted like an answer held in memory: stalled readers stay bounded
                release = results.hold(plan.nbytes)
            except BaseException:
                os.close(fd)
                plans.done()
                raise
            return PlanResponse(plan, fd, plans, _array_codec(request), headers, release)
        if not wants_json(request):
            read, learn = plans.learning(read, key, real, identity)
    content, matched = await results.get(key, real, identity, read)
    if not matched:
        results.drop_file(real, keep=None)
        del headers["etag"]
    preset = _array_codec(request)
    if preset is not None:
        raw = content.to_dict() if isinstance(content, Schema) else content
        if "etag" in headers:
            # Kept compressed beside the raw result: a hot file is compressed once per preset,
            # harder than an answer compressed for one sending.
            content = await results.get(
                (*key, preset),
                real,
                identity,
                lambda: arraycodec.compress_tree(raw, preset, keep=results.max_bytes > 0),
            )
        else:  # a read that raced a change is not kept, compressed or not
            content = await run_in_threadpool(arraycodec.compress_tree, raw, preset)
    if wants_json(request):  # building nested lists is real work: not on the event loop
        return await run_in_threadpool(send, request, content, 200, headers)
    response = send(request, content, headers=headers)
    if learn is not None:  # checked against the file once this answer is out
        response.background = BackgroundTask(learn)
    return response

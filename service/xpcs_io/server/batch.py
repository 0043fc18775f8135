"""Many files in one round trip: ``POST /v1/g2/many`` and ``POST /v1/qmap/many``.

The body names the files (``{"file_paths": [...]}``, msgpack or JSON); the query takes the
same parameters as the one-file read. The msgpack answer is one msgpack array with an item per
file, in the order the files are read (several at a time, through the shared result cache):
sent whole with its length up to ``XPCS_IO_BATCH_WHOLE_BYTES`` (64 MiB), else streamed as
each file is read. Each item is ``{"index": i, "file_path": p, "result": {...}}`` or ``{"index": i,
"file_path": p, "error": {"error": class, "detail": ..., "status": ..., "field": ...}}`` in the
error table's terms. One bad file never fails the others.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from xpcs_io import wire
from xpcs_io.errors import SchemaError, SchemaTypeError, ServerBusyError, WireFormatError
from xpcs_io.facade import HDF5Facade
from xpcs_io.pool import DataIdentity
from xpcs_io.schemas import Schema
from xpcs_io.server.auth import require
from xpcs_io.server.common import Layout, Validate, facade_for, group_query, send
from xpcs_io.server.deps import get_results, get_settings
from xpcs_io.server.fileplans import PlanStore
from xpcs_io.server.limits import read_body
from xpcs_io.server.manysend import ItemsResponse, Packed, item_head, result_item
from xpcs_io.server.openapi_docs import BODY_ERRORS
from xpcs_io.server.problems import problem_fields
from xpcs_io.server.responses import MSGPACK_MEDIA_TYPE, wants_json

__all__ = ["add_batch_routes"]

_Route = TypeVar("_Route", bound=Callable[..., Any])

# Files read at the same time: enough to overlap the cache, the thread pool and the socket
# (h5py itself runs one call at a time per process), few enough to bound memory.
_CONCURRENCY = 4

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            media: {
                "schema": {
                    "type": "object",
                    "required": ["file_paths"],
                    "properties": {
                        "file_paths": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Paths relative to the data root.",
                        }
                    },
                }
            }
            for media in (MSGPACK_MEDIA_TYPE, "application/json")
        },
    }
}
_OK_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One item per file (result or error), streamed as each is read.",
        "content": {MSGPACK_MEDIA_TYPE: {}, "application/json": {}},
    }
}


async def _file_paths(request: Request, limit: int) -> list[str]:
    body = await read_body(request)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise WireFormatError(f"the body is not valid JSON ({exc})") from None
    elif media in (MSGPACK_MEDIA_TYPE, "application/x-msgpack"):
        data = wire.unpack(body)
    else:
        raise SchemaTypeError(
            f"unsupported content type {media!r}: send application/msgpack or application/json"
        )
    paths = data.get("file_paths") if isinstance(data, dict) else None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise SchemaError("the body must be a map with file_paths, a list of strings")
    if len(paths) > limit:
        raise SchemaError(f"at most {limit} files per request, got {len(paths)}")
    return paths


def _error(request: Request, index: int, path: str, exc: Exception) -> dict[str, Any]:
    return {"index": index, "file_path": path, "error": problem_fields(request, exc)}


def _item(index: int, path: str, value: Any, packed: bool) -> dict[str, Any] | Packed:
    if packed and isinstance(value, Schema):
        return result_item(index, path, value)
    result = value.to_dict() if isinstance(value, Schema) else value
    return {"index": index, "file_path": path, "result": result}


#: Files checked and answered from their plans per worker-thread hop (cache off); the hops
#: run at the same time.
_PER_HOP = 25
#: A file of a many-file read: its index, path, resolved path and identity.
_Entry = tuple[int, str, str, DataIdentity]


async def _items(
    request: Request,
    paths: list[str],
    read: Callable[[HDF5Facade, str], Schema],
    facade: HDF5Facade,
    key: tuple[Hashable, ...],
    packed: bool,
    learned: list[Callable[[], None]],
) -> AsyncIterator[dict[str, Any] | Packed]:
    """One item per file as each is ready: packed (msgpack chunks) when ``packed``, else a
    dict. With the result cache on, each file's identity is checked on the event loop (a few
    system calls) and a cached result answered at once. With it off (msgpack answers), worker
    threads check the files, ``_PER_HOP`` a hop, and answer each file whose answer has a
    plan from its bytes (``pread`` through the descriptor just checked, no HDF5). The others
    are read through the facade, ``_CONCURRENCY`` at a time; a read that learns a plan
    appends its learning step to ``learned`` (run it after the answer is out)."""
    results = get_results(request)
    plans: PlanStore | None = getattr(request.app.state, "plans", None)
    if plans is not None and (results.max_bytes > 0 or not packed):
        plans = None  # plans answer only msgpack reads with the result cache off
    to_read: list[_Entry] = []
    if plans is None:
        for start in range(0, len(paths), _PER_HOP):
            if start:
                await asyncio.sleep(0)  # let other requests in between long runs of checks
            part = paths[start : start + _PER_HOP]
            checked = zip(part, facade.resolve_identities(part), strict=True)
            for index, (path, found) in enumerate(checked, start):
                if isinstance(found, Exception):
                    yield _error(request, index, path, found)
                    continue
                real, identity = found
                cached = results.peek((real, identity, *key))
                if cached is not None:  # kept as computed: (result, whether it read that)
                    yield _item(index, path, cached[0], packed)
                else:
                    to_read.append((index, path, real, identity))
    else:
        store = plans

        def planned(entries: list[tuple[int, str]]) -> list[tuple[int, str, Any]]:
            # Each file checked, and its planned arrays read, through one descriptor.
            out: list[tuple[int, str, Any]] = []
            opened = facade.open_identities([path for _, path in entries])
            for (index, path), found in zip(entries, opened, strict=True):
                if isinstance(found, Exception):
                    out.append((index, path, found))
                    continue
                real, identity, fd = found
                try:
                    full = (real, identity, *key)
                    answer = None
                    if not identity.swmr:
                        answer = store.packed_answer(full, real, identity.file, fd)
                except Exception:  # the read through HDF5 says what is wrong with the file
                    answer = None  # (and every descriptor this hop opened is closed)
                finally:
                    os.close(fd)
                out.append((index, path, (real, identity, answer)))
            return out

        numbered = list(enumerate(paths))
        hops = [
            asyncio.ensure_future(run_in_threadpool(planned, numbered[i : i + _PER_HOP]))
            for i in range(0, len(numbered), _PER_HOP)
        ]
        try:
            for hop in hops:
                for index, path, got in await hop:
                    if isinstance(got, Exception):
                        yield _error(request, index, path, got)
                        continue
                    real, identity, answer = got
                    if answer is None:  # no plan yet, or the file changed: read it
                        to_read.append((index, path, real, identity))
                        continue
                    chunks, arrays = answer
                    try:
                        results.lend((real, identity, *key), arrays)  # held until sent
                    except ServerBusyError as exc:
                        yield _error(request, index, path, exc)
                        continue
                    yield [item_head(index, path), *chunks]
        finally:
            for hop in hops:
                hop.cancel()

    done: asyncio.Queue[dict[str, Any] | Packed] = asyncio.Queue(maxsize=2 * _CONCURRENCY)
    slots = asyncio.Semaphore(_CONCURRENCY)

    async def one(index: int, path: str, real: str, identity: DataIdentity) -> None:
        async with slots:
            try:
                full = (real, identity, *key)

                def compute() -> tuple[Any, bool]:
                    # On a pool thread: the facade remembers per thread what it read.
                    value = read(facade, path)
                    return value, facade.last_read_matches(identity)

                if plans is not None:
                    compute, learn = plans.learning(compute, full, real, identity)
                    learned.append(learn)
                value, matched = await results.get(full, real, identity, compute)
                if not matched:
                    # Read from another version than the key names (a write raced it):
                    # answered as read, not kept.
                    results.drop_file(real, keep=None)
                item = _item(index, path, value, packed)
            except Exception as exc:
                item = _error(request, index, path, exc)
            await done.put(item)

    tasks = [asyncio.create_task(one(*entry)) for entry in to_read]
    try:
        for _ in to_read:
            yield await done.get()
    finally:
        for task in tasks:
            task.cancel()


async def _answer(
    request: Request,
    paths: list[str],
    read: Callable[[HDF5Facade, str], Schema],
    validate: bool,
    key: tuple[Hashable, ...],
) -> Response:
    facade = facade_for(request, validate)
    learned: list[Callable[[], None]] = []
    if wants_json(request):
        out: list[Any] = [None] * len(paths)
        async for item in _items(request, paths, read, facade, (*key, validate), False, learned):
            if isinstance(item, dict):  # always: not packed
                out[item["index"]] = item
        return send(request, out)

    def learn() -> None:  # each plan is checked against its file once the answer is out
        for step in learned:
            step()

    items = _items(request, paths, read, facade, (*key, validate), True, learned)
    return ItemsResponse(
        len(paths), items, get_settings(request).batch_whole_bytes, BackgroundTask(learn)
    )


def _route(
    router: APIRouter, path: str, summary: str, operation_id: str, tag: str
) -> Callable[[_Route], _Route]:
    return router.post(
        path,
        summary=summary,
        operation_id=operation_id,
        tags=[tag],
        dependencies=[require("read")],
        responses={**_OK_DOC, **BODY_ERRORS},
        openapi_extra=_BODY_DOC,
    )


async def _many(
    request: Request,
    read: Callable[[HDF5Facade, str], Schema],
    validate: bool,
    key: tuple[Hashable, ...],
) -> Response:
    paths = await _file_paths(request, get_settings(request).batch_max_files)
    return await _answer(request, paths, read, validate, key)


def add_batch_routes(router: APIRouter) -> None:
    """Add ``POST /g2/many`` and ``POST /qmap/many`` to ``router``."""

    @_route(router, "/g2/many", "Read G2 of many files", "g2-read-many", "g2")
    async def read_g2_data_many(
        request: Request,
        q_idx: Annotated[
            int | None, Query(description="Read only this q bin (0-based) of every file.")
        ] = None,
        group: Annotated[str, group_query("G2 data")] = "/xpcs/g2",
        validate: Validate = True,
        layout: Layout = None,
    ) -> Response:
        """G2 of each file named in the body, one item per file (result or error)."""
        return await _many(
            request,
            lambda facade, path: facade.read_g2_data(path, q_idx, group, layout=layout),
            validate,
            ("g2-many", q_idx, group, layout),
        )

    @_route(router, "/qmap/many", "Read the q-maps of many files", "qmap-read-many", "qmap")
    async def read_qmap_many(
        request: Request,
        group: Annotated[str, group_query("q-map")] = "/xpcs/qmap",
        validate: Validate = True,
        layout: Layout = None,
    ) -> Response:
        """The q-map of each file named in the body, one item per file (result or error)."""
        return await _many(
            request,
            lambda facade, path: facade.read_qmap(path, group, layout=layout),
            validate,
            ("qmap-many", group, layout),
        )

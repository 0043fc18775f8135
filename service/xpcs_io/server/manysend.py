"""Sending a many-file answer: one msgpack array whose items arrive one file at a time.

An answer whose items all arrive within ``WHOLE_BYTES`` is sent whole, with its
Content-Length: a client then reads it straight into one buffer, with no chunked decoding
(which costs a copy per layer). A larger answer is streamed with chunked transfer as its
items arrive, so the server holds at most about ``WHOLE_BYTES`` plus one item of it. Either
way small pieces (msgpack headers, small arrays) are joined into slices of about
``SLICE_BYTES``: one ASGI message costs tens of microseconds through the middleware, a
hundred files would otherwise cost hundreds of messages.

The bytes are the same in both cases: an array header for ``count`` items, then each item
as ``xpcs_io.wire.pack_chunks`` encodes it. ``result_item`` packs a result item from the
result's packed chunks, kept as long as the result itself lives (in the result cache): a
cached result is packed once, not once per answer.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from xpcs_io import wire
from xpcs_io.schemas import Schema
from xpcs_io.server.responses import MSGPACK_MEDIA_TYPE, SLICE_BYTES
from xpcs_io.server.zerocopy import EXTENSION, SENDFILE

__all__ = [
    "OWN_BYTES",
    "WHOLE_BYTES",
    "ItemsResponse",
    "array_header",
    "item_head",
    "result_item",
    "slices",
]

#: Answers up to this size are gathered and sent with their length.
WHOLE_BYTES = 64 << 20
#: Chunks at least this large are sent from their own buffer, smaller ones are joined.
OWN_BYTES = 64 << 10

Chunk = bytes | memoryview
#: A packed item: its chunks, in order.
Packed = list[Chunk]

# Packed chunks of result objects by id, each entry dropped when its object dies (results
# hold arrays: not hashable). Results are never changed once made (the result cache hands
# the same object to every reader), so their packing holds for as long as they live.
_packed: dict[int, tuple[weakref.ref[Schema], Packed]] = {}


def _forget(key: int) -> Callable[[weakref.ref[Schema]], None]:
    def forget(_: weakref.ref[Schema]) -> None:
        # Runs as the object is freed, before its id can be reused.
        _packed.pop(key, None)

    return forget


def result_item(index: int, file_path: str, value: Schema) -> Packed:
    """``wire.pack_chunks({"index": index, "file_path": file_path, "result":
    value.to_dict()})``, with ``value``'s part packed only the first time it is asked for."""
    key = id(value)
    entry = _packed.get(key)
    if entry is not None and entry[0]() is value:
        chunks = entry[1]
    else:
        chunks = wire.pack_chunks(value.to_dict())
        _packed[key] = (weakref.ref(value, _forget(key)), chunks)
    return [item_head(index, file_path), *chunks]


def item_head(index: int, file_path: str) -> bytes:
    """The packed start of a result item, up to its ``result`` value."""
    return (
        b"\x83\xa5index"
        + wire.pack(index)
        + b"\xa9file_path"
        + wire.pack(file_path)
        + b"\xa6result"
    )


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _size(chunk: Chunk) -> int:
    return len(chunk) if isinstance(chunk, bytes) else chunk.nbytes


def slices(chunks: list[Chunk], target: int = SLICE_BYTES, own: int = OWN_BYTES) -> list[Chunk]:
    """``chunks`` regrouped into fewer pieces, same bytes in order: runs of chunks smaller
    than ``own`` bytes are joined (one copy, up to about ``target`` bytes a piece); a larger
    chunk is sent as views of at most ``target`` bytes of its own buffer (no copy: copying
    fresh memory costs more than a message). No piece is empty."""
    out: list[Chunk] = []
    group: list[Chunk] = []
    held = 0
    for chunk in chunks:
        n = _size(chunk)
        if n == 0:
            continue
        if n >= own:
            if group:
                out.append(b"".join(group))
                group, held = [], 0
            view = memoryview(chunk).cast("B")
            out += [view[i : i + target] for i in range(0, n, target)]
            continue
        group.append(chunk)
        held += n
        if held >= target:
            out.append(b"".join(group))
            group, held = [], 0
    if group:
        out.append(b"".join(group))
    return out


def _chunks(item: dict[str, Any] | Packed) -> Packed:
    return item if isinstance(item, list) else wire.pack_chunks(item)


class ItemsResponse(Response):
    """A msgpack array of ``count`` items taken from ``items`` (each item a dict packed with
    ``wire.pack_chunks``, or already packed): whole with Content-Length up to
    ``whole_bytes``, else streamed.

    ``items`` must yield exactly ``count`` items; it is closed when the answer ends, also
    when the client goes away.
    """

    media_type = MSGPACK_MEDIA_TYPE

    def __init__(
        self,
        count: int,
        items: AsyncIterator[dict[str, Any] | Packed],
        whole_bytes: int = WHOLE_BYTES,
        background: BackgroundTask | None = None,
    ) -> None:
        self.count = count
        self.items = items
        self.whole_bytes = whole_bytes
        super().__init__(None, headers={"content-length": "0"}, background=background)

    def render(self, content: Any) -> bytes:
        return b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._answer(scope, send)
        if self.background is not None:
            await self.background()

    async def _answer(self, scope: Scope, send: Send) -> None:
        async with contextlib.aclosing(self.items) as items:  # type: ignore[type-var]
            pending: list[Chunk] = [array_header(self.count)]
            held = len(pending[0])
            whole = True
            async for item in items:
                chunks = _chunks(item)
                pending += chunks
                held += sum(_size(c) for c in chunks)
                if held > self.whole_bytes:
                    whole = False
                    break
            if whole:
                self.headers["content-length"] = str(held)
            else:
                del self.headers["content-length"]  # chunked: the length is not known yet
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if whole and EXTENSION in (scope.get("extensions") or {}):
                # One message: a worker thread writes every piece with writev, where one
                # ASGI message per piece costs tens of microseconds each on the event loop.
                message = {"type": SENDFILE, "fd": -1, "parts": pending, "count": held}
                await send({**message, "check": None})
                await send({"type": "http.response.body", "body": b""})
                return
            await self._send(send, pending, more=not whole)
            if whole:
                return
            async for item in items:
                await self._send(send, _chunks(item), more=True)
            await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _send(send: Send, chunks: list[Chunk], *, more: bool) -> None:
        pieces = slices(chunks)
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece, "more_body": more or i < last})
        if last < 0 and not more:
            await send({"type": "http.response.body", "body": b""})

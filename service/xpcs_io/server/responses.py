"""The only place response bytes are produced: msgpack (default) or JSON, chosen by Accept.

msgpack responses are streamed as small headers plus each array's own buffer (no copy of the
payload, see ``xpcs_io.wire.pack_chunks``) with an exact Content-Length. JSON responses turn
arrays into nested lists with NaN/Inf as null, and refuse arrays too large for JSON.

Bodies go to the server in slices of at most ``SLICE_BYTES`` (views, not copies): the server
waits for the client to drain each before taking the next, so a client that stops reading
holds at most about one slice in the connection's buffer, not a copy of the whole answer
(the arrays themselves are shared with the result cache).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from xpcs_io import wire
from xpcs_io.schemas import Schema

__all__ = [
    "JSON_MEDIA_TYPE",
    "MSGPACK_MEDIA_TYPE",
    "SLICE_BYTES",
    "JsonTooLargeError",
    "MsgpackResponse",
    "SlicedResponse",
    "encode",
    "wants_json",
]

SLICE_BYTES = 1 << 20
MSGPACK_MEDIA_TYPE = wire.MEDIA_TYPE
JSON_MEDIA_TYPE = "application/json"


class JsonTooLargeError(Exception):
    """An array too large for JSON was asked for as JSON (HTTP 406)."""


def wants_json(request: Request) -> bool:
    """True when the client prefers JSON over msgpack (msgpack wins ties and ``*/*``)."""
    accept = request.headers.get("accept", "")
    best_json = best_msgpack = -1.0
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.strip().lower()
        if media in (JSON_MEDIA_TYPE, "application/problem+json"):
            best_json = max(best_json, q)
        elif media in (MSGPACK_MEDIA_TYPE, "application/x-msgpack", "application/*", "*/*"):
            best_msgpack = max(best_msgpack, q)
    return best_json > 0 and best_json > best_msgpack


async def _send_sliced(send: Send, chunks: list[bytes | memoryview]) -> None:
    pieces: list[bytes | memoryview] = []
    for chunk in chunks:
        n = len(chunk) if isinstance(chunk, bytes) else chunk.nbytes
        if n <= SLICE_BYTES:
            pieces.append(chunk)
            continue
        view = memoryview(chunk).cast("B")
        pieces += [view[i : i + SLICE_BYTES] for i in range(0, n, SLICE_BYTES)]
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        await send({"type": "http.response.body", "body": piece, "more_body": i < last})
    if last < 0:
        await send({"type": "http.response.body", "body": b""})


class SlicedResponse(Response):
    """A ``Response`` whose body is sent in slices of at most ``SLICE_BYTES``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await _send_sliced(send, [self.body])


class MsgpackResponse(Response):
    """A msgpack body sent as a list of chunks, arrays straight from their own buffers."""

    media_type = MSGPACK_MEDIA_TYPE

    def __init__(
        self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        self.chunks = wire.pack_chunks(content)
        super().__init__(None, status_code=status_code, headers=headers)
        length = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in self.chunks)
        self.headers["content-length"] = str(length)

    def render(self, content: Any) -> bytes:
        return b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
        else:
            await _send_sliced(send, self.chunks)
        if self.background is not None:
            await self.background()


def _jsonable(value: Any, limit: int, field: str = "") -> Any:
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, np.ndarray):
        if value.size > limit:
            raise JsonTooLargeError(
                f"{field or 'array'} has {value.size:,} elements, more than the {limit:,} "
                "sent as JSON; ask for application/msgpack"
            )
        if value.dtype.kind in "fc":
            finite = np.isfinite(value)
            if not finite.all():
                obj = value.astype(object)
                obj[~finite] = None
                return obj.tolist()
        return value.tolist()
    if isinstance(value, Mapping):
        return {
            str(k): _jsonable(v, limit, f"{field}.{k}" if field else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v, limit, field) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item(), limit, field)
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def encode(
    request: Request,
    content: Any,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    json_limit: int = 1_000_000,
) -> Response:
    """Encode ``content`` (a schema, dict, list or scalar) as the client asked.

    Raises:
        JsonTooLargeError: JSON was asked for an array above ``json_limit`` elements.
    """
    if isinstance(content, Schema):
        content = content.to_dict()
    if wants_json(request):
        body = json.dumps(_jsonable(content, json_limit), separators=(",", ":"), allow_nan=False)
        return SlicedResponse(
            body, status_code=status_code, headers=headers, media_type=JSON_MEDIA_TYPE
        )
    return MsgpackResponse(content, status_code=status_code, headers=headers)

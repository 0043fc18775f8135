"""Answers sent from a file plan (``xpcs_io.server.fileplans``), without the HDF5 read.

- raw arrays: the msgpack headers, then each array's bytes with ``os.sendfile`` (the
  ``xpcs_io.server.zerocopy`` extension; else read with ``pread``), Content-Length exact;
- compressed arrays (``XPCS-Array-Codec``): each array read with ``pread`` and compressed
  4 MiB at a time on a worker thread while the previous piece is written, one blosc2 chunk
  a piece (chunked transfer encoding: the compressed size is not known before).

Never an answer that mixes file states: the file open for sending must be the version the
plan was made from (device, inode, size, mtime, ctime; no writer's lock, not marked open),
checked before the first byte and again after the last byte was read; the final bytes of the
body are held back until that second check passed, and a change resets the connection
instead (the client sees it end early: ``RemoteConnectionError``, which it may retry). Bytes
handed to ``sendfile`` stay in the page cache until the peer has read them, so a rewrite
in place could still reach them: the last ``TAIL`` bytes (at least any TCP receive window)
are therefore copied privately, and the check waits until the peer has acknowledged them,
by which time every byte sent from the page cache has left the peer's kernel.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, Final

import msgpack
import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from xpcs_io import arraycodec
from xpcs_io.extents import Extents
from xpcs_io.server.fileplans import FilePlan, PlanStore, bin_header, segments, unchanged
from xpcs_io.server.responses import MSGPACK_MEDIA_TYPE
from xpcs_io.server.zerocopy import ABORT, EXTENSION, SENDFILE

__all__ = ["COMPRESS_RATE", "TAIL", "PlanResponse"]

_SLICE: Final = 1 << 20
#: Raw bytes of an array read and compressed at a time (one blosc2 chunk each): the first
#: bytes of a compressed array leave after this much was compressed, not the whole array.
_PIECE: Final = 4 << 20
#: Pieces read and compressed ahead of the one being written (one: blosc2 already
#: compresses a piece on every core).
_AHEAD: Final = 1
_PACKER = msgpack.Packer(use_bin_type=True)


def _window_bound() -> int:
    """The most bytes a TCP peer may hold unread: the largest receive buffer it can have."""
    sizes = [32 << 20]
    for path, factor in (("/proc/sys/net/ipv4/tcp_rmem", 1), ("/proc/sys/net/core/rmem_max", 2)):
        try:
            with open(path) as f:
                sizes.append(int(f.read().split()[-1]) * factor)
        except (OSError, ValueError, IndexError):
            sizes.append(64 << 20)
    return max(sizes) + (1 << 20)


#: Bytes at the end of a body that are sent from a private copy, never with sendfile.
TAIL: Final = _window_bound()


def _worth(ext: Extents) -> bool:
    """Whether an array is sent compressed (when its first piece shrinks enough)."""
    return ext.nbytes >= arraycodec.MIN_BYTES and np.dtype(ext.dtype).kind in "biufc"


def _pieces(ext: Extents) -> list[tuple[int, int]]:
    """``(start, count)`` of the pieces an array's bytes are compressed in (one for an
    array sent plain)."""
    n = ext.nbytes
    if not _worth(ext):
        return [(0, n)]
    return [(start, min(_PIECE, n - start)) for start in range(0, n, _PIECE)]


def _array_head(ext: Extents, squeezed: bool, pieces: int) -> bytes:
    """What comes before an array's data: a compressed array map up to its array of
    ``pieces`` chunks, or a plain array map up to its bin header."""
    head: bytes = b"\x84" if squeezed else b"\x83"
    head += b"\xa5dtype" + _PACKER.pack(ext.dtype) + b"\xa5shape" + _PACKER.pack(list(ext.shape))
    if squeezed:
        array: bytes = _PACKER.pack_array_header(pieces)
        return head + b"\xa5codec\xa6blosc2\xa4data" + array
    return head + b"\xa4data" + bin_header(ext.nbytes)


def _pread(fd: int, offset: int, count: int) -> bytes:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise _ChangedError
    return data


def _read_range(fd: int, ext: Extents, start: int, count: int) -> np.ndarray[Any, Any]:
    """Bytes ``start`` to ``start + count`` of an array (in C order) from its spans."""
    out = np.empty(count, np.uint8)
    view = out.data
    pos = logical = 0
    for offset, n in ext.spans:
        lo, hi = max(start, logical), min(start + count, logical + n)
        if lo < hi:
            if os.preadv(fd, [view[pos : pos + hi - lo]], offset + lo - logical) != hi - lo:
                raise _ChangedError
            pos += hi - lo
        logical += n
    return out


class _Rate:
    """The raw bytes a second this process reads and compresses pieces at: a running mean
    over recent pieces (sent as ``arraycodec.RATE_HEADER`` with compressed answers)."""

    def __init__(self) -> None:
        self._seconds_per_byte: float | None = None

    def note(self, nbytes: int, seconds: float) -> None:
        """One piece of ``nbytes`` raw bytes took ``seconds`` to read and compress."""
        if nbytes <= 0 or seconds <= 0:
            return
        cost, old = seconds / nbytes, self._seconds_per_byte
        self._seconds_per_byte = cost if old is None else 0.8 * old + 0.2 * cost

    def bytes_per_second(self) -> float | None:
        """The rate, None before the first piece."""
        cost = self._seconds_per_byte
        return None if cost is None else 1.0 / cost


#: This process's pace of reading and compressing pieces.
COMPRESS_RATE: Final = _Rate()


class _ChangedError(Exception):
    """The file changed (or was cut) while its bytes were being sent."""


class PlanResponse(Response):
    """An answer sent from a ``FilePlan`` and the file open as ``fd`` (closed when done).

    ``preset`` names the array compression the client accepts, or None for raw arrays;
    ``release`` is called when the answer is over, as is ``store.done()`` (it was made from
    a plan that ``store.get`` handed out).
    """

    media_type = MSGPACK_MEDIA_TYPE

    def __init__(
        self,
        plan: FilePlan,
        fd: int,
        store: PlanStore,
        preset: str | None,
        headers: dict[str, str],
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.plan, self.fd, self.store, self.preset = plan, fd, store, preset
        self.release = release
        self.segments = segments(plan.skeleton, raw=preset is None)
        super().__init__(None, headers=headers)
        self.length = sum(len(s) if isinstance(s, bytes) else s.nbytes for s in self.segments)
        if preset is None:
            self.headers["content-length"] = str(self.length)
        else:
            del self.headers["content-length"]
            rate = COMPRESS_RATE.bytes_per_second()
            if rate is not None:  # lets a client tell a link-paced answer from our pace
                self.headers[arraycodec.RATE_HEADER] = str(int(rate))

    def render(self, content: Any) -> bytes:
        return b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if scope.get("method") == "HEAD":
                await send({"type": "http.response.body", "body": b""})
                return
            zero_copy = EXTENSION in (scope.get("extensions") or {})
            self.store.add("responses")
            if self.preset is None and zero_copy:
                await self._send_file(send)
                return
            try:
                if self.preset is None:
                    final = await self._send_raw(send)
                else:
                    final = await self._send_compressed(send)
                if not await run_in_threadpool(self._unchanged):
                    raise _ChangedError
            except _ChangedError:
                self.store.add("aborts")
                if not zero_copy:
                    raise
                await send({"type": ABORT})
                return
            await send({"type": "http.response.body", "body": final})
        finally:
            os.close(self.fd)
            self.release()
            self.store.done()

    def _unchanged(self) -> bool:
        return unchanged(self.fd, self.plan.identity, self.store.policy)

    def _parts(self, private_from: int, step: int) -> list[bytes | tuple[int, int, bool]]:
        """The body as bytes and ``(offset, count, private)`` file parts: bytes from
        ``private_from`` on are private, file parts are at most ``step`` bytes long, and the
        last part is small (it is held back until the final check)."""
        parts: list[bytes | tuple[int, int, bool]] = []
        pos = 0
        for seg in self.segments:
            if isinstance(seg, bytes):
                parts.append(seg)
                pos += len(seg)
                continue
            for offset, count in seg.spans:
                cut = min(max(private_from - pos, 0), count)
                if cut:
                    parts.append((offset, cut, False))
                for start in range(cut, count, step):
                    parts.append((offset + start, min(step, count - start), True))
                pos += count
        last = parts[-1]
        if not isinstance(last, bytes) and last[1] > _SLICE:
            parts[-1:] = [
                (last[0], last[1] - _SLICE, True),
                (last[0] + last[1] - _SLICE, _SLICE, True),
            ]
        return parts

    async def _send_file(self, send: Send) -> None:
        """The whole raw body in one ``SENDFILE`` message: sendfile up to the private tail."""
        parts = self._parts(self.length - TAIL, self.length)
        changed = []

        def check() -> bool:
            if self._unchanged():
                return True
            changed.append(True)
            return False

        message = {"type": SENDFILE, "fd": self.fd, "parts": parts, "check": check}
        await send({**message, "count": self.length})
        for part in parts:
            if not isinstance(part, bytes):
                self.store.add("copied_bytes" if part[2] else "sendfile_bytes", part[1])
        if changed:
            self.store.add("aborts")
        # Completes uvicorn's bookkeeping (nothing left to send); ignored after an abort.
        await send({"type": "http.response.body", "body": b""})

    async def _send_raw(self, send: Send) -> bytes:
        """Send all but the final piece as body messages (every byte read with ``pread``);
        returns the final piece."""
        *body, last = self._parts(0, _SLICE)
        final = (
            last
            if isinstance(last, bytes)
            else await run_in_threadpool(_pread, self.fd, last[0], last[1])
        )
        for piece in body:
            if isinstance(piece, bytes):
                data = piece
            else:
                data = await run_in_threadpool(_pread, self.fd, piece[0], piece[1])
                self.store.add("copied_bytes", piece[1])
            await send({"type": "http.response.body", "body": data, "more_body": True})
        return final

    async def _send_compressed(self, send: Send) -> bytes:
        """Send all but the final piece, reading and compressing the arrays piece by piece
        (``_PIECE`` raw bytes each, ``_AHEAD`` at a time on worker threads) while earlier
        pieces are written; returns the final piece.

        A worthwhile array goes out as a compressed array map whose ``data`` is a msgpack
        array of blosc2 chunks, one per piece: its first bytes leave after one piece was
        compressed, not the whole array. One whose first piece does not shrink below
        ``arraycodec.MAX_RATIO``, or too small or of a kind the codec leaves alone, goes out
        as a plain array map.
        """
        preset = self.preset
        assert preset is not None
        held: list[bytes | memoryview] = []

        async def emit(chunks: list[bytes | memoryview]) -> None:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                for i in range(0, view.nbytes, _SLICE):
                    if held:
                        body = held.pop()
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    held.append(view[i : i + _SLICE])

        # Whether the next piece is made with the faster compressor: while the last piece
        # kept the sender waiting longer than writing the one before took (the link took
        # it faster than it was compressed), and back once the link is the slower again.
        fast = False

        def job(
            ext: Extents, start: int, count: int, pack: bool, fast: bool
        ) -> tuple[Any, bytes | None]:
            began = time.perf_counter()
            raw = _read_range(self.fd, ext, start, count)
            self.store.add("copied_bytes", count)
            if not pack:
                return raw, None
            itemsize = np.dtype(ext.dtype).itemsize
            packed = arraycodec.compress_piece(raw.data, itemsize, preset, fast)
            COMPRESS_RATE.note(count, time.perf_counter() - began)
            return raw, packed

        work = [
            (ext, start, count, _worth(ext))
            for ext in self.segments
            if isinstance(ext, Extents)
            for start, count in _pieces(ext)
        ]
        loop = asyncio.get_running_loop()
        ahead: list[asyncio.Future[tuple[Any, bytes | None]]] = []

        def refill() -> None:
            while work and len(ahead) < _AHEAD:
                ext, a, b, pack = work.pop(0)
                ahead.append(loop.create_task(run_in_threadpool(job, ext, a, b, pack, fast)))

        writing: float | None = None  # seconds the last piece took to write
        try:
            refill()
            for seg in self.segments:
                if isinstance(seg, bytes):
                    await emit([seg])
                    continue
                count = len(_pieces(seg))
                squeezed = False
                for k in range(count):
                    began = time.perf_counter()
                    raw, packed = await ahead.pop(0)
                    waited = time.perf_counter() - began
                    if writing is not None:  # not for the first piece: nothing was written
                        fast = waited > writing
                    refill()  # read and compress the next pieces while this one is written
                    if k == 0:  # the first piece decides for the array
                        limit = arraycodec.MAX_RATIO * raw.nbytes
                        squeezed = packed is not None and len(packed) <= limit
                        await emit([_array_head(seg, squeezed, count)])
                    began = time.perf_counter()
                    if squeezed:
                        assert packed is not None
                        await emit([bin_header(len(packed)), packed])
                    else:
                        await emit([raw.data])
                    writing = time.perf_counter() - began
        finally:
            if ahead:  # a thread still reading the file must be done before it is closed
                await asyncio.wait(ahead)
        return bytes(held.pop()) if held else b""

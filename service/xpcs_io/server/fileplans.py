"""Answers sent from the file's bytes, without the HDF5 read: file plans.

A read whose arrays are a file's bytes verbatim (``xpcs_io.extents``: contiguous or
row-chunked, unfiltered, no type conversion) is learnt once per file version: the answer
with each such array replaced by where its bytes lie (a *plan*: metadata, no array data;
arrays under 64 KiB stay in it). Every plan is checked against the file once, byte for byte,
before it is kept. Later requests for the same file version (same ``DataIdentity``) and
request are answered from the plan, when the result cache would not keep the answer anyway:

- raw arrays: the msgpack headers, then each array's bytes with ``os.sendfile`` (the
  ``xpcs_io.server.zerocopy`` extension; else read with ``pread``), Content-Length exact;
- compressed arrays (``XPCS-Array-Codec``): each array read with ``pread`` and compressed
  on a worker thread while the previous one is written (chunked transfer encoding: the
  compressed size is not known before).

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
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from xpcs_io import arraycodec, wire
from xpcs_io.extents import Extents, Provenance, recording
from xpcs_io.locking import LockPolicy
from xpcs_io.pool import DataIdentity, FileIdentity, check_descriptor
from xpcs_io.schemas import Schema
from xpcs_io.server.responses import MSGPACK_MEDIA_TYPE
from xpcs_io.server.zerocopy import ABORT, EXTENSION, SENDFILE

__all__ = ["TAIL", "FilePlan", "PlanResponse", "PlanStore"]

#: Arrays smaller than this stay in the plan: a system call each would cost more.
MIN_FILE_ARRAY: Final = 64 << 10
#: Plans whose arrays in memory add up to more than this are not kept.
MAX_KEPT_BYTES: Final = 1 << 20
_SLICE: Final = 1 << 20
#: Answers sent from plans at once, per process: each ties up a worker thread while its
#: client reads (a stalled one for up to ``zerocopy.STALL_SECONDS``); more go through HDF5.
MAX_IN_FLIGHT: Final = 8


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


@dataclass(frozen=True)
class FilePlan:
    """An answer with its large arrays as file extents: ``skeleton`` is the answer (dicts,
    lists, scalars, small arrays) with ``Extents`` in place of arrays; ``identity`` the
    file version they belong to; ``nbytes`` the bytes of all arrays."""

    skeleton: Any
    identity: FileIdentity
    nbytes: int


def _replace(value: Any, found: Provenance, real: str, kept: list[int]) -> Any:
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, np.ndarray):
        ext = found.extents_of(value)
        big = ext is not None and value.nbytes >= MIN_FILE_ARRAY
        if big and ext is not None and os.path.realpath(ext.filename) == real:
            return ext
        kept[0] += value.nbytes
        small = value.copy()  # the plan outlives the result: its own read-only copy
        small.flags.writeable = False
        return small
    if isinstance(value, dict):
        return {k: _replace(v, found, real, kept) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(v, found, real, kept) for v in value]
    return value


def _file_arrays(skeleton: Any) -> list[Extents]:
    if isinstance(skeleton, Extents):
        return [skeleton]
    if isinstance(skeleton, dict):
        return [e for v in skeleton.values() for e in _file_arrays(v)]
    if isinstance(skeleton, list):
        return [e for v in skeleton for e in _file_arrays(v)]
    return []


def _pairs(skeleton: Any, value: Any) -> list[tuple[Extents, np.ndarray[Any, Any]]]:
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(skeleton, Extents):
        return [(skeleton, value)]
    if isinstance(skeleton, dict):
        return [p for k, v in skeleton.items() for p in _pairs(v, value[k])]
    if isinstance(skeleton, list):
        return [p for s, v in zip(skeleton, value, strict=True) for p in _pairs(s, v)]
    return []


def _same_bytes(fd: int, ext: Extents, array: np.ndarray[Any, Any]) -> bool:
    raw = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    buf = bytearray(min(_SLICE * 4, max(raw.nbytes, 1)))
    pos = 0
    for offset, count in ext.spans:
        done = 0
        while done < count:
            n = min(len(buf), count - done)
            if os.preadv(fd, [memoryview(buf)[:n]], offset + done) != n:
                return False
            if raw[pos : pos + n] != memoryview(buf)[:n]:
                return False
            done += n
            pos += n
    return pos == raw.nbytes


def _unchanged(fd: int, identity: FileIdentity, policy: LockPolicy) -> bool:
    """Whether ``fd`` is still the file version ``identity``, with no writer at work."""
    try:
        st, swmr = check_descriptor(fd, "file", policy)
    except Exception:  # gone, busy, marked open, not HDF5 any more: not that version
        return False
    return not swmr and FileIdentity.from_stat(st) == identity


def open_version(real: str, identity: FileIdentity, policy: LockPolicy) -> int | None:
    """``real`` opened for reading when it is the file version ``identity`` now, else None."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if _unchanged(fd, identity, policy):
        return fd
    os.close(fd)
    return None


class PlanStore:
    """The plans of recent (file version, request) pairs, and counters for ``/metrics``."""

    def __init__(self, policy: LockPolicy, max_entries: int = 256) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self._plans: OrderedDict[Hashable, FilePlan] = OrderedDict()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.counts = dict.fromkeys(
            ("plans", "responses", "sendfile_bytes", "copied_bytes", "aborts"), 0
        )

    def add(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name``."""
        with self._lock:
            self.counts[name] += n

    def stats(self) -> dict[str, int]:
        """The counters, named ``zero_copy_<name>``."""
        with self._lock:
            return {f"zero_copy_{k}": v for k, v in self.counts.items()}

    def get(self, key: Hashable) -> FilePlan | None:
        """The plan learnt for ``key``, if any, when another answer may be sent from a plan
        now (at most ``MAX_IN_FLIGHT`` at once); the answer must call ``done()`` at its end."""
        with self._lock:
            plan = self._plans.get(key)
            if plan is None or self.in_flight >= MAX_IN_FLIGHT:
                return None
            self._plans.move_to_end(key)
            self.in_flight += 1
            return plan

    def done(self) -> None:
        """An answer sent from a plan (one ``get`` returned) is over."""
        with self._lock:
            self.in_flight -= 1

    def learning(
        self,
        produce: Callable[[], tuple[Any, Any]],
        key: Hashable,
        real: str,
        identity: DataIdentity,
    ) -> tuple[Callable[[], tuple[Any, Any]], Callable[[], None]]:
        """``produce`` (a read returning ``(result, file version read)``, run on a worker
        thread) noting where its arrays came from, and the function that then learns the
        plan of its result when the read used ``identity`` (run it after the answer is sent,
        on a worker thread: it reads the file once more to check the plan)."""
        noted: list[tuple[Any, Any, Provenance]] = []

        def run() -> tuple[Any, Any]:
            with recording() as found:
                value, seen = produce()
            noted.append((value, seen, found))
            return value, seen

        def learn() -> None:
            if not noted:
                return
            value, seen, found = noted.pop()
            if seen == identity.file and not identity.swmr:
                self.learn(key, value, found, real, identity.file)

        return run, learn

    def learn(
        self, key: Hashable, value: Any, found: Provenance, real: str, identity: FileIdentity
    ) -> None:
        """Keep the plan of ``value`` (read from ``real`` at ``identity``) when it has file
        arrays whose bytes equal the file's now, at that same version."""
        kept = [0]
        skeleton = _replace(value, found, real, kept)
        files = _file_arrays(skeleton)
        if not files or kept[0] > MAX_KEPT_BYTES:
            return
        fd = open_version(real, identity, self.policy)
        if fd is None:
            return
        try:
            same = all(_same_bytes(fd, ext, arr) for ext, arr in _pairs(skeleton, value))
            if not same or not _unchanged(fd, identity, self.policy):
                return
        finally:
            os.close(fd)
        plan = FilePlan(skeleton, identity, sum(e.nbytes for e in files) + kept[0])
        with self._lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > self.max_entries:
                self._plans.popitem(last=False)
            self.counts["plans"] += 1


_PACKER = msgpack.Packer(use_bin_type=True)


def _bin_header(n: int) -> bytes:
    """The smallest msgpack bin header for ``n`` bytes (as ``wire`` and msgpack write it)."""
    if n < 0x100:
        return bytes((0xC4, n))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _segments(skeleton: Any, out: list[bytes | Extents], raw: bool) -> None:
    """The body of ``skeleton`` as msgpack bytes and file arrays, in order. With ``raw``
    a file array comes after its header (framed exactly as ``wire.pack_chunks`` frames an
    array of that dtype and shape); else it stands for its whole array map."""
    if isinstance(skeleton, Extents):
        if raw:
            head = b"\x83\xa5dtype" + _PACKER.pack(skeleton.dtype) + b"\xa5shape"
            head += _PACKER.pack(list(skeleton.shape)) + b"\xa4data"
            out.append(head + _bin_header(skeleton.nbytes))
        out.append(skeleton)
    elif isinstance(skeleton, dict):
        out.append(_PACKER.pack_map_header(len(skeleton)))
        for k, v in skeleton.items():
            out.append(_PACKER.pack(k))
            _segments(v, out, raw)
    elif isinstance(skeleton, list):
        out.append(_PACKER.pack_array_header(len(skeleton)))
        for v in skeleton:
            _segments(v, out, raw)
    else:
        out.append(b"".join(bytes(c) for c in wire.pack_chunks(skeleton)))


def _merged(segments: list[bytes | Extents]) -> list[bytes | Extents]:
    out: list[bytes | Extents] = []
    for seg in segments:
        if isinstance(seg, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += seg
        elif not isinstance(seg, bytes) or seg:
            out.append(seg)
    return out


def _pread(fd: int, offset: int, count: int) -> bytes:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise _ChangedError
    return data


def _read_array(fd: int, ext: Extents) -> np.ndarray[Any, Any]:
    out = np.empty(ext.shape, np.dtype(ext.dtype))
    view = out.reshape(-1).view(np.uint8).data
    pos = 0
    for offset, count in ext.spans:
        if os.preadv(fd, [view[pos : pos + count]], offset) != count:
            raise _ChangedError
        pos += count
    return out


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
        segments: list[bytes | Extents] = []
        _segments(plan.skeleton, segments, raw=preset is None)
        self.segments = _merged(segments)
        super().__init__(None, headers=headers)
        self.length = sum(len(s) if isinstance(s, bytes) else s.nbytes for s in self.segments)
        if preset is None:
            self.headers["content-length"] = str(self.length)
        else:
            del self.headers["content-length"]

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
        return _unchanged(self.fd, self.plan.identity, self.store.policy)

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
        """Send all but the final piece, compressing each array while the previous one is
        written; returns the final piece."""
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

        def prepare(ext: Extents) -> list[bytes | memoryview]:
            array = _read_array(self.fd, ext)
            self.store.add("copied_bytes", ext.nbytes)
            return wire.pack_chunks(arraycodec.compress(array, preset) or array)

        loop = asyncio.get_running_loop()
        files = [s for s in self.segments if isinstance(s, Extents)]
        ahead: dict[int, asyncio.Future[list[bytes | memoryview]]] = {}

        def start(i: int) -> None:
            if i < len(files):
                ahead[i] = loop.create_task(run_in_threadpool(prepare, files[i]))

        start(0)
        index = 0
        try:
            for seg in self.segments:
                if isinstance(seg, bytes):
                    await emit([seg])
                    continue
                chunks = await ahead.pop(index)
                index += 1
                start(index)  # read and compress the next array while this one is written
                await emit(chunks)
        finally:
            if ahead:  # a thread still reading the file must be done before it is closed
                await asyncio.wait(ahead.values())
        return bytes(held.pop()) if held else b""

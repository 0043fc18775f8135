"""File plans: where an answer's arrays lie in the file, learnt once per file version.

A read whose arrays are a file's bytes verbatim (``xpcs_io.extents``: contiguous or
row-chunked, unfiltered, no type conversion) is learnt once per file version, after its
answer went out: the answer with each such array replaced by where its bytes lie (a *plan*:
metadata, no array data; arrays under 64 KiB stay in it as read-only copies). Every plan is
checked against the file once, byte for byte, before it is kept. Later requests for the same
file version (same ``DataIdentity``) and request are answered from the plan by
``xpcs_io.server.planresponse`` when the result cache is off, at most ``MAX_IN_FLIGHT`` at
once per process.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import numpy as np

from xpcs_io import wire
from xpcs_io.extents import Extents, Provenance, recording
from xpcs_io.locking import LockPolicy
from xpcs_io.pool import DataIdentity, FileIdentity, check_descriptor
from xpcs_io.schemas import Schema

__all__ = [
    "MAX_IN_FLIGHT",
    "FilePlan",
    "PlanStore",
    "bin_header",
    "open_version",
    "read_extents",
    "segments",
    "unchanged",
]

#: Arrays smaller than this stay in the plan: a system call each would cost more.
MIN_FILE_ARRAY: Final = 64 << 10
#: Plans whose arrays in memory add up to more than this are not kept.
MAX_KEPT_BYTES: Final = 1 << 20
_BLOCK: Final = 4 << 20
#: Answers sent from plans at once, per process: each ties up a worker thread while its
#: client reads (a stalled one for up to ``zerocopy.STALL_SECONDS``); more go through HDF5.
MAX_IN_FLIGHT: Final = 8


@dataclass(frozen=True)
class FilePlan:
    """An answer with its large arrays as file extents: ``skeleton`` is the answer (dicts,
    lists, scalars, small arrays) with ``Extents`` in place of arrays; ``identity`` the
    file version they belong to; ``nbytes`` the bytes of all arrays."""

    skeleton: Any
    identity: FileIdentity
    nbytes: int
    #: The raw msgpack body: bytes, and file arrays after their headers (``segments``).
    raw: tuple[bytes | Extents, ...] = ()


def _replace(value: Any, found: Provenance, real: str, kept: list[int]) -> Any:
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, np.ndarray):
        ext = found.extents_of(value)
        big = ext is not None and value.nbytes >= MIN_FILE_ARRAY
        if big and ext is not None and os.path.realpath(ext.filename) == real:
            return ext
        kept[0] += value.nbytes
        if kept[0] > MAX_KEPT_BYTES:  # no plan will be kept (``learn`` stops): copy nothing
            return value
        small = value.copy()  # the plan outlives the result: its own read-only copy
        small.flags.writeable = False
        return small
    if isinstance(value, dict):
        return {k: _replace(v, found, real, kept) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(v, found, real, kept) for v in value]
    return value


_PACKER = msgpack.Packer(use_bin_type=True)


def bin_header(n: int) -> bytes:
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
            out.append(head + bin_header(skeleton.nbytes))
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


def _merged(found: list[bytes | Extents]) -> list[bytes | Extents]:
    out: list[bytes | Extents] = []
    for seg in found:
        if isinstance(seg, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += seg
        elif not isinstance(seg, bytes) or seg:
            out.append(seg)
    return out


def segments(skeleton: Any, *, raw: bool) -> list[bytes | Extents]:
    """The msgpack body of ``skeleton`` as bytes and file arrays in order, adjacent bytes
    joined (see ``_segments``)."""
    found: list[bytes | Extents] = []
    _segments(skeleton, found, raw)
    return _merged(found)


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
    buf = bytearray(min(_BLOCK, max(raw.nbytes, 1)))
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


def read_extents(fd: int, ext: Extents) -> np.ndarray[Any, Any] | None:
    """The array ``ext`` describes, read from ``fd`` with ``pread``; None when the file ends
    before its bytes do (it was cut)."""
    out = np.empty(ext.shape, np.dtype(ext.dtype))
    view = out.reshape(-1).view(np.uint8).data
    pos = 0
    for offset, count in ext.spans:
        if os.preadv(fd, [view[pos : pos + count]], offset) != count:
            return None
        pos += count
    return out


def unchanged(fd: int, identity: FileIdentity, policy: LockPolicy) -> bool:
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
    if unchanged(fd, identity, policy):
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

    def packed_answer(
        self, key: Hashable, real: str, identity: FileIdentity, fd: int | None = None
    ) -> tuple[list[bytes | memoryview], list[np.ndarray[Any, Any]]] | None:
        """The answer for ``key`` packed as ``wire.pack_chunks`` packs it (the same bytes),
        built from its plan and the bytes of ``real`` now, with ``pread`` and no HDF5 call,
        and the arrays read (the chunks are views of them); None when there is no plan, the
        file is not the version ``identity`` any more or changed while it was read (read it
        through HDF5 then). ``fd``: the file already open and checked to be at ``identity``
        (left open), else it is opened here. Runs on a worker thread: a few system calls per
        array.
        """
        plan = self.get(key)
        if plan is None:
            return None
        try:
            if plan.identity != identity or not plan.raw:
                return None
            own = fd is None
            if fd is None:
                fd = open_version(real, identity, self.policy)
            if fd is None:
                return None
            chunks: list[bytes | memoryview] = []
            arrays: list[np.ndarray[Any, Any]] = []
            try:
                for seg in plan.raw:
                    if isinstance(seg, bytes):
                        chunks.append(seg)
                        continue
                    array = read_extents(fd, seg)
                    if array is None:
                        return None
                    arrays.append(array)
                    chunks.append(array.reshape(-1).view(np.uint8).data)
                if not unchanged(fd, identity, self.policy):
                    return None
            finally:
                if own:
                    os.close(fd)
            self.add("responses")
            self.add("copied_bytes", sum(a.nbytes for a in arrays))
            return chunks, arrays
        finally:
            self.done()

    def done(self) -> None:
        """An answer sent from a plan (one ``get`` returned) is over."""
        with self._lock:
            self.in_flight -= 1

    def learning(
        self,
        produce: Callable[[], tuple[Any, bool]],
        key: Hashable,
        real: str,
        identity: DataIdentity,
    ) -> tuple[Callable[[], tuple[Any, bool]], Callable[[], None]]:
        """``produce`` (a read returning ``(result, whether it used the file version
        identity names)``, run on a worker thread) noting where its arrays came from, and the
        function that then learns the plan of its result when the read used ``identity``
        (run it after the answer is sent, on a worker thread: it reads the file once more to
        check the plan)."""
        noted: list[tuple[Any, bool, Provenance]] = []

        def run() -> tuple[Any, bool]:
            with recording() as found:
                value, matched = produce()
            noted.append((value, matched, found))
            return value, matched

        def learn() -> None:
            if not noted:
                return
            value, matched, found = noted.pop()
            if matched and not identity.swmr:
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
            if not same or not unchanged(fd, identity, self.policy):
                return
        finally:
            os.close(fd)
        nbytes = sum(e.nbytes for e in files) + kept[0]
        plan = FilePlan(skeleton, identity, nbytes, tuple(segments(skeleton, raw=True)))
        with self._lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > self.max_entries:
                self._plans.popitem(last=False)
            self.counts["plans"] += 1

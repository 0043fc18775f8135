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

import numpy as np

from xpcs_io.extents import Extents, Provenance, recording
from xpcs_io.locking import LockPolicy
from xpcs_io.pool import DataIdentity, FileIdentity, check_descriptor
from xpcs_io.schemas import Schema

__all__ = ["MAX_IN_FLIGHT", "FilePlan", "PlanStore", "open_version", "unchanged"]

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
        plan = FilePlan(skeleton, identity, sum(e.nbytes for e in files) + kept[0])
        with self._lock:
            self._plans[key] = plan
            self._plans.move_to_end(key)
            while len(self._plans) > self.max_entries:
                self._plans.popitem(last=False)
            self.counts["plans"] += 1

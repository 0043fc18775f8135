"""Memory for large response bodies, reused once every array viewing it is gone.

A Content-Length body is received straight into the buffer its arrays then view. A fresh
buffer of a q-map's 67 MB is fresh memory from the kernel, which zeroes every page of it on
first touch: measured on 2 cores, that took 18 ms of the client's CPU per read, more than
half of all it spent receiving, and with 8 viewers in one process it took 7% of the machine.
glibc's malloc keeps freed blocks for reuse only up to 32 MiB, so bodies this size always
came back from the kernel.

``BodyPool.take(n)`` hands out a body in an anonymous mapping (a slab). The slab goes back to
the pool when the body array is collected, which is when the last array, view or memoryview
of it goes (every view holds the body through numpy's base chain or the buffer protocol), so
memory is never reused while anything can still read it. Idle slabs are marked
``MADV_FREE``: reused they cost nothing, but the kernel may take their pages back under
memory pressure (they then come back zeroed, as fresh memory would).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import threading
import time
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["BODIES", "MIN_BYTES", "BodyPool"]

#: Smaller bodies come from numpy's allocator: malloc already reuses blocks of that size.
MIN_BYTES = 4 << 20

_HUGE_PAGE = 2 << 20  # slabs are whole transparent huge pages

#: Private anonymous mappings, where the system has them (not on Windows: numpy's allocator
#: serves every body there).
_PRIVATE: int | None = (
    mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap, "MAP_ANONYMOUS")
    else None
)


class BodyPool:
    """Slabs of memory for bodies of at least ``MIN_BYTES`` (thread-safe).

    ``idle_bytes`` bounds the memory kept idle. A slab unused for more than ``idle_seconds``
    is dropped the next time a body is taken or given back (until then it stays marked
    ``MADV_FREE``, which the kernel may reclaim).
    """

    def __init__(self, idle_bytes: int = 1 << 30, idle_seconds: float = 60.0) -> None:
        self.idle_bytes = idle_bytes
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[tuple[float, mmap.mmap]] = []  # (when given back, slab), oldest first
        # Slabs given back but not yet in ``_idle``: a finalizer may run in any thread, also
        # in one that holds the lock (a collection started inside ``take``), so it never
        # waits for the lock; whoever holds it next moves these over.
        self._returned: collections.deque[tuple[float, mmap.mmap]] = collections.deque()
        self.reused = 0  # bodies served from an idle slab (for tests and benchmarks)

    def take(self, n: int) -> npt.NDArray[np.uint8]:
        """A writable uint8 array of ``n`` bytes (contents undefined)."""
        if n < MIN_BYTES or _PRIVATE is None:
            return np.empty(n, dtype=np.uint8)
        slab = self._reuse(n)
        if slab is None:
            # Private: MADV_FREE takes only private anonymous memory (and a fork does not share it).
            # Room to spare: compressed answers of one file differ a little in size from
            # one read to the next, and each must fit a slab an earlier one left.
            size = -(-(n + n // 8) // _HUGE_PAGE) * _HUGE_PAGE
            slab = mmap.mmap(-1, size, flags=_PRIVATE)
            _advise(slab, "MADV_HUGEPAGE")  # a fault per 2 MiB, not per 4 KiB page
        # The body's base is a memoryview, not an array: numpy stops its base chain there,
        # so every view made from the body keeps the body itself alive.
        body = np.frombuffer(memoryview(slab)[:n], dtype=np.uint8)
        # Not at exit: arrays still alive then (used by later atexit handlers) keep their slab.
        weakref.finalize(body, self._give_back, slab).atexit = False
        return body

    def idle(self) -> int:
        """Bytes kept idle now."""
        with self._lock:
            self._settle(time.monotonic())
            return sum(len(slab) for _, slab in self._idle)

    def _reuse(self, n: int) -> mmap.mmap | None:
        """The smallest idle slab of ``n`` to ``2 n`` bytes, taken out of the pool."""
        with self._lock:
            self._settle(time.monotonic())
            fits = [i for i, (_, slab) in enumerate(self._idle) if n <= len(slab) <= 2 * n]
            if not fits:
                return None
            best = min(fits, key=lambda i: len(self._idle[i][1]))
            self.reused += 1
            return self._idle.pop(best)[1]

    def _give_back(self, slab: mmap.mmap) -> None:
        _advise(slab, "MADV_FREE")
        self._returned.append((time.monotonic(), slab))
        if self._lock.acquire(blocking=False):  # else the holder settles it
            try:
                self._settle(time.monotonic())
            finally:
                self._lock.release()

    def _settle(self, now: float) -> None:
        """Move given-back slabs to ``_idle``, drop slabs idle too long, then the oldest
        while over ``idle_bytes`` (lock held). A dropped slab is unmapped once collected:
        nothing else refers to it."""
        while self._returned:
            self._idle.append(self._returned.popleft())
        self._idle = [(t, s) for t, s in self._idle if now - t <= self.idle_seconds]
        total = sum(len(slab) for _, slab in self._idle)
        while self._idle and total > self.idle_bytes:
            total -= len(self._idle.pop(0)[1])


def _advise(slab: mmap.mmap, name: str) -> None:
    """``slab.madvise`` when this system has the option (it is advice: failures are ignored)."""
    option: Any = getattr(mmap, name, None)
    if option is None:
        return
    with contextlib.suppress(OSError):
        slab.madvise(option)


#: The pool the clients' response readers take bodies from.
BODIES = BodyPool()

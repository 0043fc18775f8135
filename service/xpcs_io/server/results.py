"""The service's cache of read results, shared by every viewer, bounded in bytes.

A result is keyed by the file's identity (device, inode, size, mtime, ctime) and the request, so
an entry can only be served while the file is byte-for-byte what it was read from: a write (a
new inode), a rewrite in place (new mtime or size) or a replacement makes a new key, and the
old entries are dropped at once. Concurrent identical requests are coalesced: one reads, the
others wait for its result (single flight), so sixteen viewers opening the same map hold one
copy of it, not sixteen. Cached arrays are made read-only; the server never changes them.

Results the cache does not keep (larger than a quarter of it, or with the cache off) belong to
the answers being sent, and a reader that stops reading keeps its answer alive. Their bytes
are counted until their arrays are freed (a weakref finalizer per array), and past
``unshared_bytes`` in total a read is refused with ``ServerBusyError`` (503, retry) instead
of holding more.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool
from fastapi.dependencies.models import Dependant
from starlette.requests import Request

from xpcs_io.arraycodec import CompressedArray
from xpcs_io.errors import ServerBusyError
from xpcs_io.schemas import Schema

__all__ = ["ResultCache", "request_key", "result_nbytes"]

_OVERHEAD = 512  # bytes charged per entry for the Python objects around the arrays


def _arrays(value: Any) -> list[np.ndarray[Any, Any]]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, CompressedArray):
        return [value.data]
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    if isinstance(value, list | tuple):  # tuples: a result and the identity it was read at
        return [a for v in value for a in _arrays(v)]
    return []


async def _in_thread(compute: Callable[[], Any]) -> Any:
    # The result goes through a box, not the thread pool's future: a finished future may
    # stay referenced for a while, which would keep the result alive after its answer.
    box: list[Any] = []
    await run_in_threadpool(lambda: box.append(compute()))
    return box.pop()


def _query_names(dependant: Dependant) -> list[str]:
    names = [p.alias for p in dependant.query_params]
    for sub in dependant.dependencies:
        names += _query_names(sub)
    return sorted(set(names))


_NAMES: dict[int, tuple[Any, list[str]]] = {}


def request_key(request: Request) -> tuple[Any, ...]:
    """What identifies a read request for the cache and its ETag: the path and the route's
    own query parameters as sent. Parameters the route does not declare are left out, so
    ``?u=1``, ``?u=2``, ... cannot make a new entry (and a new copy of the result) each."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return (request.url.path, tuple(sorted(request.query_params.multi_items())))
    known = _NAMES.get(id(route))
    if known is None or known[0] is not route:
        known = _NAMES[id(route)] = (route, _query_names(dependant))
    params = request.query_params
    return (request.url.path, tuple((n, tuple(params.getlist(n))) for n in known[1]))


def result_nbytes(value: Any) -> int:
    """What caching ``value`` costs, in bytes."""
    return sum(a.nbytes for a in _arrays(value)) + _OVERHEAD


class ResultCache:
    """LRU of read results with single-flight, at most ``max_bytes`` in total; results larger
    than ``max_bytes // 4`` are served but not kept, so one huge read cannot flush the rest."""

    def __init__(self, max_bytes: int, *, unshared_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self.unshared_limit = unshared_bytes
        self.unshared = 0  # bytes of results held only by answers in flight
        # Size of the last result of recent keys: a read known to be too large for what is
        # left of the unshared budget is refused before it allocates anything.
        self._sizes: OrderedDict[Hashable, int] = OrderedDict()
        self._entries: OrderedDict[Hashable, tuple[Any, int, str, Hashable]] = OrderedDict()
        self._by_file: dict[str, set[Hashable]] = {}
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}
        self._lock = threading.Lock()
        self.size = 0
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    async def get(
        self, key: Hashable, file: str, version: Hashable, compute: Callable[[], Any]
    ) -> Any:
        """The cached result for ``key``, or ``compute()`` run in the thread pool (once, however
        many requests ask at the same time). ``file`` is the resolved path the key belongs to
        and ``version`` the file's identity: storing a result drops the file's entries of any
        other version, which can never be asked for again.

        Raises:
            ServerBusyError: results outside the cache already hold ``unshared_bytes``.
            Exception: whatever ``compute`` raises (errors are not cached).
        """
        if self.max_bytes <= 0:
            self._check_unshared(self._sizes.get(key, 0))
            return self.lend(key, await _in_thread(compute))
        cached = self.peek(key)
        if cached is not None:
            return cached
        flight = self._flights.get(key)
        if flight is not None:
            self.coalesced += 1
            return await asyncio.shield(flight)
        self._check_unshared(self._sizes.get(key, 0))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            value = await _in_thread(compute)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it, nobody else must
            raise
        finally:
            del self._flights[key]
        self.misses += 1
        if not self._store(key, file, version, value):
            try:
                self.lend(key, value)
            except ServerBusyError as exc:
                future.set_exception(exc)
                future.exception()
                raise
        future.set_result(value)
        return value

    def _check_unshared(self, size: int) -> None:
        with self._lock:
            held = self.unshared
        if held + size > self.unshared_limit:
            raise ServerBusyError(
                f"the server holds {held:,} bytes of answers for readers (limit "
                f"{self.unshared_limit:,}): retry shortly"
            )

    def peek(self, key: Hashable) -> Any:
        """The cached result for ``key`` (counted as a hit), or None: no read, no wait (a
        many-file read answers its cached files in one pass on the event loop)."""
        if self.max_bytes <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def lend(self, key: Hashable, value: Any) -> Any:
        """Count ``value``'s arrays (a result read for ``key`` and not kept) as held by
        answers until they are freed; returns ``value``.

        Raises:
            ServerBusyError: they would pass ``unshared_limit``.
        """
        arrays = {id(a): a for a in _arrays(value)}.values()
        size = sum(a.nbytes for a in arrays)
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        while len(self._sizes) > 1024:
            self._sizes.popitem(last=False)
        self._check_unshared(size)
        with self._lock:
            self.unshared += size
        for array in arrays:
            weakref.finalize(array, self._give_back, array.nbytes)
        return value

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self.unshared -= nbytes

    def hold(self, nbytes: int) -> Callable[[], None]:
        """Count ``nbytes`` as held by an answer in flight outside the cache (one sent from
        the file: it ties up a reader's turn, not its memory); returns the release.

        Raises:
            ServerBusyError: answers outside the cache already hold ``unshared_bytes``.
        """
        with self._lock:
            if self.unshared + nbytes > self.unshared_limit:
                held = self.unshared
                raise ServerBusyError(
                    f"the server holds {held:,} bytes of answers for readers (limit "
                    f"{self.unshared_limit:,}): retry shortly"
                )
            self.unshared += nbytes
        released: list[bool] = []

        def release() -> None:
            if not released:
                released.append(True)
                self._give_back(nbytes)

        return release

    def _store(self, key: Hashable, file: str, version: Hashable, value: Any) -> bool:
        self.drop_file(file, keep=version)
        size = result_nbytes(value)
        if size > self.max_bytes // 4:
            return False
        for array in _arrays(value):
            array.flags.writeable = False
        with self._lock:
            self._entries[key] = (value, size, file, version)
            self._by_file.setdefault(file, set()).add(key)
            self.size += size
            while self.size > self.max_bytes:
                old_key, (_, old_size, old_file, _) = self._entries.popitem(last=False)
                self._forget(old_key, old_size, old_file)
        return True

    def _forget(self, key: Hashable, size: int, file: str) -> None:
        self.size -= size
        keys = self._by_file.get(file)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_file[file]

    def drop_file(self, file: str, keep: Hashable = None) -> None:
        """Forget the entries of ``file`` (resolved path), except those of version ``keep``."""
        with self._lock:
            for key in list(self._by_file.get(file, ())):
                _, size, _, version = self._entries[key]
                if keep is None or version != keep:
                    del self._entries[key]
                    self._forget(key, size, file)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._by_file.clear()
            self.size = 0

    def stats(self) -> dict[str, int]:
        """Entries, bytes held, limit, hits, misses and coalesced requests."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self.size,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "coalesced": self.coalesced,
                "unshared_bytes": self.unshared,
            }

"""The service's cache of read results, shared by every viewer, bounded in bytes.

A result is keyed by the file's identity (device, inode, size, mtime, ctime) and the request, so
an entry can only be served while the file is byte-for-byte what it was read from: a write (a
new inode), a rewrite in place (new mtime or size) or a replacement makes a new key, and the
old entries are dropped at once. Concurrent identical requests are coalesced: one reads, the
others wait for its result (single flight), so sixteen viewers opening the same map hold one
copy of it, not sixteen. Cached arrays are made read-only; the server never changes them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from xpcs_io.schemas import Schema

__all__ = ["ResultCache", "result_nbytes"]

_OVERHEAD = 512  # bytes charged per entry for the Python objects around the arrays


def _arrays(value: Any) -> list[np.ndarray[Any, Any]]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, Schema):
        value = value.to_dict()
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    if isinstance(value, list | tuple):  # tuples: a result and the identity it was read at
        return [a for v in value for a in _arrays(v)]
    return []


def result_nbytes(value: Any) -> int:
    """What caching ``value`` costs, in bytes."""
    return sum(a.nbytes for a in _arrays(value)) + _OVERHEAD


class ResultCache:
    """LRU of read results with single-flight, at most ``max_bytes`` in total; results larger
    than ``max_bytes // 4`` are served but not kept, so one huge read cannot flush the rest."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
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
            Exception: whatever ``compute`` raises (errors are not cached).
        """
        if self.max_bytes <= 0:
            return await run_in_threadpool(compute)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
        flight = self._flights.get(key)
        if flight is not None:
            self.coalesced += 1
            return await asyncio.shield(flight)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        try:
            value = await run_in_threadpool(compute)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters re-raise it, nobody else must
            raise
        finally:
            del self._flights[key]
        future.set_result(value)
        self.misses += 1
        self._store(key, file, version, value)
        return value

    def _store(self, key: Hashable, file: str, version: Hashable, value: Any) -> None:
        self.drop_file(file, keep=version)
        size = result_nbytes(value)
        if size > self.max_bytes // 4:
            return
        for array in _arrays(value):
            array.flags.writeable = False
        with self._lock:
            self._entries[key] = (value, size, file, version)
            self._by_file.setdefault(file, set()).add(key)
            self.size += size
            while self.size > self.max_bytes:
                old_key, (_, old_size, old_file, _) = self._entries.popitem(last=False)
                self._forget(old_key, old_size, old_file)

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
            }

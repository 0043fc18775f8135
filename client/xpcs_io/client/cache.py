"""A bounded client-side cache of read results, validated by the server's ETags.

Each cached read is sent again with ``If-None-Match``; the server answers 304 when the file
(device, inode, size, mtime) and the request are unchanged, and the cached object is returned
without transferring or decoding anything. A file that changed gets a new ETag and a full
answer, so the cache can never return data older than the file. The cache is bounded in bytes
(least recently used entries go first). Cached arrays are shared between calls, so they are
made read-only: copy one before changing it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from xpcs_io.schemas import Schema

__all__ = ["ResponseCache"]

Key = tuple[str, tuple[tuple[str, str], ...]]


def _arrays(obj: Any) -> list[np.ndarray[Any, Any]]:
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, Schema):
        return [a for v in obj.to_dict().values() for a in _arrays(v)]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in _arrays(v)]
    if isinstance(obj, list):
        return [a for v in obj for a in _arrays(v)]
    return []


class ResponseCache:
    """LRU of (ETag, decoded result) per request, at most ``max_bytes`` of array data."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, tuple[str, Any, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(path: str, params: dict[str, Any]) -> Key:
        """The cache key of a request."""
        return path, tuple(sorted((k, str(v)) for k, v in params.items()))

    def lookup(self, key: Key) -> tuple[str, Any] | None:
        """(ETag, result) if this request is cached. The caller keeps the result, so an
        eviction between asking and the server's 304 cannot lose it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1]

    def hit(self) -> None:
        """Count a 304 answered from the cache."""
        with self._lock:
            self.hits += 1

    def store(self, key: Key, etag: str | None, value: Any) -> Any:
        """Remember ``value`` under ``etag``; returns it with its arrays made read-only."""
        with self._lock:
            self.misses += 1
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= old[2]
            if etag is None or self.max_bytes <= 0:
                return value
            arrays = _arrays(value)
            size = sum(a.nbytes for a in arrays)
            if size > self.max_bytes:
                return value
            for a in arrays:
                a.flags.writeable = False
            self._entries[key] = (etag, value, size)
            self._size += size
            while self._size > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._size -= dropped
            return value

    def stats(self) -> dict[str, int]:
        """Entries, bytes held, hits and misses."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._size,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
            }

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._size = 0

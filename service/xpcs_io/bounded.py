"""``BoundedCache``: the one bounded, thread-safe cache of the service side.

A ``cachetools.LRUCache`` behind a lock, as a ``MutableMapping``: at most ``maxsize``
entries, the least recently used forgotten first. Used where a cache must not grow with the
number of files or requests seen (objects already validated, paths already verified).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator, MutableMapping
from typing import TypeVar

from cachetools import LRUCache

__all__ = ["BoundedCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(MutableMapping[K, V]):
    """A mapping of at most ``maxsize`` entries that forgets the least recently used; safe
    to share between threads.

    Raises:
        ValueError: ``maxsize`` is below 1.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self._lru: LRUCache[K, V] = LRUCache(maxsize)
        self._lock = threading.Lock()

    @property
    def maxsize(self) -> int:
        """The most entries kept."""
        return int(self._lru.maxsize)

    def touch(self, key: K) -> bool:
        """Whether ``key`` is held, marking it as just used."""
        with self._lock:
            try:
                self._lru[key]
            except KeyError:
                return False
            return True

    def __getitem__(self, key: K) -> V:
        with self._lock:
            return self._lru[key]

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._lru[key] = value

    def __delitem__(self, key: K) -> None:
        with self._lock:
            del self._lru[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._lru

    def __iter__(self) -> Iterator[K]:
        with self._lock:
            return iter(list(self._lru))

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)

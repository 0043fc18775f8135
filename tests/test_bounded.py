"""``BoundedCache``: at most ``maxsize`` entries, least recently used forgotten first, safe
between threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from xpcs_io.bounded import BoundedCache


def test_forgets_the_least_recently_used() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache["a"], cache["b"] = 1, 2
    assert cache.touch("a")  # "b" is now the least recently used
    cache["c"] = 3
    assert sorted(cache) == ["a", "c"]
    assert "b" not in cache
    assert not cache.touch("b")
    assert len(cache) == 2 == cache.maxsize
    del cache["a"]
    assert dict(cache) == {"c": 3}


def test_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedCache(0)


def test_many_threads_never_pass_the_bound() -> None:
    cache: BoundedCache[int, None] = BoundedCache(64)

    def fill(start: int) -> None:
        for i in range(start, start + 2000):
            cache[i] = None
            cache.touch(i - 1)
            _ = (i - 2) in cache

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fill, range(0, 16000, 2000)))
    assert len(cache) == 64
    assert len(list(cache)) == 64

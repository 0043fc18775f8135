"""The bytes of read results held outside the result cache are counted until they are freed,
and a read past the limit is refused with ``ServerBusyError``."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest

from xpcs_io.errors import ServerBusyError, status_for
from xpcs_io.server.results import ResultCache


def test_results_outside_the_cache_are_counted_until_freed() -> None:
    cache = ResultCache(0, unshared_bytes=3000)

    async def run() -> None:
        first = await cache.get("a", "f", 1, lambda: {"x": np.zeros(1000, np.uint8)})
        second = await cache.get("b", "f", 1, lambda: [np.zeros(1000, np.uint8)] * 2)
        assert cache.unshared == 2000  # one array listed twice counts once
        with pytest.raises(ServerBusyError, match="retry shortly"):
            await cache.get("c", "f", 1, lambda: np.zeros(1001, np.uint8))
        assert cache.unshared == 2000
        del first, second
        gc.collect()
        assert cache.unshared == 0
        third = await cache.get("c", "f", 1, lambda: np.zeros(3000, np.uint8))
        assert third.nbytes == 3000

    asyncio.run(run())
    gc.collect()
    assert cache.unshared == 0
    assert status_for(ServerBusyError("x")) == 503


def test_results_too_large_for_the_cache_are_counted() -> None:
    cache = ResultCache(
        4000, unshared_bytes=1500
    )  # keeps results up to 1,000 bytes (512 of overhead each)

    async def run() -> None:
        small = await cache.get("s", "f", 1, lambda: np.zeros(400, np.uint8))
        assert cache.unshared == 0  # kept by the cache: shared, counted there
        big = await cache.get("b", "f", 1, lambda: np.zeros(1200, np.uint8))
        assert cache.unshared == 1200
        with pytest.raises(ServerBusyError):
            await cache.get("b2", "f", 1, lambda: np.zeros(1200, np.uint8))
        del small, big

    asyncio.run(run())
    gc.collect()
    assert cache.unshared == 0


def test_a_read_known_to_be_too_large_is_refused_before_computing() -> None:
    cache = ResultCache(0, unshared_bytes=1500)
    computed: list[int] = []

    def compute() -> object:
        computed.append(1)
        return np.zeros(1000, np.uint8)

    async def run() -> None:
        held = await cache.get("k", "f", 1, compute)
        with pytest.raises(ServerBusyError):
            await cache.get("k", "f", 1, compute)  # 1,000 more would pass 1,500
        assert len(computed) == 1
        del held
        gc.collect()
        assert (await cache.get("k", "f", 1, compute)).nbytes == 1000
        assert len(computed) == 2

    asyncio.run(run())

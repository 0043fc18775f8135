"""One logical pool across worker processes.

h5py serialises every call in a process behind one lock, so decompressing chunked maps for
many viewers needs more than one process (``xpcs-io serve --workers N``). Each worker keeps
its own pool; this module makes them look like one to users:

- every worker publishes its pool (and result cache) statistics to
  ``<state_dir>/worker-<pid>.json`` a few times a second (written to a temporary name and
  renamed, so readers never see half a file);
- ``/v1/pool/stats`` sums the counters of the live workers and lists every open file once per
  worker that holds it;
- ``/v1/pool/clear`` bumps ``<state_dir>/generation``; each worker closes its handles when it
  sees a new generation and publishes that it did, and the request returns when all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xpcs_io.pool import HDF5ConnectionPool

__all__ = ["PUBLISH_INTERVAL", "WorkerGroup", "merge_results", "merge_stats"]

PUBLISH_INTERVAL = 0.2
log = logging.getLogger("xpcs_io.server")
_COUNTERS = ("hits", "misses", "opens", "evictions", "reopens_on_change", "closes")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The statistics of several pools as those of one: counters and sizes summed, hit ratio
    recomputed, open files listed with the worker holding them."""
    out: dict[str, Any] = {name: sum(p.get(name, 0) for p in parts) for name in _COUNTERS}
    out["pool_size"] = sum(p["pool_size"] for p in parts)
    out["max_pool_size"] = sum(p["max_pool_size"] for p in parts)
    total = out["hits"] + out["misses"]
    out["hit_ratio"] = out["hits"] / total if total else 0.0
    out["open_files"] = [
        {**f, "worker": p.get("worker")} for p in parts for f in p.get("open_files", [])
    ]
    out["workers"] = len(parts)
    return out


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The result cache statistics of several workers as those of one (each figure summed)."""
    caches = [p["results"] for p in parts if isinstance(p.get("results"), dict)]
    names = {name for cache in caches for name in cache}
    return {name: sum(cache.get(name, 0) for cache in caches) for name in sorted(names)}


class WorkerGroup:
    """This worker's view of the group sharing ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        pool: HDF5ConnectionPool,
        display: Any,
        results: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.dir = state_dir
        self.pool = pool
        self.results = results  # this worker's result cache statistics
        self.display = display  # maps an absolute path to its name under the data root
        self.pid = os.getpid()
        self.seen = self._generation()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ files

    def _generation(self) -> int:
        try:
            return int((self.dir / "generation").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write(self, name: str, text: str) -> None:
        # Unique per thread: the stats endpoint and the background loop may publish at once.
        tmp = self.dir / f".{name}.{self.pid}.{threading.get_ident()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)

    def publish(self) -> None:
        """Write this worker's statistics and the clear generation it has applied."""
        stats = self.pool.stats()
        for entry in stats["open_files"]:
            entry["path"] = self.display(entry["path"])
        stats.update(worker=self.pid, generation=self.seen, time=time.time())
        if self.results is not None:
            stats["results"] = self.results()
        self._write(f"worker-{self.pid}.json", json.dumps(stats))

    def collect(self) -> list[dict[str, Any]]:
        """The latest statistics of every live worker (stale files of dead ones removed)."""
        parts = []
        for path in sorted(self.dir.glob("worker-*.json")):
            pid = int(path.stem.split("-", 1)[1])
            if not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                parts.append(json.loads(path.read_text()))
        return parts

    # ------------------------------------------------------------------ operations

    def stats(self) -> dict[str, Any]:
        """One set of statistics for the whole group (this worker's are fresh)."""
        self.publish()
        return merge_stats(self.collect())

    def result_stats(self) -> dict[str, Any]:
        """The result caches of the whole group as one (this worker's are fresh)."""
        self.publish()
        return merge_results(self.collect())

    async def clear(self, timeout: float = 5.0) -> bool:
        """Close every handle in every worker; True when all confirmed within ``timeout``."""
        generation = self._generation() + 1
        self._write("generation", str(generation))
        self.pool.clear()
        self.seen = generation
        self.publish()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.get("generation", 0) >= generation for p in self.collect()):
                return True
            await asyncio.sleep(PUBLISH_INTERVAL / 4)
        return False

    async def _loop(self) -> None:
        while True:
            try:
                generation = self._generation()
                if generation != self.seen:
                    self.pool.clear()
                    self.seen = generation
                await asyncio.to_thread(self.publish)
            except OSError:  # a full or vanished state folder must not stop the worker
                log.warning("publishing pool statistics failed", exc_info=True)
            await asyncio.sleep(PUBLISH_INTERVAL)

    def start(self) -> None:
        """Publish now and keep publishing (and applying clears) in the background."""
        self.publish()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop publishing and withdraw this worker's statistics."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"worker-{self.pid}.json").unlink()

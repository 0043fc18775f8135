"""Watching the data root (watchfiles: inotify on Linux) and turning what changes into events.

Every replica watches the shared filesystem itself, so a viewer connected to any replica hears
of files created, changed or removed by any program, and of mask and partition versions
written through any replica: a file that changed is asked for its version lists, and versions
newer than the last ones seen (or, for a file seen for the first time, written after the
watcher started) become ``mask.written`` / ``partition.written`` events.

Only a file that is a new inode under its name (created, or replaced by a rename: how this
service writes a version) is opened to look for versions, through the app's pool (whose
handles hold no lock, so a program writing the file in place is never kept from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.concurrency import run_in_threadpool
from watchfiles import Change, awatch

from xpcs_io.facade import HDF5Facade
from xpcs_io.paths import inside_root
from xpcs_io.server.events import EventHub
from xpcs_io.server.listing import HDF5_SUFFIXES

__all__ = ["RootWatcher"]

log = logging.getLogger("xpcs_io.server")

_KINDS = (("mask", "/simplemask/mask"), ("partition", "/simplemask/partition"))
# Seconds between later attempts at a version listing that failed (about 15 s in all).
_RECHECK_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
_FAILED: list[dict[str, Any]] = []  # marker: the listing failed, try again later


def _wanted(change: Change, path: str) -> bool:
    del change
    name = os.path.basename(path)
    # Hidden names are the service's lock files and temporary copies.
    return not name.startswith(".") and Path(name).suffix.lower() in HDF5_SUFFIXES


class RootWatcher:
    """Publishes file and version events for ``root`` on ``hub``; ``debounce_ms`` groups the
    changes of one write (a copy renamed over the file) into one batch. ``facade`` reads
    the version lists."""

    def __init__(
        self,
        root: Path,
        hub: EventHub,
        facade: HDF5Facade,
        *,
        debounce_ms: int = 50,
        force_polling: bool | None = None,
    ) -> None:
        self.root = root
        self.hub = hub
        self.facade = facade
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self._stop = asyncio.Event()
        self._known: dict[str, int] = {}  # path -> inode
        self._latest: dict[tuple[str, str], int] = {}
        self._started = dt.datetime.now(dt.UTC)
        self.ready = asyncio.Event()
        self._rechecks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Watch until ``stop``; a watcher that cannot start logs a warning and polls."""
        await run_in_threadpool(self._scan)
        polling = self.force_polling
        while not self._stop.is_set():
            try:
                # awatch adds its watches (or takes its first poll) when first stepped, in this
                # very task step, before it first awaits: a callback run after this step
                # finds the root watched, so a change made once ``ready`` is set is seen.
                asyncio.get_running_loop().call_soon(self.ready.set)
                async for changes in awatch(
                    self.root,
                    watch_filter=_wanted,
                    debounce=self.debounce_ms,
                    step=min(50, self.debounce_ms),
                    stop_event=self._stop,
                    force_polling=polling,
                    poll_delay_ms=500,
                    recursive=True,
                    ignore_permission_denied=True,
                ):
                    try:
                        await self._handle(changes)
                    except Exception:  # one bad batch must not end the watching
                        log.exception("file watcher: handling %d changes failed", len(changes))
                return
            except (OSError, RuntimeError) as exc:
                if polling:
                    log.warning("file watcher stopped: %s", exc)
                    return
                log.warning("cannot watch %s with inotify (%s): polling instead", self.root, exc)
                polling = True

    def stop(self) -> None:
        """End ``run`` and any later version listing still waiting."""
        self._stop.set()
        for task in list(self._rechecks.values()):
            task.cancel()

    def _scan(self) -> None:
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if _wanted(Change.added, name):
                    path = os.path.join(dirpath, name)
                    with contextlib.suppress(OSError):
                        self._known[path] = os.stat(path).st_ino

    def _display(self, path: str) -> str | None:
        # The path as a client names it, only when it (and for a removed file, its folder)
        # lies inside the root: an event never names anything outside it.
        if not inside_root(self.root, Path(path)):
            return None
        probe = path if os.path.lexists(path) else os.path.dirname(path)
        if not inside_root(self.root, Path(os.path.realpath(probe))):
            return None
        return Path(path).relative_to(self.root).as_posix()

    async def _handle(self, changes: set[tuple[Change, str]]) -> None:
        final: dict[str, Change] = {}
        for change, path in sorted(changes, key=lambda c: c[0].value):
            final[path] = change
        for path, change in sorted(final.items()):
            display = self._display(path)
            if display is None:
                continue
            try:
                inode = os.stat(path).st_ino if os.path.isfile(path) else None
            except OSError:
                inode = None
            if inode is None:
                if path in self._known or change == Change.deleted:
                    self._known.pop(path, None)
                    self.hub.publish("file.removed", file_path=display)
                continue
            before = self._known.get(path)
            self._known[path] = inode
            self.hub.publish(
                "file.changed" if before is not None else "file.created", file_path=display
            )
            if inode != before:
                await self._publish_versions(display)

    async def _publish_versions(self, display: str) -> None:
        events, failed = await run_in_threadpool(self._new_versions, display)
        for event in events:
            self.hub.publish(event.pop("type"), **event)
        if failed and display not in self._rechecks:
            task = asyncio.create_task(self._recheck(display))
            self._rechecks[display] = task
            task.add_done_callback(lambda _: self._rechecks.pop(display, None))

    async def _recheck(self, display: str) -> None:
        # A listing that failed (the file replaced again mid-read, or busy) is asked again a
        # little later, so a version is never left unreported; the file's next change would
        # not come if this was its last write.
        for delay in _RECHECK_DELAYS:
            await asyncio.sleep(delay)
            events, failed = await run_in_threadpool(self._new_versions, display)
            for event in events:
                self.hub.publish(event.pop("type"), **event)
            if not failed:
                return
        log.warning("could not list the versions of %s after a change", display)

    def _new_versions(self, display: str) -> tuple[list[dict[str, Any]], bool]:
        out: list[dict[str, Any]] = []
        failed = False
        for kind, group in _KINDS:
            lister: Callable[[str, str], list[dict[str, Any]]] = (
                self.facade.list_mask_versions
                if kind == "mask"
                else self.facade.list_partition_versions
            )
            records = self._records(lister, display, group, kind)
            if records is None:
                continue
            if records is _FAILED:
                failed = True
                continue
            key = (display, kind)
            seen = self._latest.get(key)
            for record in records:
                number = record.get("version")
                if not isinstance(number, int):
                    continue
                if seen is not None and number <= seen:
                    continue
                if seen is None and not self._after_start(record.get("created")):
                    continue
                out.append(
                    {
                        "type": f"{kind}.written",
                        "file_path": display,
                        "kind": kind,
                        "group": group,
                        "version": number,
                        "writer": record.get("writer"),
                        "created": record.get("created"),
                        "description": record.get("description"),
                    }
                )
            numbers = [r["version"] for r in records if isinstance(r.get("version"), int)]
            if numbers:
                self._latest[key] = max(numbers)
        return out, failed

    @staticmethod
    def _records(
        lister: Callable[[str, str], list[dict[str, Any]]], display: str, group: str, kind: str
    ) -> list[dict[str, Any]] | None:
        # A file replaced again while it is read, or still being written by another program,
        # can fail a read that a moment later succeeds: try a few times, then report _FAILED
        # (rechecked later). A missing group is final: the file holds no such versions.
        for attempt in range(3):
            try:
                return lister(display, group)
            except KeyError as exc:
                log.debug("no %s versions in %s: %s", kind, display, exc)
                return None
            except Exception as exc:
                log.debug("listing %s versions of %s failed: %r", kind, display, exc)
                time.sleep(0.05 * (attempt + 1))
        return _FAILED

    def _after_start(self, created: Any) -> bool:
        if not isinstance(created, str):
            return False
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(created)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return when >= self._started
        return False

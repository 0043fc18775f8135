"""Server-Sent Events: what a viewer should react to, kept for a while so a reconnect loses
nothing.

Event types (``event:`` field; ``data:`` is one JSON object):

- ``file.created``, ``file.changed``, ``file.removed``: an HDF5 file under the data root
  (``file_path`` relative to the root).
- ``mask.written``, ``partition.written``: a new version (``file_path``, ``kind``, ``group``,
  ``version``, ``writer``, ``created``, ``description``).
- ``pool.cleared``: the server closed its pooled handles.
- ``events.reset``: events were lost (the client was away longer than the retention, or read
  too slowly): reload everything shown.

Ids are microseconds since the epoch, strictly increasing within a process, so a client that
reconnects with ``Last-Event-ID`` (to this replica or another one watching the same
filesystem) gets every event that followed it and is still retained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EventHub", "ServerEvent", "close_all_hubs", "sse_stream"]

#: Events a subscriber may have waiting before it is told to reload instead.
_QUEUE_LIMIT = 1024
_CLOSE = None


@dataclass(frozen=True)
class ServerEvent:
    """One event: its id, type and JSON-safe data."""

    id: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The event in ``text/event-stream`` form."""
        payload = json.dumps({"id": self.id, "type": self.type, **self.data}, allow_nan=False)
        return f"id: {self.id}\nevent: {self.type}\ndata: {payload}\n\n".encode()


class EventHub:
    """Keeps the events of the last ``retention`` seconds (at most ``max_events``) and hands
    new ones to every subscriber. ``publish`` may be called from any thread."""

    def __init__(self, retention: float = 600.0, max_events: int = 10_000) -> None:
        self.retention = retention
        self.max_events = max_events
        self._events: deque[ServerEvent] = deque()
        # Before this hub started, or up to the newest event no longer retained, a client's
        # missed events cannot be replayed.
        self._dropped_up_to = time.time_ns() // 1000
        self._lock = threading.Lock()
        self._last_id = 0
        self._subscribers: set[asyncio.Queue[ServerEvent | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.published = 0
        _HUBS.add(self)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop subscribers wait on (set when the app starts)."""
        self._loop = loop

    def publish(self, type_: str, **data: Any) -> ServerEvent:
        """Record an event and deliver it to every subscriber."""
        with self._lock:
            now = time.time_ns() // 1000
            self._last_id = max(self._last_id + 1, now)
            event = ServerEvent(self._last_id, type_, data)
            self._events.append(event)
            if len(self._events) > self.max_events:
                self._dropped_up_to = self._events.popleft().id
            self._trim(now)
            self.published += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._deliver(event)
            else:
                loop.call_soon_threadsafe(self._deliver, event)
        return event

    def _trim(self, now_us: int) -> None:
        horizon = now_us - int(self.retention * 1e6)
        while self._events and self._events[0].id < horizon:
            self._dropped_up_to = self._events.popleft().id

    def _deliver(self, event: ServerEvent | None) -> None:
        for queue in list(self._subscribers):
            if queue.qsize() >= _QUEUE_LIMIT:
                # A reader too slow to keep up: end its stream with a reset rather than
                # hold an unbounded backlog for it.
                self._subscribers.discard(queue)
                queue.put_nowait(ServerEvent(0, "events.reset", {"reason": "too slow"}))
                queue.put_nowait(_CLOSE)
                continue
            queue.put_nowait(event)

    def since(self, last_id: int) -> tuple[list[ServerEvent], bool]:
        """Retained events after ``last_id``, and whether none between were dropped."""
        with self._lock:
            self._trim(time.time_ns() // 1000)
            events = [e for e in self._events if e.id > last_id]
            return events, last_id >= self._dropped_up_to

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        """A queue receiving every event published while the block runs (``None``: the
        stream must end)."""
        queue: asyncio.Queue[ServerEvent | None] = asyncio.Queue()
        self._subscribers.add(queue)
        if self.closed:
            queue.put_nowait(_CLOSE)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closed = True
        self._deliver(_CLOSE)

    def close_threadsafe(self) -> None:
        """``close`` from a signal handler or another thread."""
        self.closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, _CLOSE)


_HUBS: set[EventHub] = set()


def close_all_hubs() -> None:
    """End the event streams of every hub in this process (called when the server is asked
    to exit, so open streams do not hold up a graceful shutdown)."""
    for hub in list(_HUBS):
        hub.close_threadsafe()


async def sse_stream(
    hub: EventHub,
    last_id: int | None,
    wanted: Callable[[ServerEvent], bool],
    heartbeat: float,
) -> AsyncIterator[bytes]:
    """The ``text/event-stream`` body: missed events after ``last_id`` first, then live ones,
    with a comment line every ``heartbeat`` seconds so proxies keep the stream open."""
    with hub.subscribe() as queue:
        yield b"retry: 1000\n\n"
        sent = 0
        if last_id is not None:
            backlog, complete = hub.since(last_id)
            if not complete:
                reset = ServerEvent(0, "events.reset", {"reason": "events were dropped"})
                yield reset.encode().replace(b"id: 0\n", b"")
            for event in backlog:
                if wanted(event):
                    yield event.encode()
                sent = event.id
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is _CLOSE:
                return
            assert event is not None
            if event.type == "events.reset":
                yield event.encode().replace(b"id: 0\n", b"")
                continue
            if event.id <= sent:
                continue  # already sent from the backlog
            if wanted(event):
                yield event.encode()

"""What ``watch()`` does between reconnects, shared by the blocking and asyncio clients: the
request, which answers end the watch, the parser, and the backoff (no I/O here)."""

from __future__ import annotations

from typing import Any

from xpcs_io.client.core import decode_error
from xpcs_io.events import Event, EventStreamParser

__all__ = ["EventWatch"]

_MAX_DELAY = 30.0
# Answers worth waiting out: the server is starting, overloaded or behind a restarting proxy.
_TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})


class EventWatch:
    """One ``watch()``: resumes after the last event it handed out."""

    def __init__(
        self,
        headers: dict[str, str],
        prefix: str | None,
        file_path: str | None,
        last_event_id: int | None,
        reconnect_delay: float,
    ) -> None:
        for name, value in (("prefix", prefix), ("file_path", file_path)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {type(value).__name__}")
        self.params = {k: v for k, v in (("prefix", prefix), ("file_path", file_path)) if v}
        self._headers = {**headers, "accept": "text/event-stream"}
        self.last_id = last_event_id
        self.base_delay = max(0.01, reconnect_delay)
        self.delay = self.base_delay
        self.parser = EventStreamParser()

    def headers(self) -> dict[str, str]:
        """Headers of the next (re)connection."""
        out = dict(self._headers)
        if self.last_id is not None:
            out["last-event-id"] = str(self.last_id)
        return out

    def connected(self, status: int, content_type: str, body: Any) -> bool:
        """Whether the answer is the stream (True), or a transient failure to retry (False).

        Raises:
            Exception: a permanent failure (no such folder, no or a wrong key...): the
                exception its problem+json names.
        """
        if status == 200 and content_type.startswith("text/event-stream"):
            self.parser = EventStreamParser()
            self.delay = self.base_delay
            return True
        if status in _TRANSIENT:
            return False
        raise decode_error(status, content_type, bytes(body or b""))

    def events(self, chunk: bytes) -> list[Event]:
        """The events ``chunk`` completes; remembers the last id for the next reconnect."""
        events = self.parser.feed(chunk)
        for event in events:
            if event.id is not None and (self.last_id is None or event.id > self.last_id):
                self.last_id = event.id
        return events

    def backoff(self) -> float:
        """Seconds to wait before reconnecting (doubling up to 30 s)."""
        delay = self.delay
        self.delay = min(_MAX_DELAY, self.delay * 2)
        return delay

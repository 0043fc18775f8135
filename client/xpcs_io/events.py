"""Typed events of ``GET /v1/events`` and a sans-I/O parser of ``text/event-stream``.

Event types: ``file.created``, ``file.changed``, ``file.removed`` (``file_path``),
``mask.written`` and ``partition.written`` (``file_path``, ``kind``, ``group``, ``version``,
``writer``, ``created``, ``description``), ``pool.cleared``, and ``events.reset`` (events were
lost while away: reload what is shown).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventStreamParser"]

# A line longer than this is not an event of ours: refuse to buffer it without bound.
_MAX_LINE = 1 << 20


@dataclass(frozen=True)
class Event:
    """One server event. ``id`` is ``None`` for ``events.reset``; ``data`` holds every field
    the server sent (the attributes are the common ones, ``None`` when absent)."""

    type: str
    id: int | None = None
    file_path: str | None = None
    kind: str | None = None
    group: str | None = None
    version: int | None = None
    writer: str | None = None
    created: str | None = None
    description: str | None = None
    data: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_fields(cls, event_type: str, event_id: str | None, data: str) -> Event:
        """Build an event from the ``event``, ``id`` and ``data`` fields of the stream."""
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}

        def text(name: str) -> str | None:
            value = payload.get(name)
            return value if isinstance(value, str) else None

        version = payload.get("version")
        return cls(
            type=event_type,
            id=int(event_id) if event_id and event_id.isdigit() else None,
            file_path=text("file_path"),
            kind=text("kind"),
            group=text("group"),
            version=version if isinstance(version, int) else None,
            writer=text("writer"),
            created=text("created"),
            description=text("description"),
            data=payload,
        )


class EventStreamParser:
    """Feed bytes as they arrive; get the complete events (comments and heartbeats skipped)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._type = "message"
        self._id: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk``.

        Raises:
            ValueError: a line longer than 1 MiB (not an event stream of this service).
        """
        self._buffer += chunk
        out: list[Event] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > _MAX_LINE:
                    raise ValueError("event stream line too long")
                return out
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[end + 1 :]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data:
                self._type, self._id = "message", None
                return None
            event = Event.from_fields(self._type, self._id, "\n".join(self._data))
            self._type, self._id, self._data = "message", None, []
            return event
        if line.startswith(":"):
            return None  # a comment: the server's heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None

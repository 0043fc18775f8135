"""Requests the ``/v1`` routes refuse before any work: unknown query parameters (422) and
``Accept`` values no answer of the route can satisfy (406).

Both checks read the matched route itself (its declared query parameters and the media types
of its documented 2xx answers), so a new route or parameter needs no change here.

- A misspelt parameter (``qidx=3`` for ``q_idx=3``) would otherwise be ignored and the
  default answer sent (every q bin): 422 naming each unknown parameter and the known ones.
- ``Accept`` is honoured when any of its ranges with ``q > 0`` matches what the route
  produces (``*/*`` and ``type/*`` included; an absent or empty header accepts anything);
  otherwise 406 listing what the route can produce.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from xpcs_io.server.responses import JSON_MEDIA_TYPE, MSGPACK_MEDIA_TYPE

__all__ = ["acceptable", "check_request", "declared_query", "produces"]

# Other names clients use for the same formats (the msgpack decoder accepts either).
_ALIASES = {
    "application/x-msgpack": MSGPACK_MEDIA_TYPE,
    "application/problem+json": JSON_MEDIA_TYPE,
}
_DEFAULT = (MSGPACK_MEDIA_TYPE, JSON_MEDIA_TYPE)


# Per route (APIRoute is not hashable): the route itself, kept so its id stays its own.
_SEEN: dict[int, tuple[APIRoute, frozenset[str], tuple[str, ...]]] = {}


def _facts(route: APIRoute) -> tuple[frozenset[str], tuple[str, ...]]:
    seen = _SEEN.get(id(route))
    if seen is None or seen[0] is not route:
        seen = _SEEN[id(route)] = (route, declared_query(route), produces(route))
    return seen[1], seen[2]


def declared_query(route: APIRoute) -> frozenset[str]:
    """The query parameter names ``route`` declares, its dependencies' included."""
    names: set[str] = set()
    pending: list[Dependant] = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


def produces(route: APIRoute) -> tuple[str, ...]:
    """The media types of ``route``'s documented 2xx answers (msgpack and JSON when it
    documents none, e.g. a 204)."""
    found: list[str] = []
    responses: dict[int | str, dict[str, Any]] = route.responses or {}
    for status, doc in responses.items():
        if str(status).startswith("2"):
            found.extend(t for t in doc.get("content", {}) if t not in found)
    return tuple(found) or _DEFAULT


def acceptable(accept: str, offered: tuple[str, ...]) -> bool:
    """True when the ``Accept`` header value ``accept`` admits one of ``offered``."""
    ranges = [r for r in accept.split(",") if r.strip()]
    if not ranges:
        return True
    for item in ranges:
        media, _, params = item.strip().partition(";")
        media = media.strip().lower()
        media = _ALIASES.get(media, media)
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        kind = media.partition("/")[0]
        for offer in offered:
            if media in ("*/*", "*", offer):
                return True
            if media == f"{kind}/*" and offer.startswith(f"{kind}/"):
                return True
    return False


async def check_request(request: Request) -> None:
    """Refuse unknown query parameters (422) and unsatisfiable ``Accept`` values (406).

    Raises:
        RequestValidationError: a query parameter the route does not declare (422).
        HTTPException: 406 when no media type the route produces is acceptable.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known, offered = _facts(route)
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (this endpoint takes: {allowed})",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )
    if not acceptable(request.headers.get("accept", ""), offered):
        raise HTTPException(
            406,
            f"cannot answer in {request.headers.get('accept')!r}; this endpoint produces: "
            + ", ".join(offered),
        )

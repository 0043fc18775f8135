"""``read_route``: how every ``GET`` of the API is declared: its summary, operation id and
tag, the API key scope it needs, and its documented answers (the schema's 200 and the
errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter

from xpcs_io.server.auth import require
from xpcs_io.server.openapi_docs import ERRORS, ok
from xpcs_io.server.settings import Scope

__all__ = ["read_route"]

F = TypeVar("F", bound=Callable[..., Any])


def read_route(
    router: APIRouter,
    path: str,
    summary: str,
    operation_id: str,
    tag: str,
    schema: str | None = None,
    *,
    responses: dict[int | str, dict[str, Any]] | None = None,
    scope: Scope = "read",
    **extra: Any,
) -> Callable[[F], F]:
    """``router.get(path, ...)`` for an operation that needs a key of ``scope``, answering
    ``schema`` (or ``responses`` when given) and the documented errors."""
    documented = responses if responses is not None else {**ok(schema or ""), **ERRORS}
    decorate: Callable[[F], F] = router.get(
        path,
        summary=summary,
        operation_id=operation_id,
        tags=[tag],
        dependencies=[require(scope)],
        responses=documented,
        **extra,
    )
    return decorate

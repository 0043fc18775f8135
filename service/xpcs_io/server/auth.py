"""API keys with scopes: ``read`` (all reads), ``write`` (also mask / partition writes),
``admin`` (also pool clear and detailed stats). Keys travel as ``Authorization: Bearer KEY``
or ``X-API-Key: KEY`` and are compared in constant time. With no keys configured the service
is open (allowed only on loopback unless ``allow_anonymous``)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from fastapi import Depends, Request

from xpcs_io.server.deps import get_api_keys
from xpcs_io.server.problems import KeyRequiredError
from xpcs_io.server.settings import SCOPES, Scope

__all__ = ["require"]

_RANK = {scope: i for i, scope in enumerate(SCOPES)}


def _presented(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _scope_of(keys: Mapping[str, Scope], presented: str) -> Scope | None:
    found: Scope | None = None
    given = presented.encode()
    for key, scope in keys.items():
        # Compare against every key so the time taken does not reveal which one matched.
        if hmac.compare_digest(key.encode(), given):
            found = scope
    return found


def require(needed: Scope) -> Any:
    """A dependency that lets the request through only with a key of ``needed`` or above.

    Raises:
        KeyRequiredError: no key, or an unknown key (401).
        PermissionError: a key of a lower scope (403).
    """

    async def check(request: Request) -> Scope | None:
        keys = get_api_keys(request)
        if not keys:
            return None
        presented = _presented(request)
        if presented is None:
            raise KeyRequiredError("an API key is required (Authorization: Bearer KEY)")
        scope = _scope_of(keys, presented)
        if scope is None:
            raise KeyRequiredError("the API key is not valid")
        if _RANK[scope] < _RANK[needed]:
            raise PermissionError(f"this operation needs a key with the '{needed}' scope")
        request.state.auth_scope = scope
        return scope

    return Depends(check)

"""Idempotency keys of versioned writes.

A client makes up one key per write call and sends it with every attempt (HTTP header
``Idempotency-Key``). The write stores the key, and a digest of everything it stored, in the
attributes of the version it creates. A later write into the same group carrying that key
stores nothing: it answers the first write's record when the digest matches (a resend), and
refuses with ``ValueError`` when it does not (the key was reused for other data).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from xpcs_io.layouts.native import GEOMETRY_FIELDS, OPTIONAL_GEOMETRY
from xpcs_io.schemas import GeometryMetadata

__all__ = ["KEY_MAX", "ReplayedWrite", "check_key", "request_sha256"]

KEY_MAX = 200
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


class ReplayedWrite(Exception):  # noqa: N818  (control flow, never seen by callers)
    """Raised inside an atomic edit to abandon it: the write was made before (same
    idempotency key) and ``record`` is what it stored."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record["version"])
        self.record = record


def check_key(key: Any) -> str | None:
    """``key`` when it is a valid idempotency key (1-200 letters, digits or ``._:-``) or None.

    Raises:
        TypeError: not a string.
        ValueError: empty, too long, or other characters.
    """
    if key is None:
        return None
    if not isinstance(key, str):
        raise TypeError(f"idempotency_key must be a string, got {type(key).__name__}")
    if not 0 < len(key) <= KEY_MAX or not set(key) <= _KEY_CHARS:
        raise ValueError(
            f"idempotency_key must be 1-{KEY_MAX} letters, digits or ._:- (got {key!r:.60})"
        )
    return key


def request_sha256(
    kind: str,
    arrays: Mapping[str, np.ndarray[Any, Any] | None],
    metadata: GeometryMetadata,
    attrs: Mapping[str, Any],
    description: str | None,
    schema_version: str,
) -> str:
    """A digest of everything a write stores (arrays with dtype and shape, geometry, the
    kind's attributes, description, schema version), to tell a resend from another write."""
    h = hashlib.sha256(kind.encode())
    for name in sorted(arrays):
        arr = arrays[name]
        if arr is None:
            h.update(f"|{name}:none".encode())
            continue
        a: Any = np.ascontiguousarray(arr)
        h.update(f"|{name}:{a.dtype.str}:{a.shape}:".encode())
        h.update(memoryview(a).cast("B"))
    geo = {k: getattr(metadata, k) for k in (*GEOMETRY_FIELDS, *OPTIONAL_GEOMETRY, "shape")}
    extra = sorted((k, repr(v)) for k, v in attrs.items())
    h.update(repr((geo, extra, description, schema_version)).encode())
    return h.hexdigest()
